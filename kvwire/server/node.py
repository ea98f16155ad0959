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
    NO_VERSION,
    PROTOCOL_VERSION,
    Consistency,
    Delete,
    DeleteReply,
    Get,
    GetReply,
    Fetch,
    FetchReply,
    Health,
    HealthReply,
    Hello,
    HelloReply,
    Lookup,
    LookupReply,
    Ping,
    Pong,
    Put,
    PutReply,
    Replicate,
    ReplicateReply,
    Reply,
    Request,
    Role,
)
from .cache import MISSING
from .config import ServerConfig
from .coordinator import Coordinator
from .futures import then
from .peers import Peers
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
        self.peers = Peers(config, storage, clock=clock)
        self.coordinator = Coordinator(config, storage, self.peers)
        # A lone node is its own majority: its reads need no round.
        self._reads_local = config.cluster_size == 1
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
            Lookup: self._lookup,
            Fetch: self._fetch,
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
        if not self._reads_local and request.consistency is not Consistency.ONE:
            return asyncio.ensure_future(self._quorum_get(request))
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

    async def _quorum_get(self, request: Get) -> Reply:
        value, version = await self.coordinator.read(request.key)
        return GetReply(request.id, value, version)

    def _put(self, request: Put, session: Session) -> asyncio.Future:
        packed = self._pack_value(request.value)
        written = self.coordinator.start_write(request.key, request.value, packed)
        return then(written, lambda result: PutReply(request.id, result.version, result.created))

    def _delete(self, request: Delete, session: Session) -> asyncio.Future:
        written = self.coordinator.start_write(request.key, None, None, must_exist=True)
        return then(written, lambda result: DeleteReply(request.id, result.version))

    # --- peer-only requests ----------------------------------------------------------------

    def _replicate(self, request: Replicate, session: Session) -> Reply | asyncio.Future:
        _require_peer(session, "REPLICATE")
        if request.deleted:
            value, packed = None, None
        else:
            value, packed = request.value, self._pack_value(request.value)
        written = self.storage.write(request.key, request.version, value, packed)
        return then(written, lambda applied: ReplicateReply(request.id, applied, self.storage.latest_version(request.key)))

    def _lookup(self, request: Lookup, session: Session) -> Reply:
        _require_peer(session, "LOOKUP")
        entry = self.storage.latest(request.key)
        if entry is None:
            return LookupReply(request.id, NO_VERSION, False)
        return LookupReply(request.id, entry.version, entry.deleted)

    def _fetch(self, request: Fetch, session: Session) -> Reply | asyncio.Future:
        _require_peer(session, "FETCH")
        entry = self.storage.index.get(request.key)
        if entry is None:
            return FetchReply(request.id, NO_VERSION, False, None)
        if entry.deleted:
            return FetchReply(request.id, entry.version, True, None)
        value = self.storage.cached(request.key)
        if value is not MISSING:
            return FetchReply(request.id, entry.version, False, value)
        return asyncio.ensure_future(self._fetch_from_disk(request))

    async def _fetch_from_disk(self, request: Fetch) -> Reply:
        found = await self.storage.read(request.key)
        if found is None:  # deleted meanwhile: answer from the index again
            entry = self.storage.index.get(request.key)
            version = entry.version if entry is not None else NO_VERSION
            return FetchReply(request.id, version, entry is not None and entry.deleted, None)
        value, version = found
        return FetchReply(request.id, version, False, value)

    def _health(self, request: Health, session: Session) -> Reply:
        return HealthReply(request.id, self.health())

    # --- helpers -----------------------------------------------------------------------

    def _pack_value(self, value: Any) -> bytes:
        packed = self._packer.pack(value)
        limit = self.config.limits.max_value_bytes
        if len(packed) > limit:
            raise TooLargeError(f"value is {len(packed)} bytes encoded; the limit is {limit} bytes")
        return packed

    def health(self) -> dict[str, Any]:
        """The HEALTH document; its ``cluster`` part has the shape the REST API documents."""
        storage, config = self.storage, self.config
        peers = self.peers.describe()
        healthy = 1 + sum(peer["healthy"] for peer in peers)
        has_quorum = healthy >= config.quorum
        return {
            "status": "healthy" if healthy == config.cluster_size else "degraded" if has_quorum else "unavailable",
            "node_id": config.node_id,
            "cluster_id": config.cluster_id,
            "uptime_s": round(self._clock() - self._started, 3),
            "protocol_version": PROTOCOL_VERSION,
            "connections": self.connections,
            "keys": len(storage.index),
            "cached_values": len(storage.cache),
            "pending_writes": storage.queued_writes,
            "commits": storage.commits,
            "committed_rows": storage.committed_rows,
            "sync": config.sync.value,
            "no_quorum_writes": self.coordinator.no_quorum_writes,
            "read_write_backs": self.coordinator.write_backs,
            "hedged_requests": self.coordinator.hedged_requests,
            "cluster": {
                "replication_enabled": config.cluster_size > 1,
                "total_nodes": config.cluster_size,
                "healthy_nodes": healthy,
                "unhealthy_nodes": config.cluster_size - healthy,
                "required_for_quorum": config.quorum,
                "has_quorum": has_quorum,
                "can_accept_writes": has_quorum,
                "automatic_failover_enabled": config.cluster_size > 1,
                "retry_attempts": config.retry_attempts,
                "heartbeat_interval_ms": round(config.heartbeat_interval * 1000),
                "failure_timeout_ms": round(config.failure_timeout * 1000),
                "nodes": peers,
            },
        }


def _require_peer(session: Session, op: str) -> None:
    if session.role is not Role.PEER:
        raise ForbiddenError(f"{op} is accepted only on a connection that said HELLO with role 'peer'")
