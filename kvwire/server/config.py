"""Node configuration: one frozen dataclass, checked as a whole when built."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol.limits import DEFAULT_LIMITS, Limits


class SyncMode(str, enum.Enum):
    """SQLite's ``PRAGMA synchronous`` for the WAL (https://sqlite.org/pragma.html#pragma_synchronous).

    Every mode survives ``kill -9`` of the node, because a commit has reached
    the operating system before it is acknowledged; only ``full`` also
    survives losing power, by fsyncing the WAL on every commit.
    """

    FULL = "full"
    NORMAL = "normal"
    OFF = "off"


# Node ids appear in version tags, logs and (next) --cluster lists of the form
# n1=host:port,n2=...; keep them to characters that need no quoting there.
_NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class ServerConfig:
    node_id: str = "n1"
    host: str = "127.0.0.1"
    port: int = 7379
    data_dir: Path = Path(".kvwire/n1")
    cluster_id: str = "kvwire"
    sync: SyncMode = SyncMode.FULL
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    max_connections: int = 1024
    # Values kept in memory; every key's version tag is held regardless.
    cache_entries: int = 100_000
    # A connection with this many requests awaiting storage stops being read
    # until half of them are answered, so one pipelining client cannot queue
    # unbounded work.
    max_inflight_per_connection: int = 1024
    # Rows per group-commit transaction; more waits for the next one. At about
    # 220k rows/s for executemany (GUIDE section 4) this keeps one transaction
    # near 20 ms.
    max_batch_rows: int = 4096
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not _NODE_ID.match(self.node_id):
            raise ValueError(
                f"node id {self.node_id!r} must be 1-64 characters of letters, digits, '_', '.' or '-'"
            )
        if not isinstance(self.cluster_id, str) or not _NODE_ID.match(self.cluster_id):
            raise ValueError(
                f"cluster id {self.cluster_id!r} must be 1-64 characters of letters, digits, '_', '.' or '-'"
            )
        if not self.host:
            raise ValueError("listen host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"listen port {self.port} is outside 0-65535")
        object.__setattr__(self, "sync", SyncMode(self.sync))
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not isinstance(self.limits, Limits):
            raise ValueError("limits must be a kvwire.protocol.Limits")
        for name in ("max_connections", "max_inflight_per_connection", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.cache_entries < 0:
            raise ValueError(f"cache_entries must be 0 or more, got {self.cache_entries}")
        if self.shutdown_timeout <= 0:
            raise ValueError(f"shutdown_timeout must be positive, got {self.shutdown_timeout}")

