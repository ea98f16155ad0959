"""``kvwire bench``: load against kvwire nodes, closed-loop or at a fixed rate.

    kvwire bench --endpoints 127.0.0.1:7379 --mix get=90,put=10 --connections 50 --duration 10

Each worker process runs one uvloop loop holding its share of the connections
(``bench.load_worker``, ``bench.load_connection``); each connection keeps up to ``--pipeline``
requests in flight. Without ``--rate`` the loop is closed: a reply lets the
next request go. With ``--rate`` requests start on a fixed schedule and their
latency counts from when they were due (``bench.recorder``). This module checks
the options, starts the workers together, shows progress, and merges and
reports what they measured.

The generator shares the machine with the node, so it reports its own CPU and
the whole machine's next to the node's.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench.cpu import machine_busy_seconds, server_cpu_seconds
from bench.load_connection import Tables
from bench.load_worker import DRAIN_TIMEOUT_S, READY_TIMEOUT_S, worker_main
from bench.preload import preload
from bench.output import prepare_directory
from bench.recorder import LatencyRecorder
from bench.workload import DISTRIBUTIONS, MAX_KEYS, OPS, mix_name, parse_mix
from kvwire.protocol import Consistency, parse_host_port

_DEFAULT_MAX_REQUESTS = 100_000_000
_MAX_FRAME_TABLE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    endpoints: tuple[str, ...] = ("127.0.0.1:7379",)
    mix: dict[str, int] = field(default_factory=lambda: {"get": 1})
    connections: int = 50
    pipeline: int = 1
    workers: int = 1
    duration: float = 10.0
    warmup: float = 1.0
    value_size: int = 100
    keys: int = 10_000
    distribution: str = "uniform"
    consistency: str | None = None
    rate: float | None = None
    max_requests: int = _DEFAULT_MAX_REQUESTS
    server_pids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("give at least one --endpoint")
        for endpoint in self.endpoints:
            parse_host_port(endpoint)  # its ValueError quotes the input
        if not self.mix or set(self.mix) - set(OPS) or min(self.mix.values()) <= 0:
            raise ValueError(f"--mix must give positive weights to some of {', '.join(OPS)}, got {self.mix}")
        if not 1 <= self.workers <= 64 or not self.workers <= self.connections <= 10_000:
            raise ValueError("--workers must be 1-64, and --connections between --workers and 10000")
        if not 1 <= self.pipeline <= 1024:
            raise ValueError(f"--pipeline must be 1-1024, got {self.pipeline}")
        if not 0 < self.duration <= 3600 or not 0 <= self.warmup <= 600:
            raise ValueError("--duration must be in (0, 3600] seconds and --warmup in [0, 600]")
        if self.value_size < 0 or self.max_requests < self.workers:
            raise ValueError("--value-size must be at least 0 and --requests at least --workers")
        # Half the key space free on each connection keeps picking a key not in flight quick.
        if not 2 * self.pipeline <= self.keys <= MAX_KEYS:
            raise ValueError(f"--keys must be at least 2 x --pipeline ({2 * self.pipeline}) and at most {MAX_KEYS}")
        if self.keys * (self.value_size + 64) > _MAX_FRAME_TABLE_BYTES:
            raise ValueError("--keys x --value-size exceeds 512 MiB of precomputed frames; lower one of them")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"--distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}")
        if self.consistency is not None and self.consistency not in {level.value for level in Consistency}:
            raise ValueError(f"--consistency must be one of {', '.join(c.value for c in Consistency)}, got {self.consistency!r}")
        if self.rate is not None and not 0 < self.rate <= 10_000_000:
            raise ValueError(f"--rate must be in (0, 10000000] requests/s, got {self.rate}")

    @property
    def preloads(self) -> bool:
        """Runs that read or delete first PUT every key, so that they find them."""
        return bool(set(self.mix) - {"put"})


# --- the run as a whole ----------------------------------------------------------------


def run_load(settings: Settings, *, progress: bool = False) -> dict:
    """Preload if the run reads, run the workers, and merge what they measured."""
    value = os.urandom(settings.value_size)
    preload_s = uvloop.run(preload(settings, value)) if settings.preloads else None
    tables = Tables(settings, value)  # built once, shared with the workers by fork
    context = multiprocessing.get_context("fork")
    counters = context.Array("q", settings.workers, lock=False)
    workers = []
    try:
        for index in range(settings.workers):
            share = settings.connections // settings.workers + (index < settings.connections % settings.workers)
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=worker_main, args=(settings, index, share, child_end, tables, counters), daemon=True
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
        _wait_until(t0 + settings.warmup, bar)
        cpu_before = (server_cpu_seconds(settings.server_pids), machine_busy_seconds())
        _wait_until(t0 + settings.warmup + settings.duration, bar, lambda: any(p.poll() for _, p in workers))
        cpu_after = (server_cpu_seconds(settings.server_pids), machine_busy_seconds())
        if bar:
            bar.close()
        results = [_receive(pipe, "result", 10 + DRAIN_TIMEOUT_S) for _, pipe in workers]
    finally:
        for process, pipe in workers:
            pipe.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    server_cpu_s = None if cpu_before[0] is None else cpu_after[0] - cpu_before[0]
    return _merge(settings, results, server_cpu_s, cpu_after[1] - cpu_before[1], preload_s)


def _wait_until(moment: float, bar: _ProgressBar | None, finished_early: Any = None) -> None:
    while (left := moment - time.monotonic()) > 0:
        if finished_early is not None and finished_early():  # --requests ran out, or a worker failed
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
           preload_s: float | None) -> dict:
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

    def per_second(seconds: float | None) -> float | None:
        return None if seconds is None or not window_s else round(seconds / window_s, 2)

    summary = {key: value for key, value in asdict(settings).items() if key != "server_pids"}
    return summary | {
        "endpoints": list(settings.endpoints),
        "workload": mix_name(settings.mix),
        "mode": "open loop" if settings.rate else "closed loop",
        "ops": ops,
        "ops_per_s": round(sum(r["ops"] / r["window_s"] for r in results if r["window_s"] > 0)),
        "errors": sum(r["errors"] for r in results),
        "error_codes": error_codes,
        "not_found": sum(r["not_found"] for r in results),
        "latency_ms": overall.summary_ms(),
        "latency_ms_by_op": {op: per_op[op].summary_ms() for op in OPS if op in per_op},
        "server_cpu_us_per_op": round(server_cpu_s * 1e6 / ops, 2) if server_cpu_s is not None and ops else None,
        "server_cpu_cores": per_second(server_cpu_s),
        "client_cpu_cores": per_second(sum(r["client_cpu_s"] for r in results)),
        "machine_cpu_cores": per_second(machine_cpu_s),
        "cpu_count": os.cpu_count(),
        "unanswered": sum(r["unanswered"] for r in results),
        "connections_lost": sum(r["connections_lost"] for r in results),
        "connect_failures": sum(r["connect_failures"] for r in results),
        "off_fast_path": sum(r["off_fast_path"] for r in results),
        "late_unsent": sum(r["late_unsent"] for r in results),
        "budget_exhausted": any(r["budget_exhausted"] for r in results),
        "preload_s": None if preload_s is None else round(preload_s, 2),
    }


# --- command line ----------------------------------------------------------------------


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Load against kvwire nodes. Each connection keeps up to --pipeline requests in flight for\n"
            "--duration seconds, after --warmup seconds that are not counted. Without --rate the loop is\n"
            "closed (a reply lets the next request go); with --rate requests start on a fixed schedule and\n"
            "latency counts from when each was due, so a stall is not hidden (coordinated omission).\n"
            "A run that reads or deletes first PUTs every key once. Prints throughput, errors, latency\n"
            "percentiles (HdrHistogram) and, with --server-pid, the nodes' CPU time per operation.\n\n"
            f"`{prog} suite` runs every scenario of the README's Performance section instead."
        ),
        epilog=(
            "examples:\n"
            f"  {prog} --endpoints 127.0.0.1:7379 --mix get --connections 50 --server-pid PID\n"
            f"  {prog} --endpoints 127.0.0.1:7379,127.0.0.1:7380 --mix get=90,put=10 --distribution zipfian\n"
            f"  {prog} --mix put --rate 2000 --duration 30 -o json --out results/\n\n"
            "exit status: 0 when the run completed (error replies are counted, not fatal),\n"
            "1 when it could not run (refused connection, failed preload), 2 for bad options."
        ),
    )
    add = parser.add_argument
    add("--endpoint", "--endpoints", dest="endpoints", default="127.0.0.1:7379", metavar="HOST:PORT[,...]",
        help="node(s) to load; connections are spread over them round-robin (default: %(default)s)")
    add("--mix", "--op", dest="mix", default="get", metavar="OP[=WEIGHT,...]",
        help="request types and their weights, e.g. get, put, delete or get=90,put=10 (default: %(default)s)")
    add("--connections", type=int, default=50, metavar="N",
        help="TCP connections in all, split across the workers (default: %(default)s)")
    add("--pipeline", type=int, default=1, metavar="DEPTH",
        help="requests in flight per connection at most; 1 means no pipelining (default: %(default)s)")
    add("--workers", type=int, default=1, metavar="N",
        help="load processes, each with its own uvloop loop (default: %(default)s)")
    add("--duration", type=float, default=10.0, metavar="SECONDS", help="measured time (default: %(default)s)")
    add("--warmup", type=float, default=1.0, metavar="SECONDS",
        help="time under load before measuring starts (default: %(default)s)")
    add("--rate", type=float, default=None, metavar="OPS_PER_S",
        help="open loop: start requests at this total rate, spread over the connections (default: closed loop)")
    add("--value-size", type=int, default=100, metavar="BYTES",
        help="value length, sent as msgpack bin, for PUT and for the preload (default: %(default)s)")
    add("--keys", type=int, default=10_000, metavar="N", help="distinct keys (default: %(default)s)")
    add("--distribution", choices=DISTRIBUTIONS, default="uniform",
        help="how requests pick keys; zipfian is YCSB's scrambled zipfian, theta 0.99 (default: %(default)s)")
    add("--consistency", choices=[level.value for level in Consistency], default=None,
        help="read consistency of GETs (default: the node's, quorum in a cluster)")
    add("--requests", "--max-requests", dest="max_requests", type=int, default=_DEFAULT_MAX_REQUESTS, metavar="N",
        help="stop after sending this many requests in all, warm-up included; the run ends then or after "
             "--duration, whichever comes first (default: %(default)s)")
    add("--server-pid", type=_pids, default=(), metavar="PID[,PID...]",
        help="node process(es) whose CPU time (/proc/PID/stat) to report per operation")
    add("-o", "--output", choices=["table", "json"], default="table", help="what to print (default: %(default)s)")
    add("--json", dest="output", action="store_const", const="json", help="same as -o json")
    add("--out", type=Path, default=None, metavar="DIR", help="also write the JSON result to a new file in DIR")
    add("--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar with live ops/s on stderr (default: when stderr is a terminal)")
    return parser


def _pids(text: str) -> tuple[int, ...]:
    try:
        return tuple(dict.fromkeys(int(pid) for pid in text.split(",") if pid))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of process ids") from None


def _report(result: dict) -> str:
    def ms(latency: dict, name: str) -> str:
        value = latency[name]
        return "-" if value is None else f"{value:.3f}"

    def percentiles(latency: dict) -> str:
        return "  ".join(f"{label} {ms(latency, name)}" for label, name in
                         (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"), ("max", "max")))

    rate = f"open loop at {result['rate']:g}/s" if result["rate"] else "closed loop"
    lines = [
        f"{result['workload'].upper()}, {result['connections']} connections, pipeline {result['pipeline']}, {rate}, "
        f"{result['workers']} worker(s), {result['value_size']}-byte values, {result['keys']} {result['distribution']} "
        f"keys, {result['duration']:g} s after {result['warmup']:g} s warm-up, against {','.join(result['endpoints'])}",
        f"  throughput   {result['ops_per_s']:,} ops/s ({result['ops']:,} ops)",
        f"  errors       {result['errors']:,}" + (f" {result['error_codes']}" if result["error_codes"] else ""),
        f"  latency ms   {percentiles(result['latency_ms'])}",
    ]
    if len(result["latency_ms_by_op"]) > 1:
        for op, latency in result["latency_ms_by_op"].items():
            lines.append(f"  {op:<12} {percentiles(latency)}")
    if result["not_found"]:
        lines.append(f"  not found    {result['not_found']:,} (answers, not errors)")
    if result["server_cpu_us_per_op"] is not None:
        lines.append(f"  server CPU   {result['server_cpu_us_per_op']} us/op, {result['server_cpu_cores']} cores")
    lines.append(f"  CPU          this generator {result['client_cpu_cores']} cores; "
                 f"whole machine {result['machine_cpu_cores']} of {result['cpu_count']} cores")
    if result["preload_s"] is not None:
        lines.append(f"  note         preloaded {result['keys']} keys in {result['preload_s']} s")
    if result["unanswered"] or result["connections_lost"]:
        lines.append(f"  note         {result['unanswered']} requests unanswered at the end, "
                     f"{result['connections_lost']} connections lost, {result['connect_failures']} reconnects refused")
    if result["late_unsent"]:
        lines.append(f"  note         the open loop fell behind: {result['late_unsent']:,} requests due were never sent; "
                     f"{result['ops_per_s']:,} of {result['rate']:g}/s reached (their latency is not in the figures)")
    if result["budget_exhausted"]:
        lines.append("  note         --requests reached" + (" in the warm-up" if not result["ops"] else ", stopped early"))
    return "\n".join(lines)


def save_result(result: dict, directory: Path) -> Path:
    """Write ``result`` as JSON to a new file in ``directory``, named by time and workload."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%dT%H%M%S") + f"-{result['workload'].replace('/', '-')}-c{result['connections']}-p{result['pipeline']}"
    path, n = directory / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None, prog: str = "python -m bench.load") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["suite"]:
        from bench.suite import main as suite_main

        return suite_main(argv[1:], prog=f"{prog} suite")
    parser = _parser(prog)
    args = parser.parse_args(argv)
    try:
        settings = Settings(
            endpoints=tuple(e for e in args.endpoints.split(",") if e), mix=parse_mix(args.mix),
            connections=args.connections, pipeline=args.pipeline, workers=args.workers, duration=args.duration,
            warmup=args.warmup, value_size=args.value_size, keys=args.keys, distribution=args.distribution,
            consistency=args.consistency, rate=args.rate, max_requests=args.max_requests, server_pids=args.server_pid,
        )
        for pid in settings.server_pids:
            if not os.path.exists(f"/proc/{pid}/stat"):
                raise ValueError(f"--server-pid {pid}: no such process")
        if args.out is not None:
            prepare_directory(args.out, "--out")
    except ValueError as exc:
        parser.error(str(exc))
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        result = run_load(settings, progress=progress)
    except (TimeoutError, OSError, RuntimeError) as exc:
        print(f"{prog}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.output == "json" else _report(result))
    if args.out is not None:
        print(f"{prog}: result written to {save_result(result, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
