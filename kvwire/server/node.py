"""What a node does with each request, independent of sockets.

``Node.handle`` answers a request with a reply when it can do so at once (a
PING, a GET of a cached or missing key) and otherwise with a future of the
reply (a write waiting for group commit, a GET reading SQLite). Answering
synchronously where possible is what lets one ``data_received`` call turn a
burst of pipelined GETs into a single write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from ..protocol.errors import BadRequestError, ForbiddenError, KeyNotFoundError, TooLargeError
from ..protocol.messages import (
    PROTOCOL_VERSION,
    Delete,
    DeleteReply,
    Get,
    GetReply,
    Health,
    HealthReply,
    Hello,
    HelloReply,
    Ping,
    Pong,
    Put,
    PutReply,
    Replicate,
    ReplicateReply,
    Reply,
    Request,
    Role,
    Version,
)
from .cache import MISSING
from .config import ServerConfig
from .storage import Storage

log = logging.getLogger("kvwire.node")


@dataclass(slots=True)
class Session:
    """What a node knows about one connection."""

    peer: str
    role: Role = Role.CLIENT


class Node:
    def __init__(self, config: ServerConfig, storage: Storage, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.storage = storage
        self._clock = clock
        self._started = clock()
        self._packer = msgpack.Packer()
        self.connections = 0
        self._handlers: dict[type, Callable[[Any, Session], Reply | asyncio.Future]] = {
            Hello: self._hello,
            Ping: self._ping,
            Get: self._get,
            Put: self._put,
            Delete: self._delete,
            Health: self._health,
            Replicate: self._replicate,
        }

    def handle(self, request: Request, session: Session) -> Reply | asyncio.Future:
        """The reply, or a future of it. Raises KvwireError for a refusal."""
        return self._handlers[type(request)](request, session)

    # --- handlers ----------------------------------------------------------------------

    def _hello(self, request: Hello, session: Session) -> Reply:
        if request.proto != PROTOCOL_VERSION:
            raise BadRequestError(
                f"protocol version {request.proto} is not supported; this node speaks {PROTOCOL_VERSION}"
            )
        if request.cluster is not None and request.cluster != self.config.cluster_id:
            raise ForbiddenError(
                f"this node belongs to cluster {self.config.cluster_id!r}, not {request.cluster!r}"
            )
        session.role = request.role
        return HelloReply(request.id, PROTOCOL_VERSION, self.config.node_id, self.config.cluster_id)

    def _ping(self, request: Ping, session: Session) -> Reply:
        return Pong(request.id)

    def _get(self, request: Get, session: Session) -> Reply | asyncio.Future:
        # A lone node is its own majority: "one" and "quorum" read the same copy.
        key = request.key
        entry = self.storage.index.get(key)
        if entry is None or entry.deleted:
            raise KeyNotFoundError(f"key {key!r} not found")
        value = self.storage.cached(key)
        if value is not MISSING:
            return GetReply(request.id, value, entry.version)
        return asyncio.ensure_future(self._get_from_disk(request))

    async def _get_from_disk(self, request: Get) -> Reply:
        found = await self.storage.read(request.key)
        if found is None:
            raise KeyNotFoundError(f"key {request.key!r} not found")
        value, version = found
        return GetReply(request.id, value, version)

    def _put(self, request: Put, session: Session) -> asyncio.Future:
        packed = self._pack_value(request.value)
        version = self._next_version(request.key)
        return _then(self.storage.write(request.key, version, request.value, packed), lambda _: PutReply(request.id, version))

    def _delete(self, request: Delete, session: Session) -> asyncio.Future:
        entry = self.storage.latest(request.key)
        if entry is None or entry.deleted:
            raise KeyNotFoundError(f"key {request.key!r} not found")
        version = self._next_version(request.key)
        return _then(self.storage.write(request.key, version, None, None), lambda _: DeleteReply(request.id, version))

    def _replicate(self, request: Replicate, session: Session) -> Reply | asyncio.Future:
        if session.role is not Role.PEER:
            raise ForbiddenError("REPLICATE is accepted only on a connection that said HELLO with role 'peer'")
        if request.deleted:
            value, packed = None, None
        else:
            value, packed = request.value, self._pack_value(request.value)
        written = self.storage.write(request.key, request.version, value, packed)
        return _then(written, lambda applied: ReplicateReply(request.id, applied, self.storage.latest_version(request.key)))

    def _health(self, request: Health, session: Session) -> Reply:
        return HealthReply(request.id, self.health())

    # --- helpers -----------------------------------------------------------------------

    def _next_version(self, key: str) -> Version:
        return Version(self.storage.latest_version(key).counter + 1, self.config.node_id)

    def _pack_value(self, value: Any) -> bytes:
        packed = self._packer.pack(value)
        limit = self.config.limits.max_value_bytes
        if len(packed) > limit:
            raise TooLargeError(f"value is {len(packed)} bytes encoded; the limit is {limit} bytes")
        return packed

    def health(self) -> dict[str, Any]:
        """The HEALTH document; its ``cluster`` part has the shape the REST API documents."""
        storage = self.storage
        return {
            "status": "healthy",
            "node_id": self.config.node_id,
            "cluster_id": self.config.cluster_id,
            "uptime_s": round(self._clock() - self._started, 3),
            "protocol_version": PROTOCOL_VERSION,
            "connections": self.connections,
            "keys": len(storage.index),
            "cached_values": len(storage.cache),
            "pending_writes": storage.queued_writes,
            "commits": storage.commits,
            "committed_rows": storage.committed_rows,
            "sync": self.config.sync.value,
            "cluster": {
                "replication_enabled": False,
                "total_nodes": 1,
                "healthy_nodes": 1,
                "unhealthy_nodes": 0,
                "required_for_quorum": 1,
                "has_quorum": True,
                "can_accept_writes": True,
                "automatic_failover_enabled": False,
                "retry_attempts": 0,
                "nodes": [],
            },
        }


def _then(future: asyncio.Future, make_reply: Callable[[Any], Reply]) -> asyncio.Future:
    """A future of ``make_reply(result)``; cheaper than a Task per write."""
    reply = future.get_loop().create_future()

    def finish(done: asyncio.Future) -> None:
        if reply.cancelled():
            return
        if done.cancelled():
            reply.cancel()
            return
        exc = done.exception()
        if exc is not None:
            reply.set_exception(exc)
        else:
            reply.set_result(make_reply(done.result()))

    if future.done():
        finish(future)
    else:
        future.add_done_callback(finish)
    return reply
