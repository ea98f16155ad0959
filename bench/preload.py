"""The preload of ``kvwire bench``: PUT every key once before a run that reads or deletes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from kvwire.bench.load_connection import LoadProtocol, Tables, WorkerTally, close_all, connect_all, why_lost
from kvwire.bench.settings import Settings
from kvwire.bench.workload import OPS

_PUT = OPS.index("put")

# A preload that hears no answer this long fails: a node that took the connections
# and its HELLO and then went silent held the run for its whole limit (40 s and
# more) before it said anything. A healthy node answers the first of its 512
# pipelined PUTs within milliseconds, even fsyncing each group commit.
SILENCE_LIMIT = 10.0


class _PreloadProtocol(LoadProtocol):
    """PUTs keys from a shared iterator; ``done`` resolves once it has nothing left to send or await."""

    def __init__(self, run: WorkerTally, tables: Tables, todo: Any) -> None:
        super().__init__(run, tables, [0], [_PUT], 0)
        self.pipeline = 32
        self.todo = todo
        self.done = asyncio.get_running_loop().create_future()
        # Lost before the preload began (connect_one failed on another connection), it is
        # awaited by no one: retrieved here, so asyncio does not print it on the way out.
        self.done.add_done_callback(lambda done: done.cancelled() or done.exception())

    def send_next(self, count: int, now: float) -> None:
        chunks = []
        for key in self.todo:
            self.inflight[key] = (now, _PUT)
            chunks.append(self.tables.frames[_PUT][key])
            if len(chunks) == count:
                break
        if chunks:
            self.transport.write(b"".join(chunks))
        elif not self.inflight and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.done.done():
            return
        if self.closing:  # closed by close_all, the preload cut short: nobody awaits it, and an error would be logged
            self.done.cancel()
        else:
            self.done.set_exception(ConnectionError(f"connection lost during the preload{why_lost(exc)}"))


async def preload(settings: Settings, value: bytes, *, silence_limit: float = SILENCE_LIMIT) -> float:
    """PUT every key once, so that GETs find them; the seconds it took. Raises on any error."""
    put_settings = replace(settings, mix={"put": 1})
    run = WorkerTally(put_settings, budget=settings.keys)
    run.sending = run.recording = True
    tables, todo, started = Tables(put_settings, value), iter(range(settings.keys)), time.monotonic()
    protocols = await connect_all(settings, range(min(settings.connections, 16)),
                                  lambda _: lambda: _PreloadProtocol(run, tables, todo))
    try:
        for protocol in protocols:
            protocol.start()
        # 1k PUTs/s is far below what a healthy node commits even with fsync on.
        limit = 30 + settings.keys / 1000
        await _wait_for_answers(protocols, run, settings.keys, limit, silence_limit)
    finally:
        close_all(protocols)
    if run.errors:
        raise RuntimeError(f"preload: {run.errors} PUTs failed: {run.error_codes}")
    return time.monotonic() - started


async def _wait_for_answers(protocols: list[_PreloadProtocol], run: WorkerTally, keys: int, limit: float,
                            silence_limit: float) -> None:
    """Until every connection is done; TimeoutError after ``limit`` s, or ``silence_limit`` s without an answer."""
    waiting = [protocol.done for protocol in protocols]
    heard, heard_at = -1, time.monotonic()
    deadline = heard_at + limit
    while True:
        now = time.monotonic()
        answered = run.completed + run.errors
        if answered != heard:
            heard, heard_at = answered, now
        elif now - heard_at >= silence_limit:
            raise TimeoutError(f"the preload heard no answer to its PUTs for {silence_limit:g} s "
                               f"({answered} of {keys} answered): the node took them and went silent")
        if now >= deadline:
            raise TimeoutError(f"the preload of {keys} keys took over {limit:g} s")
        # asyncio.wait, not wait_for(gather()): cancelled (Ctrl-C, SIGTERM), wait_for leaves
        # the gather's CancelledError unretrieved, and asyncio prints it on the way out.
        done, pending = await asyncio.wait(waiting, timeout=min(silence_limit / 4, deadline - now),
                                           return_when=asyncio.FIRST_EXCEPTION)
        for future in done:
            future.result()  # a connection lost: its ConnectionError
        if not pending:
            return
