"""Fuzz target: a real node, on real SQLite in a temporary directory, answering fuzzed frames.

Each input is one connection to a node in this process, with the default
limits or SMALL_LIMITS, and either alone or one of three whose two peers are
down (so that quorum reads and writes fail with NO_QUORUM, GETs with
consistency "one" answer, and a peer's HELLO reaches the handshake of
kvwire.protocol.peer_auth). The bytes go to the node's own
``NodeProtocol`` in the input's chunks, as asyncio would deliver them, over a
transport that only collects what the node writes. Nothing of the node is
replaced; storage commits to SQLite (with ``sync=off``, which changes only
when the OS flushes, not what is stored). For each input:

- every byte the node writes decodes, on the client side, as a valid reply;
- no ERROR INTERNAL, no log record at ERROR or above (the node logs
  "internal error" for an exception outside the error tree), no exception
  left to the event loop, no write after the connection was closed;
- every request and every message error gets exactly one reply, with its id
  and the matching reply op; a fatal error gets an ERROR whose id is nil,
  last, and the connection closes;
- the replies to requests waiting on storage come within HANG_SECONDS.

A peer session is granted the peer role directly rather than by HELLO: a
peer's HELLO must prove the cluster secret (kvwire.protocol.peer_auth), which
fuzzed bytes never do, and the peer-only ops behind it must be fuzzed too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections import Counter

import atheris
import uvloop

with atheris.instrument_imports(include=["kvwire"]):
    from kvwire.protocol import (
        CLOSED,
        DEFAULT_LIMITS,
        REPLY_BIT,
        ErrorCode,
        ErrorReply,
        Limits,
        Role,
        Side,
    )
    from kvwire.protocol.limits import anti_entropy_frame_bytes
    from kvwire.server.access import PEER
    from kvwire.server.config import Member, ServerConfig, SyncMode
    from kvwire.server.connection import NodeProtocol
    from kvwire.server.node import Node
    from kvwire.server.outbox import Outbox
    from kvwire.server.storage import Storage

    from .checks import Finding, Refusal, decode_all
    from .frames import EOF, IN_CLUSTER, OTHER_HALF, SMALL_LIMITS, FuzzInput, plan, seed
    from .harness import Stats, main, temporary_directory, vector_bytes, vectors

# How long the replies that wait on storage may take before the input counts
# as a hang. A group commit takes well under a millisecond here (sync=off);
# five seconds leaves room for a loaded CI machine.
HANG_SECONDS = 5.0
# Values kept in memory per node: few, so that GETs often load from SQLite.
_CACHE_ENTRIES = 4

stats = Stats()
_ERROR_NAMES = {int(code): code.name for code in ErrorCode}


class CollectingTransport(asyncio.Transport):
    """The node's end of one connection, in memory: it keeps what the node writes."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._protocol = protocol
        self.written = bytearray()
        self.closing = False
        self.writes_after_close = 0

    def write(self, data: bytes) -> None:
        if self.closing:
            self.writes_after_close += 1
        self.written += data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            # As asyncio's transports do: the protocol hears of it on the next loop turn.
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("fuzz", 0) if name == "peername" else default

    def pause_reading(self) -> None:
        pass  # inputs hold far fewer requests than max_inflight_per_connection

    def resume_reading(self) -> None:
        pass


class ErrorRecords(logging.Handler):
    """Every log record of kvwire at ERROR or above: each one is a finding."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        lines = [self.format(record) for record in self.records]
        self.records.clear()
        return lines


class Nodes:
    """Four nodes (two limits, alone or in a cluster), started once and kept for the
    whole run, as a real node lives through many connections."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop_errors: list[dict] = []
        self.loop.set_exception_handler(lambda loop, context: self.loop_errors.append(context))
        self.errors = ErrorRecords()
        self.errors.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        kvwire_log = logging.getLogger("kvwire")
        kvwire_log.addHandler(self.errors)
        kvwire_log.setLevel(logging.WARNING)
        kvwire_log.propagate = False  # the node's warnings are expected; only errors count
        data_dir = temporary_directory("kvwire-fuzz-node-")
        self.registry: set[NodeProtocol] = set()
        self.outbox = Outbox(self.loop)
        # The peers' addresses: ports bound but not listening, so that every dial
        # is refused at once and no other program can take them meanwhile.
        self._down_peers = [socket.socket() for _ in range(2)]
        for sock in self._down_peers:
            sock.bind(("127.0.0.1", 0))
        members = (Member("n1", "127.0.0.1", 0),
                   *(Member(f"n{i}", *sock.getsockname()) for i, sock in enumerate(self._down_peers, 2)))
        self.by_case = {
            (limits, in_cluster): self.loop.run_until_complete(
                self._start(data_dir / f"{name}-{len(cluster)}", limits, cluster))
            for name, limits in (("default", DEFAULT_LIMITS), ("small", SMALL_LIMITS))
            for in_cluster, cluster in ((False, ()), (True, members))
        }

    async def _start(self, data_dir, limits: Limits, members: tuple[Member, ...]) -> Node:
        if members:
            # A cluster's frames must hold anti-entropy's messages (ServerConfig); a client's
            # are still held to the small limits' largest request (Limits.client_frame_bytes).
            limits = dataclasses.replace(
                limits, max_frame_bytes=max(limits.max_frame_bytes, anti_entropy_frame_bytes(limits.max_key_bytes)))
        config = ServerConfig(node_id="n1", data_dir=data_dir, sync=SyncMode.OFF, limits=limits,
                              cache_entries=_CACHE_ENTRIES, members=members,
                              cluster_secret=b"fuzz" * 8 if members else None)
        storage = await Storage.open(config.data_dir, node_id=config.node_id, cluster_id=config.cluster_id, sync=config.sync)
        node = Node(config, storage)
        node.start()
        return node

    async def converse(self, case: FuzzInput, role: Role) -> CollectingTransport:
        """Feed the input to a new connection, wait for every reply, hang up."""
        node = self.by_case[case.limits, bool(case.flags & IN_CLUSTER)]
        protocol = NodeProtocol(node, self.registry, self.outbox)
        transport = CollectingTransport(protocol)
        protocol.connection_made(transport)
        if role is Role.PEER:
            protocol._session.grant = PEER  # the harness's shortcut past HELLO (module docstring)
            protocol._rights_changed()  # as every HELLO that grants or refuses rights does
        try:
            for chunk in case.chunks:
                if transport.closing:
                    break
                protocol.data_received(chunk)
            if case.eof and not transport.closing and not protocol.eof_received():
                transport.close()  # what asyncio does when eof_received() returns a false value
        except Exception as exc:  # asyncio would log it and drop the connection, unanswered
            raise Finding(f"{type(exc).__name__} escaped NodeProtocol: {exc}; stream {case.stream.hex()}") from exc
        # Each reply is queued on the connection as the node gives it, before the
        # wait ends, and the outbox's flush is scheduled before this task resumes.
        # (Conversations run one at a time, so what the node has not answered is this one's.)
        unanswered = await node.wait_answered(HANG_SECONDS)
        if unanswered:
            raise Finding(f"{unanswered} requests unanswered after {HANG_SECONDS} s; stream {case.stream.hex()}")
        await asyncio.sleep(0)  # the loop turn ends: the outbox writes the replies read so far
        if not transport.closing:
            transport.close()  # the client hangs up
        await asyncio.sleep(0)  # one turn, for connection_lost (call_soon) to leave the registry
        return transport

    def close(self) -> None:
        """Stop the nodes and close their storage: aiosqlite's threads would otherwise keep
        the process from exiting after a finding, and libFuzzer would report a timeout instead."""
        for node in self.by_case.values():
            node.stop()
            self.loop.run_until_complete(node.peers.close())
            self.loop.run_until_complete(node.storage.close())
        for sock in self._down_peers:
            sock.close()


_nodes: Nodes | None = None


def one_input(data: bytes) -> None:
    global _nodes
    if _nodes is None:  # started on the first input, not at import, so that importing costs nothing
        _nodes = Nodes()
    try:
        check_input(data, _nodes)
    except BaseException:
        _nodes.close()
        _nodes = None
        raise


def check_input(data: bytes, nodes: Nodes) -> None:
    role = Role.PEER if data and data[0] & OTHER_HALF else Role.CLIENT
    case = plan(data, Side.NODE)
    stats["frames"] += case.frames
    # The node's own limits (a cluster's frames are larger: Nodes._start), and a client's
    # frame limit where the connection plays a client.
    limits = nodes.by_case[case.limits, bool(case.flags & IN_CLUSTER)].config.limits
    expected = decode_all(Side.NODE, limits, [case.stream] if case.stream else [], case.eof, case.stream,
                          frame_limit=None if role is Role.PEER else limits.client_frame_bytes)
    transport = nodes.loop.run_until_complete(nodes.converse(case, role))
    problems = [f"logged: {line}" for line in nodes.errors.take()]
    problems += [f"left to the event loop: {context.get('message')} {context.get('exception')!r}"
                 for context in nodes.loop_errors]
    nodes.loop_errors.clear()
    if transport.writes_after_close:
        problems.append(f"{transport.writes_after_close} writes after the connection was closed")
    problems += check_replies(expected, bytes(transport.written))
    if problems:
        raise Finding(f"node {'in a cluster' if case.flags & IN_CLUSTER else 'alone'} as {role.value}, "
                      f"limits {case.limits}, eof={case.eof}: " + "; ".join(problems)
                      + f"; stream {case.stream.hex()}")


def check_replies(expected: list, written: bytes) -> list[str]:
    """What is wrong with the bytes a node wrote, given what the codec makes of its input."""
    outcomes = decode_all(Side.CLIENT, DEFAULT_LIMITS, [written] if written else [], True, written)
    refused = [outcome for outcome in outcomes if type(outcome) is Refusal]
    if refused:
        return [f"the node wrote bytes a client refuses ({refused[0]}): {written.hex()}"]
    replies = outcomes[:-1]  # the last is CLOSED
    stats["replies"] += len(replies)
    requests = {}
    wanted: Counter = Counter()
    for outcome in expected:
        if type(outcome) is Refusal:
            stats["refusals"] += 1
            if not outcome.fatal:
                wanted[outcome.request_id] += 1
        elif outcome is not CLOSED:
            stats["requests"] += 1
            wanted[outcome.id] += 1
            requests.setdefault(outcome.id, set()).add(outcome.op | REPLY_BIT)
    fatal = next((outcome for outcome in expected if type(outcome) is Refusal and outcome.fatal), None)
    problems = []
    if fatal is not None:
        last = replies[-1] if replies else None
        if not (type(last) is ErrorReply and last.id is None and last.code == fatal.code):
            problems.append(f"a fatal {ErrorCode(fatal.code).name} was not answered last with an ERROR of id nil: {last!r}")
        replies = replies[:-1]  # replies to requests still waiting on storage are lost with the connection
        if Counter(reply.id for reply in replies) - wanted:
            problems.append(f"replies to requests never sent: {replies!r}")
    elif Counter(reply.id for reply in replies) != wanted:
        problems.append(f"replies by id {dict(Counter(r.id for r in replies))}, requests by id {dict(wanted)}")
    for reply in replies:
        if type(reply) is ErrorReply:
            name = _ERROR_NAMES.get(reply.code)
            stats[f"reply.{name}"] += 1
            if name is None or reply.code == ErrorCode.INTERNAL or reply.id is None:
                problems.append(f"{reply!r}")
            continue
        stats[f"reply.{type(reply).__name__}"] += 1
        if reply.op not in requests.get(reply.id, ()):
            problems.append(f"{type(reply).__name__} answers no request with id {reply.id}")
    return problems


def seeds() -> list[bytes]:
    """Every request vector of the spec and every invalid one meant for a node, as a client
    and as a peer, to a node alone and to one in a cluster."""
    found = vectors()
    streams = [(0, vector_bytes(v)) for v in found["valid"] if v["message"]["op"] < REPLY_BIT]
    streams += [(EOF if v["eof"] else 0, vector_bytes(v)) for v in found["invalid"] if v["side"] == "node"]
    return [seed(flags | role | cluster, stream) for flags, stream in streams
            for role in (0, OTHER_HALF) for cluster in (0, IN_CLUSTER)]


def run(argv: list[str] | None = None) -> None:
    main("node", one_input, stats, seeds(), argv)


if __name__ == "__main__":
    run()
