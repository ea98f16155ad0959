"""Bulk data for tests and benchmarks: many keys written, one node's own copies read back, and
one of them damaged in its file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..client import AsyncClient
from ..protocol import Consistency, ErrorCode, ErrorReply, Get, GetReply
from .wire import RawConnection

# Requests in flight at once while filling: enough to keep a node's group
# commit batches full, few enough not to trip its per-connection limit.
FILL_CONCURRENCY = 64


def value_for(key: str, size: int) -> bytes:
    """A deterministic value of ``size`` bytes for ``key``, so a reader can check it."""
    seed = key.encode()
    return (seed * (size // max(1, len(seed)) + 1))[:size]


def write_keys(endpoints: Sequence[str], keys: Iterable[str], *, value_bytes: int = 100,
               concurrency: int = FILL_CONCURRENCY, **client_options: Any) -> int:
    """PUT ``value_for(key, value_bytes)`` for every key, ``concurrency`` at a time; the count written."""

    async def fill() -> int:
        async with AsyncClient(list(endpoints), **client_options) as client:
            pending = list(keys)
            written = 0

            async def worker() -> None:
                nonlocal written
                while pending:
                    key = pending.pop()
                    await client.put(key, value_for(key, value_bytes))
                    written += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return written

    return asyncio.run(fill())


def local_copies(address: str, keys: Sequence[str], *, batch: int = 500, **connection_options: Any) -> dict[str, Any]:
    """``{key: value}`` of what the node at ``address`` holds itself (``consistency=one``,
    pipelined), for the keys it has; no quorum read, so nothing is repaired by asking."""
    found: dict[str, Any] = {}
    with RawConnection(address, **connection_options) as connection:
        for start in range(0, len(keys), batch):
            chunk = keys[start:start + batch]
            connection.send(*(Get(i, key, Consistency.ONE) for i, key in enumerate(chunk)))
            # Replies may come in any order (a GET that loads from disk is answered later): match ids.
            by_id = {reply.id: reply for reply in connection.receive(len(chunk))}
            for i, key in enumerate(chunk):
                reply = by_id.get(i)
                if isinstance(reply, GetReply):
                    found[key] = reply.value
                elif not (isinstance(reply, ErrorReply) and reply.code == ErrorCode.NOT_FOUND):
                    raise RuntimeError(f"GET {key!r} from {address} answered {reply!r}")
    return found


def damage_value(data_dir: str | Path, key: str, *, value: bytes | int = b"\xc1") -> None:
    """Change ``key``'s stored value in a stopped node's database, as bit rot or a stray
    write would: by default to 0xc1, the one byte msgpack never uses."""
    with sqlite3.connect(Path(data_dir) / "kvwire.sqlite3") as db:
        if db.execute("UPDATE kv SET value = ? WHERE key = ?", (value, key)).rowcount != 1:
            raise AssertionError(f"{key!r} is not in {data_dir}")
