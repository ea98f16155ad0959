"""Run a node: open storage, listen, and shut down cleanly when told to stop.

Process signals are the program's to handle: ``kvwire serve`` sets the
``stop`` event on SIGTERM or SIGINT (kvwire/cli/signals.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.registry import CollectorRegistry

from ..protocol import ErrorCode, ErrorReply, encode, format_endpoint
from ..tls import server_context
from ..tls_listener import TlsListener
from .config import ServerConfig
from .connection import NodeProtocol
from .datadir import DataDirLock
from .in_process import NodeSlot
from .metrics import NodeCollector
from .node import Node
from .outbox import Outbox
from .stall import StallWatch
from .storage import DATABASE_FILE_NAME, REJOIN_FILE_NAME, DataDirLostError, Storage, is_unclaimed, mark_for_rejoin

log = logging.getLogger("kvwire.server")

# A full accept queue drops SYNs, which clients see as a one-second stall.
_LISTEN_BACKLOG = 1024
# Every request allocates short-lived containers (messages, futures), and with
# CPython's default thresholds (700, 10, 10) the young generation is scanned
# every few requests and full collections walk the whole in-memory index: 16
# full passes of 13 ms average per node in a 15 s quorum-PUT run (py-spy,
# 2026-11-28). Fewer, larger young collections, and the index frozen out of the
# collector, remove most of that; README "Where the time goes" has the gain.
_GC_THRESHOLDS = (50_000, 20, 100)


@contextmanager
def collector_paused_while_loading() -> Iterator[None]:
    """No collection while the index loads; then everything alive is moved out
    of the collector's way (frozen), and it collects less often.

    A million keys load as three million objects, all kept. With the collector
    on, the young collections they trigger promote them, and the older
    generations' passes walk them again and again; a full collection then walked
    them once more before the freeze. This way start-up with a million keys
    takes 0.61-0.64 times as long (two sets of eight paired starts: 6.5 to 4.2
    s, and 3.95 to 2.42 s, bench/results/2026-12-04/startup_gc_ab.md). So the
    garbage of start-up is collected before the load, none is collected during
    it, and the load's objects are frozen without a pass over them. The load
    itself leaves no cyclic garbage (a collection right after a 1M-key load
    found none, and took 0.28 s); what a bridge or metrics listener serving in
    this process makes meanwhile (``--http-listen``) is frozen with it, once,
    and never freed: the garbage of what it serves in those few seconds, at
    most.

    Two nodes loading at once in one process (tests only) end with the
    collector on whatever the order. The second's collection on entry walks
    what the first has loaded so far, and once the first is done the rest of
    the second's load runs with the collector on: slower, not wrong.
    """
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


async def serve(config: ServerConfig, *, stop: asyncio.Event, registry: CollectorRegistry | None = None,
                slot: NodeSlot | None = None) -> None:
    """Serve until ``stop`` is set.

    With a ``registry``, the node's metrics join it once the node is up (for
    whoever serves ``/metrics``), and leave it when the node stops. A ``slot``
    holds the node while it serves, for the HTTP bridge in this process
    (kvwire.server.in_process).
    On the way out: stop accepting, let requests in flight finish (at most
    ``shutdown_timeout``), commit what storage holds, close the files.
    """
    with DataDirLock(config.data_dir):  # taken before Storage.open, dropped after storage is closed
        await _serve(config, stop, registry, slot or NodeSlot())


def _joins_over_an_unclaimed_file(config: ServerConfig) -> bool:
    """Whether a node of a cluster started without --join must join all the same: its
    database file is there but names no node (is_unclaimed). Nothing of it can be voted
    with: an empty file (a backup copied short, restored "the documented way", started
    as a new node that voted with nothing and lost an acknowledged write: a lifecycle
    probe's finding), or what a first start killed before its first commit left. A
    directory without the file is still a new cluster's (README, Limits)."""
    path = config.data_dir / DATABASE_FILE_NAME
    if not config.peers or not is_unclaimed(path):
        return False
    log.warning("%s is there but names no node (empty, or left by a first start killed before its first commit): "
                "joining, catching up from every peer before it votes, as with --join", path,
                extra={"event": "join_unclaimed_database"})
    return True


async def _serve(config: ServerConfig, stop: asyncio.Event, registry: CollectorRegistry | None, slot: NodeSlot) -> None:
    loop = asyncio.get_running_loop()
    # Built before storage opens, so a bad certificate file fails the start at once.
    tls_context = (
        server_context(config.tls.cert, config.tls.key, client_ca=config.tls.ca) if config.tls is not None else None
    )
    with collector_paused_while_loading():
        storage = await Storage.open(
            config.data_dir,
            node_id=config.node_id,
            cluster_id=config.cluster_id,
            sync=config.sync,
            max_batch_rows=config.max_batch_rows,
            join=config.join or _joins_over_an_unclaimed_file(config),
        )
    connections: set[NodeProtocol] = set()
    outbox = Outbox(loop)
    try:
        node = Node(config, storage)
        server: asyncio.AbstractServer | TlsListener
        if tls_context is None:
            server = await loop.create_server(
                lambda: NodeProtocol(node, connections, outbox), config.host, config.port, backlog=_LISTEN_BACKLOG
            )
        else:
            server = await TlsListener.start(
                lambda: NodeProtocol(node, connections, outbox), config.host, config.port, context=tls_context,
                # The handshake comes before HELLO, and shares its deadline.
                backlog=_LISTEN_BACKLOG, max_handshakes=config.max_connections, handshake_timeout=config.hello_timeout,
                log_limit=node.limited_log, plaintext_answer=_plaintext_refusal,
            )
    except BaseException:
        # Nothing was sent, but what the opening found stands for the next start.
        await storage.close(clean=not (storage.unclean or storage.joining))
        raise
    # The bridge in this process too: a REST request it has not read yet was sent before
    # the stall, as a node's client's was (a reviewer's finding).
    node.drop_connections = lambda: _drop_all(connections) + sum(drop() for drop in slot.drop_also)
    if config.peers:
        # Its restart catches up before it votes (REJOIN, below). A lone node has no
        # one to catch up from, and serves what it holds, read-only.
        node.files_lost = stop.set
    node.start()
    slot.node = node
    deadlines = DeadlineSweep(loop, connections, config)
    stalls = StallWatch(loop, config.failure_timeout / 2, on_check=node.watch_disk)
    collector = NodeCollector(node)
    if registry is not None:
        registry.register(collector)
    log.info("node %s of cluster %s listening on %s%s; %s", config.node_id, config.cluster_id,
             format_endpoint(config.host, config.port),
             _describe_tls(config),
             f"peers {', '.join(f'{m.node_id}={m.address}' for m in config.peers)}" if config.peers else "running alone")
    try:
        await stop.wait()
    finally:
        slot.node = None
        deadlines.stop()
        stalls.stop()
        if registry is not None:
            registry.unregister(collector)
        await _shut_down(server, connections, node, config.shutdown_timeout)
    if storage.file_lost is not None:
        raise DataDirLostError(f"stopped: {storage.file_lost}. {await _after_losing_a_file(config, storage)}")


async def _after_losing_a_file(config: ServerConfig, storage: Storage) -> str:
    """Leave the node's path fit for its next start, and say what that start does."""
    if not config.peers:
        return ("A lone node has no peers to catch up from: a start on this path serves what the files there hold "
                "now (put a copy kvwire backup made in their place first, if the database file was lost)")
    # Looked at now, not when the loss was first seen: the database file may have gone
    # (or been replaced) since. The old one's log and index are of no use to another
    # database, and SQLite would take them for its own (reviewers' findings: "disk I/O
    # error" where none was left, "database disk image is malformed" where one was put).
    for leftover in storage.companions_of_the_lost_file():
        leftover.unlink(missing_ok=True)
    try:
        # Whatever the path holds now (the database the stop wrote its log into, a new
        # one, another file put there), the acknowledged writes may not all be in it.
        marker = await asyncio.to_thread(mark_for_rejoin, config.data_dir, storage.file_lost)
    except OSError as exc:
        return (f"It could not leave {config.data_dir / REJOIN_FILE_NAME} ({exc.strerror or exc}): start it again "
                "with --join, so that it catches up from its peers before it votes")
    return (f"Started again (kvwire up, systemd and Docker do it), with --join or without, it catches up from its "
            f"peers before it votes: {marker} tells it to")


def _drop_all(connections: set[NodeProtocol]) -> int:
    dropped = list(connections)
    for connection in dropped:
        connection.drop()
    return len(dropped)


def _describe_tls(config: ServerConfig) -> str:
    if config.tls is None:
        return ""
    if config.tls.ca is None:
        return " (TLS)"
    return " (TLS; every client and peer must present a certificate signed by the CA)"


class DeadlineSweep:
    """Closes, a few times a second, the connections past their deadlines
    (``NodeProtocol.overdue``): one timer for all of them, not one per connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[NodeProtocol], config: ServerConfig) -> None:
        self._loop = loop
        self._connections = connections
        # A quarter of the shorter deadline, so none is overrun by more than a quarter.
        self._interval = min(1.0, config.hello_timeout / 4, config.frame_timeout / 4)
        self._timer = loop.call_later(self._interval, self._sweep)

    def _sweep(self) -> None:
        now = self._loop.time()
        for connection in list(self._connections):
            reason = connection.overdue(now)
            if reason is not None:
                connection.close_overdue(reason)
        self._timer = self._loop.call_later(self._interval, self._sweep)

    def stop(self) -> None:
        self._timer.cancel()


# How long a stopping node waits, after its notice (NodeProtocol.go_away), for each
# client and peer to close its side: kvwire's own close at once; one that does not
# is closed after this.
GO_AWAY_LINGER = 1.0
# How often that wait looks.
_LINGER_POLL = 0.01


async def _wait_closed_by_the_other_side(connections: set[NodeProtocol], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while connections and loop.time() < give_up:
        await asyncio.sleep(_LINGER_POLL)


# A client without TLS, sent by TlsListener in place of the handshake it cannot do:
# kvwire's client shows the message, rather than a connection closed unanswered.
_PLAINTEXT_REFUSAL = encode(ErrorReply(None, ErrorCode.BAD_REQUEST, "this node serves TLS on this port, and the "
                                       "connection is plaintext: connect with TLS (--tls in kvwire-cli and kvwire "
                                       "bench, tls=True in the Python client)"))


def _plaintext_refusal(first_bytes: bytes) -> bytes:
    return _PLAINTEXT_REFUSAL


async def _shut_down(server: asyncio.AbstractServer | TlsListener, connections: set[NodeProtocol], node: Node, timeout: float) -> None:
    server.close()
    for conn in list(connections):
        conn.begin_shutdown()  # requests read but not started get UNAVAILABLE, not silence
    # Each answer is queued on its connection as it is given, so once none is
    # left unanswered every reply is buffered, and the closes below write it.
    unanswered = await node.wait_answered(timeout)
    if unanswered:
        log.warning("shutdown timeout: %d requests unanswered; writes among them are committed below", unanswered)
    for conn in list(connections):
        conn.go_away()  # the requests it has not answered were not read: they may go elsewhere
    await _wait_closed_by_the_other_side(connections, min(GO_AWAY_LINGER, timeout))
    for conn in list(connections):
        conn.close()
    node.stop()
    await node.peers.close()
    # A node still joining (or that lost a tag it sent) may lack a tag a peer holds:
    # its next start must catch up again, and take a new name, as after a kill.
    clean = node.core.stops_cleanly
    if not clean:
        log.info("stopping as after a kill: this node %s; its next start catches up from every peer before it "
                 "votes, and mints under a new name", "is still joining" if node.core.joining else
                 "sent a tag its disk then refused, which it holds in memory only", extra={"event": "unclean_stop"})
    await node.storage.close(clean=clean)
    log.info("storage flushed and closed; bye")
