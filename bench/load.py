"""A lean closed-loop load generator for kvwire nodes.

    python -m bench.load --endpoint 127.0.0.1:7379 --op get --connections 50 --duration 10

Each worker process runs one uvloop loop holding its share of the connections
(``bench.load_connection``); each connection keeps ``--pipeline`` requests in
flight and sends the next as soon as a reply comes back. This module checks the
options, starts the workers together, and merges and reports what they measured.

The generator shares the machine with the node, so it reports its own CPU and
the whole machine's next to the node's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import uvloop

from bench.load_connection import DRAIN_TIMEOUT_S, READY_TIMEOUT_S, preload, request_frames, worker_main
from kvwire.protocol import parse_host_port

# Latencies are kept as float32 until the run ends, 4 bytes a request, so the
# default cap bounds the memory of all workers together to about 80 MB.
_DEFAULT_MAX_REQUESTS = 20_000_000
_MAX_FRAME_TABLE_BYTES = 512 * 1024 * 1024
_PERCENTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p999": 0.999}


@dataclass(frozen=True)
class Settings:
    endpoints: tuple[str, ...] = ("127.0.0.1:7379",)
    op: str = "get"
    connections: int = 50
    pipeline: int = 1
    workers: int = 1
    duration: float = 10.0
    warmup: float = 1.0
    value_size: int = 100
    keys: int = 10_000
    max_requests: int = _DEFAULT_MAX_REQUESTS
    server_pids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("give at least one --endpoint")
        for endpoint in self.endpoints:
            parse_host_port(endpoint)  # its ValueError quotes the input
        if self.op not in ("get", "put"):
            raise ValueError(f"--op must be get or put, got {self.op!r}")
        if not 1 <= self.workers <= 64 or not self.workers <= self.connections <= 10_000:
            raise ValueError("--workers must be 1-64, and --connections between --workers and 10000")
        if not 1 <= self.pipeline <= 1024:
            raise ValueError(f"--pipeline must be 1-1024, got {self.pipeline}")
        if not 0 < self.duration <= 3600 or not 0 <= self.warmup <= 600:
            raise ValueError("--duration must be in (0, 3600] seconds and --warmup in [0, 600]")
        if self.value_size < 0 or self.max_requests < self.workers:
            raise ValueError("--value-size must be at least 0 and --max-requests at least --workers")
        # Half the key space free on each connection keeps picking a key not in flight quick.
        if not 2 * self.pipeline <= self.keys <= 10_000_000:
            raise ValueError(f"--keys must be at least 2 x --pipeline ({2 * self.pipeline}) and at most 10000000")
        if self.keys * (self.value_size + 64) > _MAX_FRAME_TABLE_BYTES:
            raise ValueError("--keys x --value-size exceeds 512 MiB of precomputed frames; lower one of them")



# --- the run as a whole ----------------------------------------------------------------


def run_load(settings: Settings) -> dict:
    """Preload if the run reads, run the workers, and merge what they measured."""
    value = os.urandom(settings.value_size)
    preload_s = uvloop.run(preload(settings, value)) if settings.op == "get" else None
    frames = request_frames(settings.op, settings.keys, value)  # built once, shared with the workers by fork
    context = multiprocessing.get_context("fork")
    workers = []
    try:
        for index in range(settings.workers):
            share = settings.connections // settings.workers + (index < settings.connections % settings.workers)
            parent_end, child_end = context.Pipe()
            process = context.Process(target=worker_main, args=(settings, index, share, child_end, frames), daemon=True)
            process.start()
            child_end.close()
            workers.append((process, parent_end))
        for _, pipe in workers:
            _receive(pipe, "ready", READY_TIMEOUT_S)
        t0 = time.monotonic() + 0.05
        for _, pipe in workers:
            pipe.send(("go", t0))
        time.sleep(max(0.0, t0 + settings.warmup - time.monotonic()))
        cpu_before = (_cpu_seconds(settings.server_pids), _machine_busy_seconds())
        time.sleep(max(0.0, t0 + settings.warmup + settings.duration - time.monotonic()))
        cpu_after = (_cpu_seconds(settings.server_pids), _machine_busy_seconds())
        results = [_receive(pipe, "result", 10 + DRAIN_TIMEOUT_S) for _, pipe in workers]
    finally:
        for process, pipe in workers:
            pipe.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    server_cpu_s = None if cpu_before[0] is None else cpu_after[0] - cpu_before[0]
    return _merge(settings, results, server_cpu_s, cpu_after[1] - cpu_before[1], preload_s)


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


def _cpu_seconds(pids: tuple[int, ...]) -> float | None:
    """User plus system CPU time of ``pids``, all their threads, from /proc/PID/stat."""
    if not pids:
        return None
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 in proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU time of all cores outside idle and iowait: shows whether anything else shared the machine."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:9]]  # user .. steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _merge(settings: Settings, results: list[dict], server_cpu_s: float | None, machine_cpu_s: float,
           preload_s: float | None) -> dict:
    histogram: dict[int, int] = {}
    error_codes: dict[str, int] = {}
    for result in results:
        for micros, count in result["histogram"].items():
            histogram[micros] = histogram.get(micros, 0) + count
        for code, count in result["error_codes"].items():
            error_codes[code] = error_codes.get(code, 0) + count
    ops = sum(r["ops"] for r in results)
    latency_ms = dict.fromkeys([*_PERCENTILES, "max"])
    buckets = sorted(histogram.items())
    for name, fraction in _PERCENTILES.items():
        seen = 0
        for micros, count in buckets:
            seen += count
            if seen >= fraction * ops:
                latency_ms[name] = micros / 1000
                break
    if buckets:
        latency_ms["max"] = buckets[-1][0] / 1000

    def per_second(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds / settings.duration, 2)

    summary = {key: value for key, value in asdict(settings).items() if key != "server_pids"}
    return summary | {
        "endpoints": list(settings.endpoints),
        "ops": ops,
        "ops_per_s": round(sum(r["ops"] / r["window_s"] for r in results if r["window_s"] > 0)),
        "errors": sum(r["errors"] for r in results),
        "error_codes": error_codes,
        "latency_ms": latency_ms,
        "server_cpu_us_per_op": round(server_cpu_s * 1e6 / ops, 2) if server_cpu_s is not None and ops else None,
        "server_cpu_cores": per_second(server_cpu_s),
        "client_cpu_cores": per_second(sum(r["client_cpu_s"] for r in results)),
        "machine_cpu_cores": per_second(machine_cpu_s),
        "cpu_count": os.cpu_count(),
        "unanswered": sum(r["unanswered"] for r in results),
        "connections_lost": sum(r["connections_lost"] for r in results),
        "budget_exhausted": any(r["budget_exhausted"] for r in results),
        "preload_s": None if preload_s is None else round(preload_s, 2),
    }


# --- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Closed-loop load against kvwire nodes. Each connection keeps --pipeline requests in flight\n"
            "for --duration seconds, after --warmup seconds that are not counted; a GET run first PUTs\n"
            "every key once. Prints throughput, errors, latency percentiles and, with --server-pid, the\n"
            "node's CPU time per operation."
        ),
        epilog=(
            "example, against a node started with `kvwire serve` whose process id is PID:\n"
            "  python -m bench.load --endpoint 127.0.0.1:7379 --op get --connections 50 --server-pid PID\n\n"
            "exit status: 0 when the run completed (error replies are counted, not fatal),\n"
            "1 when it could not run (refused connection, failed preload), 2 for bad options."
        ),
    )
    add = parser.add_argument
    add("--endpoint", "--endpoints", dest="endpoints", default="127.0.0.1:7379", metavar="HOST:PORT[,...]",
        help="node(s) to load; connections are spread over them round-robin (default: %(default)s)")
    add("--op", choices=["get", "put"], default="get", help="request type (default: %(default)s)")
    add("--connections", type=int, default=50, metavar="N",
        help="TCP connections in all, split across the workers (default: %(default)s)")
    add("--pipeline", type=int, default=1, metavar="DEPTH",
        help="requests in flight per connection; 1 means no pipelining (default: %(default)s)")
    add("--workers", type=int, default=1, metavar="N",
        help="load processes, each with its own uvloop loop (default: %(default)s)")
    add("--duration", type=float, default=10.0, metavar="SECONDS", help="measured time (default: %(default)s)")
    add("--warmup", type=float, default=1.0, metavar="SECONDS",
        help="time under load before measuring starts (default: %(default)s)")
    add("--value-size", type=int, default=100, metavar="BYTES",
        help="value length, sent as msgpack bin, for PUT and for the GET preload (default: %(default)s)")
    add("--keys", type=int, default=10_000, metavar="N",
        help="distinct keys; each request picks one uniformly at random (default: %(default)s)")
    add("--max-requests", type=int, default=_DEFAULT_MAX_REQUESTS, metavar="N",
        help="stop sending after this many requests in all; bounds memory and run length (default: %(default)s)")
    add("--server-pid", type=_pids, default=(), metavar="PID[,PID...]",
        help="node process(es) whose CPU time (/proc/PID/stat) to report per operation")
    add("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


def _pids(text: str) -> tuple[int, ...]:
    try:
        return tuple(dict.fromkeys(int(pid) for pid in text.split(",") if pid))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of process ids") from None


def _report(result: dict) -> str:
    def ms(name: str) -> str:
        value = result["latency_ms"][name]
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"{result['op'].upper()}, {result['connections']} connections, pipeline {result['pipeline']}, "
        f"{result['workers']} worker(s), {result['value_size']}-byte values, {result['keys']} keys, "
        f"{result['duration']:g} s after {result['warmup']:g} s warm-up, against {','.join(result['endpoints'])}",
        f"  throughput   {result['ops_per_s']:,} ops/s ({result['ops']:,} ops)",
        f"  errors       {result['errors']:,}" + (f" {result['error_codes']}" if result["error_codes"] else ""),
        f"  latency ms   p50 {ms('p50')}  p90 {ms('p90')}  p99 {ms('p99')}  p99.9 {ms('p999')}  max {ms('max')}",
    ]
    if result["server_cpu_us_per_op"] is not None:
        lines.append(f"  server CPU   {result['server_cpu_us_per_op']} us/op, {result['server_cpu_cores']} cores")
    lines.append(f"  CPU          this generator {result['client_cpu_cores']} cores; "
                 f"whole machine {result['machine_cpu_cores']} of {result['cpu_count']} cores")
    if result["preload_s"] is not None:
        lines.append(f"  note         preloaded {result['keys']} keys in {result['preload_s']} s")
    if result["unanswered"] or result["connections_lost"]:
        lines.append(f"  note         {result['unanswered']} requests unanswered at the end, "
                     f"{result['connections_lost']} connections lost")
    if result["budget_exhausted"]:
        lines.append("  note         --max-requests reached" + (" in the warm-up" if not result["ops"] else ", stopped early"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings(
            endpoints=tuple(e for e in args.endpoints.split(",") if e), op=args.op, connections=args.connections,
            pipeline=args.pipeline, workers=args.workers, duration=args.duration, warmup=args.warmup,
            value_size=args.value_size, keys=args.keys, max_requests=args.max_requests,
            server_pids=args.server_pid,
        )
        for pid in settings.server_pids:
            if not os.path.exists(f"/proc/{pid}/stat"):
                raise ValueError(f"--server-pid {pid}: no such process")
    except ValueError as exc:
        parser.error(str(exc))
    try:
        result = run_load(settings)
    except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
        print(f"bench.load: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else _report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
