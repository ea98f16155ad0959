"""One worker process of ``kvwire bench``: its connections on one uvloop loop, the
window it measures, and what it reports to the parent (``bench.load``)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import uvloop

from kvwire.bench.load_connection import LoadProtocol, Tables, WorkerTally, close_all, connect_all, connect_one
from kvwire.bench.recorder import Schedule
from kvwire.bench.settings import Settings
from kvwire.bench.workload import OPS, key_sequence, op_sequence, sequence_length

_RECONNECT_DELAY_S = 0.05
_TICK_S = 0.001
# A request due in the last moments of the window may still be waiting, rightly,
# behind one in flight on its connection (--pipeline); only those due longer
# ago than this show that the open loop fell behind its --rate.
_LATE_AFTER_S = 0.1
_PROGRESS_EVERY_S = 0.05
# Replies still out this long after the window closes are reported as unanswered.
DRAIN_TIMEOUT_S = 2.0
READY_TIMEOUT_S = 30.0


async def _drive(settings: Settings, index: int, connections: int, pipe: Any, tables: Tables, progress: Any) -> dict:
    loop = asyncio.get_running_loop()
    budget = settings.max_requests // settings.workers + (index < settings.max_requests % settings.workers)
    run = WorkerTally(settings, budget=budget)
    rng = random.Random(index)
    length = sequence_length(settings.keys)
    keys, ops = key_sequence(settings.keys, settings.distribution, rng, length), op_sequence(settings.mix, rng, length)
    first = index * connections  # this worker's connections are numbered from here, over all workers
    # Each connection of an open loop sends its share of --rate, evenly spread.
    lane_rate = settings.rate / settings.connections if settings.rate else None

    def make(position: int, schedule: Schedule | None) -> Callable[[], LoadProtocol]:
        return lambda: LoadProtocol(run, tables, keys, ops, position, schedule)

    protocols = await connect_all(settings, range(first, first + connections),
                                  lambda _: make(rng.randrange(len(keys)), None))
    numbers = {id(protocol): first + n for n, protocol in enumerate(protocols)}

    async def reconnect(lost: LoadProtocol) -> None:
        number = numbers.pop(id(lost))
        while run.sending:
            await asyncio.sleep(_RECONNECT_DELAY_S)
            try:
                fresh = await connect_one(settings, number, make(lost.position, lost.schedule))
            except (TimeoutError, OSError):
                if run.recording:
                    run.connect_failures += 1
                continue
            numbers[id(fresh)] = number
            protocols[protocols.index(lost)] = fresh
            if run.sending:
                fresh.start()
            return

    run.reconnect = lambda lost: loop.create_task(reconnect(lost)) if id(lost) in numbers else None
    pipe.send(("ready", None))
    if not await loop.run_in_executor(None, pipe.poll, READY_TIMEOUT_S):
        raise TimeoutError("no start signal from the parent process")
    _, t0 = pipe.recv()
    finished, cpu = loop.create_future(), []

    def at(when: float, callback: Callable[[], None]) -> None:
        loop.call_later(max(0.0, when - time.monotonic()), callback)

    def mark() -> None:
        run.window.append(time.monotonic())
        cpu.append(time.process_time())

    def tick() -> None:
        if run.sending:
            now = time.perf_counter()
            for protocol in protocols:
                if not protocol.transport.is_closing():
                    protocol.pump(now)
            loop.call_later(_TICK_S, tick)

    def report_progress() -> None:
        progress[index] = run.completed
        if not finished.done():
            loop.call_later(_PROGRESS_EVERY_S, report_progress)

    def start() -> None:
        run.sending = True
        if settings.warmup <= 0:
            # Recording from the first request: scheduled, begin() could come after the
            # replies of a small --requests budget had all arrived (in a fresh-clone CI
            # run under load, 10 requests measured 0 operations).
            begin()
        if lane_rate:
            start_at = time.perf_counter()
            # Spread evenly over all workers' connections, so that the lanes do not send in
            # step: connection k first sends k / rate after the start. A random point in each
            # lane's interval let a low --rate send nothing in a short run (4 connections at 1
            # request/s over 2 s: none, exit 1; a tools probe's finding).
            for protocol in protocols:
                protocol.schedule = Schedule(lane_rate, start_at + numbers[id(protocol)] / settings.rate)
            tick()
        for protocol in protocols:
            protocol.start()
        if settings.warmup > 0:
            at(t0 + settings.warmup, begin)

    def begin() -> None:
        if not run.window:  # else the request budget ran out in the warm-up
            run.recording = True
            mark()
            report_progress()
            at(t0 + settings.warmup + settings.duration, end)

    def end() -> None:
        if run.recording or not run.window:
            if run.recording and lane_rate:  # long due and never sent: the open loop fell behind
                late = time.perf_counter() - _LATE_AFTER_S
                run.late_unsent = sum(p.schedule.due(late) for p in protocols if p.schedule is not None)
            run.recording = run.sending = False
            mark()
            if not finished.done():
                finished.set_result(None)

    async def end_when_answered() -> None:
        """--requests is spent: send no more, but count every reply still coming."""
        run.sending = False
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while any(p.inflight for p in protocols) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        end()

    run.on_budget_exhausted = lambda: loop.create_task(end_when_answered())
    at(t0, start)
    try:
        await asyncio.wait_for(finished, settings.warmup + settings.duration + 10)
        progress[index] = run.completed
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while any(p.inflight for p in protocols) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        unanswered = close_all(protocols)
    measured = len(run.window) == 2
    return {
        "ops": sum(len(recorder) for recorder in run.recorders),
        "window_s": run.window[1] - run.window[0] if measured else 0.0,
        "client_cpu_s": cpu[1] - cpu[0] if measured else 0.0,
        "histograms": {op: recorder.encode() for op, recorder in zip(OPS, run.recorders) if len(recorder)},
        "errors": run.errors,
        "error_codes": run.error_codes,
        "not_found": run.not_found,
        "unanswered": unanswered,
        "connections_lost": run.connections_lost,
        "connect_failures": run.connect_failures,
        "off_fast_path": run.off_fast_path,
        "late_unsent": run.late_unsent,
        "budget_exhausted": run.budget_exhausted,
    }


def worker_main(settings: Settings, index: int, connections: int, pipe: Any, tables: Tables, progress: Any,
                with_parent: Callable[[], None] | None = None) -> None:
    """A worker process's body; ``with_parent`` (``terminated_with_parent()``, made in the
    parent) has the kernel end it if the parent dies first."""
    if with_parent is not None:
        with_parent()
    try:
        pipe.send(("result", uvloop.run(_drive(settings, index, connections, pipe, tables, progress))))
    except BaseException as exc:  # the parent reports it; a worker prints no traceback
        try:
            pipe.send(("error", f"worker {index}: {type(exc).__name__}: {exc}"))
        except OSError:  # the parent has gone
            pass
    finally:
        pipe.close()
