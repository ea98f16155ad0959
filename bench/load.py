"""The load run of ``kvwire bench``: load against kvwire nodes, closed-loop or at a fixed rate.

    kvwire bench --endpoints 127.0.0.1:7379 --mix get=90,put=10 --connections 50 --duration 10

Each worker process runs one uvloop loop holding its share of the connections
(``bench.load_worker``, ``bench.load_connection``); each connection keeps up to ``--pipeline``
requests in flight. Without ``--rate`` the loop is closed: a reply lets the
next request go. With ``--rate`` requests start on a fixed schedule and their
latency counts from when they were due (``bench.recorder``). This module
preloads, starts the workers together, shows progress, and merges what they
measured; ``bench.command`` is the command line around it.

The generator shares the machine with the node, so it reports its own CPU and
the whole machine's next to the node's.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import deque
from typing import Any

import uvloop

from kvwire.bench.cpu import cpu_figures, machine_busy_seconds, server_cpu_seconds
from kvwire.bench.load_connection import Tables
from kvwire.bench.load_worker import DRAIN_TIMEOUT_S, READY_TIMEOUT_S, worker_main
from kvwire.bench.native import run_native
from kvwire.bench.preload import preload
from kvwire.bench.recorder import LatencyRecorder
from kvwire.bench.settings import Settings
from kvwire.bench.workload import OPS, mix_name
from kvwire.testing.process import terminated_with_parent


# --- the run as a whole ----------------------------------------------------------------


def run_load(settings: Settings, *, progress: bool = False, preloaded: bool = False) -> dict:
    """Preload if the run reads (unless the caller already did), run the workers, and merge what they measured.
    With ``--generator native`` the compiled generator runs instead (``bench.native``)."""
    if settings.generator == "native":
        return run_native(settings, preloaded=preloaded)
    value = os.urandom(settings.value_size)
    preload_s = uvloop.run(preload(settings, value)) if settings.preloads and not preloaded else None
    tables = Tables(settings, value)  # built once, shared with the workers by fork
    context = multiprocessing.get_context("fork")
    counters = context.Array("q", settings.workers, lock=False)
    workers = []
    # A worker forked just as a signal lands may never make it into ``workers`` to be
    # killed below; the kernel ends it with us all the same.
    with_parent = terminated_with_parent()
    try:
        for index in range(settings.workers):
            share = settings.connections // settings.workers + (index < settings.connections % settings.workers)
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=worker_main, args=(settings, index, share, child_end, tables, counters, with_parent), daemon=True
            )
            process.start()
            child_end.close()
            workers.append((process, parent_end))
        for _, pipe in workers:
            _receive(pipe, "ready", READY_TIMEOUT_S)
        t0 = time.monotonic() + 0.05
        for _, pipe in workers:
            pipe.send(("go", t0))
        bar = _ProgressBar(settings, counters) if progress else None
        reports = _Reports([pipe for _, pipe in workers])
        _wait_until(t0 + settings.warmup, bar, reports.all_in)
        cpu_before = (server_cpu_seconds(settings.server_pids), machine_busy_seconds(), time.monotonic())
        _wait_until(t0 + settings.warmup + settings.duration, bar, reports.all_in)
        cpu_after = (server_cpu_seconds(settings.server_pids), machine_busy_seconds(), time.monotonic())
        if bar:
            bar.close()
        results = reports.results(10 + DRAIN_TIMEOUT_S)
    except BaseException:
        # Interrupted (SIGTERM or Ctrl-C: bench.interrupt) or failed: no result is coming,
        # and a worker left to finish its --duration would outlive us.
        for process, _ in workers:
            process.kill()
        raise
    finally:
        for process, pipe in workers:
            pipe.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    server_cpu_s = None if cpu_before[0] is None else cpu_after[0] - cpu_before[0]
    return _merge(settings, results, server_cpu_s, cpu_after[1] - cpu_before[1], cpu_after[2] - cpu_before[2], preload_s)


def _wait_until(moment: float, bar: _ProgressBar | None, finished_early: Any) -> None:
    while (left := moment - time.monotonic()) > 0:
        if finished_early():
            return
        time.sleep(min(left, 0.25 if bar else 0.05))
        if bar:
            bar.draw()


class _ProgressBar:
    """One line on stderr: elapsed time, a bar, and ops/s over the last second.

    Workers publish their counts every 50 ms; a one-second window keeps the
    rate shown within about 5 % of the true one.
    """

    WINDOW_S = 1.0

    def __init__(self, settings: Settings, counters: Any) -> None:
        self.settings, self.counters = settings, counters
        self.started = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def draw(self) -> None:
        now, done = time.monotonic(), sum(self.counters)
        elapsed, total = now - self.started, self.settings.warmup + self.settings.duration
        while len(self.samples) > 1 and now - self.samples[1][0] >= self.WINDOW_S:
            self.samples.popleft()
        since, counted = self.samples[0]
        rate = (done - counted) / max(now - since, 1e-9)
        self.samples.append((now, done))
        filled = int(30 * min(1.0, elapsed / total))
        phase = "warm-up" if elapsed < self.settings.warmup else f"{rate:,.0f} ops/s"
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {elapsed:5.1f}/{total:g} s  {phase:>16}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\r" + " " * 70 + "\r")
        sys.stderr.flush()


class _Reports:
    """The workers' results, taken as each arrives. The run ends early only once every
    worker has reported (--requests ran out for all of them): the servers' and the
    machine's CPU must be sampled over the same time as the operations counted, which
    run until the slowest worker's last reply. A worker that failed ends it at once."""

    def __init__(self, pipes: list[Any]) -> None:
        self.pipes = pipes
        self.received: dict[int, Any] = {}

    def all_in(self) -> bool:
        for index, pipe in enumerate(self.pipes):
            if index not in self.received and pipe.poll():
                self.received[index] = _receive(pipe, "result", 0)  # raises for a worker's error
        return len(self.received) == len(self.pipes)

    def results(self, timeout: float) -> list[dict]:
        return [self.received[index] if index in self.received else _receive(pipe, "result", timeout)
                for index, pipe in enumerate(self.pipes)]


def _receive(pipe: Any, expected: str, timeout: float) -> Any:
    if not pipe.poll(timeout):
        raise RuntimeError(f"a worker sent nothing within {timeout:.0f} s")
    try:
        message, detail = pipe.recv()
    except EOFError:
        raise RuntimeError("a worker died without reporting") from None
    if message != expected:
        raise RuntimeError(detail)
    return detail


def _merge(settings: Settings, results: list[dict], server_cpu_s: float | None, machine_cpu_s: float,
           sampled_s: float, preload_s: float | None) -> dict:
    """One result from the workers'. Their window is the time they measured (shorter than
    --duration when --requests ran out); the servers' and the machine's CPU were sampled
    here, over ``sampled_s``, and their rates are over that."""
    overall, per_op = LatencyRecorder(), {}
    error_codes: dict[str, int] = {}
    for result in results:
        for op, encoded in result["histograms"].items():
            per_op.setdefault(op, LatencyRecorder()).merge(encoded)
        for code, count in result["error_codes"].items():
            error_codes[code] = error_codes.get(code, 0) + count
    for recorder in per_op.values():
        overall.merge(recorder)
    ops = len(overall)
    window_s = max((r["window_s"] for r in results), default=0.0) or None
    cpu = cpu_figures(ops, window_s, server_cpu_s, sum(r["client_cpu_s"] for r in results), machine_cpu_s,
                      sampled_s=sampled_s if window_s else None)
    return settings.summary() | cpu | {
        "endpoints": list(settings.endpoints),
        "workload": mix_name(settings.mix),
        "mode": "open loop" if settings.rate else "closed loop",
        "ops": ops,
        "measured_s": round(window_s or 0.0, 6),
        # Over the time measured, the slowest worker's: a worker that ran out of --requests
        # early has a shorter window, and the sum of each worker's own rate would overstate.
        "ops_per_s": round(ops / window_s) if window_s else 0,
        "errors": sum(r["errors"] for r in results),
        "error_codes": error_codes,
        "not_found": sum(r["not_found"] for r in results),
        "latency_ms": overall.summary_ms(),
        "latency_ms_by_op": {op: per_op[op].summary_ms() for op in OPS if op in per_op},
        "unanswered": sum(r["unanswered"] for r in results),
        "connections_lost": sum(r["connections_lost"] for r in results),
        "connect_failures": sum(r["connect_failures"] for r in results),
        "off_fast_path": sum(r["off_fast_path"] for r in results),
        "late_unsent": sum(r["late_unsent"] for r in results),
        "budget_exhausted": any(r["budget_exhausted"] for r in results),
        "preload_s": None if preload_s is None else round(preload_s, 2),
    }
