"""Run a node: open storage, listen, and shut down cleanly when told to stop.

Process signals are the program's to handle: ``kvwire serve`` sets the
``stop`` event on SIGTERM or SIGINT (kvwire/cli/signals.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging

from prometheus_client.registry import CollectorRegistry

from .config import ServerConfig
from .connection import NodeProtocol
from .datadir import DataDirLock
from .metrics import NodeCollector
from .node import Node
from .storage import Storage

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


def tune_garbage_collector() -> None:
    """Move everything alive now (the loaded index) out of the collector's way; collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


async def serve(config: ServerConfig, *, stop: asyncio.Event, registry: CollectorRegistry | None = None) -> None:
    """Serve until ``stop`` is set.

    With a ``registry``, the node's metrics join it once the node is up (for
    whoever serves ``/metrics``), and leave it when the node stops.
    On the way out: stop accepting, let requests in flight finish (at most
    ``shutdown_timeout``), commit what storage holds, close the files.
    """
    with DataDirLock(config.data_dir):  # taken before Storage.open, dropped after storage is closed
        await _serve(config, stop, registry)


async def _serve(config: ServerConfig, stop: asyncio.Event, registry: CollectorRegistry | None) -> None:
    loop = asyncio.get_running_loop()
    storage = await Storage.open(
        config.data_dir,
        node_id=config.node_id,
        sync=config.sync,
        max_batch_rows=config.max_batch_rows,
    )
    tune_garbage_collector()
    node = Node(config, storage)
    connections: set[NodeProtocol] = set()
    try:
        server = await loop.create_server(
            lambda: NodeProtocol(node, connections), config.host, config.port, backlog=_LISTEN_BACKLOG
        )
    except BaseException:
        await storage.close()
        raise
    node.start()
    collector = NodeCollector(node)
    if registry is not None:
        registry.register(collector)
    log.info("node %s of cluster %s listening on %s:%d; %s", config.node_id, config.cluster_id, config.host, config.port,
             f"peers {', '.join(f'{m.node_id}={m.address}' for m in config.peers)}" if config.peers else "running alone")
    try:
        await stop.wait()
    finally:
        if registry is not None:
            registry.unregister(collector)
        await _shut_down(server, connections, node, config.shutdown_timeout)


async def _shut_down(server: asyncio.AbstractServer, connections: set[NodeProtocol], node: Node, timeout: float) -> None:
    server.close()
    # Each reply is queued by a done-callback registered before asyncio.wait's
    # own, so by the time the wait returns every finished reply is buffered.
    in_flight = set().union(*(conn.pending for conn in connections))
    if in_flight:
        _, still_waiting = await asyncio.wait(in_flight, timeout=timeout)
        if still_waiting:
            log.warning("shutdown timeout: %d requests unanswered; writes among them are committed below", len(still_waiting))
    for conn in list(connections):
        conn.close()
    node.stop()
    await node.peers.close()
    await node.storage.close()
    log.info("storage flushed and closed; bye")
