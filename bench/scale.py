"""How one node's cost grows with its data: memory and start-up with many keys, and
throughput with large values (README "Performance", "Scale").

    kvwire bench scale --keys 1000000

What a run does is in the command's help, below.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace

import click
import uvloop

from kvwire.bench.interrupt import stops_cleanly
from kvwire.bench.load import run_load
from kvwire.bench.option_types import FloatRange
from kvwire.bench.output import measure_or_exit
from kvwire.bench.preload import preload
from kvwire.bench.settings import Settings
from kvwire.bench.workload import key_name
from kvwire.testing import NodeProcess

DEFAULT_VALUE_SIZES = (100, 10_000, 1_000_000)
# The node's start-up is timed from the process start to its first PING answer.
START_LIMIT_S = 120.0


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS in /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _settled_rss(pid: int) -> int:
    """RSS once it stops growing: the node's first tombstone pass (2 s after start)
    walks every key; take the figure after it."""
    time.sleep(2.5)
    return rss_bytes(pid)


def _timed_start(node: NodeProcess) -> float:
    started = time.monotonic()
    node.start()
    node.wait_ready(timeout=START_LIMIT_S)
    return time.monotonic() - started


def _key_bytes(keys: int) -> float:
    """What a key costs by itself in memory: its str object (sys.getsizeof), on average."""
    sample = range(0, keys, max(1, keys // 1000))
    return sum(sys.getsizeof(key_name(index)) for index in sample) / len(sample)


def scale_run(keys: int, value_sizes: tuple[int, ...], duration: float, connections: int, warmup: float = 1.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="kvwire-scale-") as root:
        node = NodeProcess("n1", data_dir=os.path.join(root, "n1"))
        try:
            empty_start_s = _timed_start(node)
            empty_rss = _settled_rss(node.pid)
            fill_s = uvloop.run(preload(Settings(endpoints=(node.address,), keys=keys, connections=4), os.urandom(100)))
            node.terminate()
            start_s = _timed_start(node)
            full_rss = _settled_rss(node.pid)
            settings = Settings(endpoints=(node.address,), keys=keys, connections=connections, duration=duration,
                                warmup=warmup, server_pids=(node.pid,))
            gets = run_load(replace(settings, mix={"get": 1}), preloaded=True)
            puts = run_load(replace(settings, mix={"put": 1}), preloaded=True)
            sizes = []
            for size in value_sizes:
                # Few keys, and at most about 4 MB in flight: the point is bytes per second.
                big = replace(settings, mix={"put": 1}, value_size=size, keys=100,
                              connections=min(connections, max(1, 4_000_000 // size)))
                result = run_load(big, preloaded=True)
                sizes.append({"value_size": size, "connections": big.connections, "ops_per_s": result["ops_per_s"],
                              "mb_per_s": round(result["ops_per_s"] * size / 1e6, 1), "errors": result["errors"],
                              "p99_ms": result["latency_ms"]["p99"]})
        finally:
            node.stop()
    per_key = (full_rss - empty_rss) / keys
    key_bytes = _key_bytes(keys)
    return {
        "keys": keys,
        "fill_s": round(fill_s, 1),
        "fill_puts_per_s": round(keys / fill_s) if fill_s else None,
        "empty_start_s": round(empty_start_s, 2),
        "start_s": round(start_s, 2),
        "rss_empty_mib": round(empty_rss / 2**20, 1),
        "rss_mib": round(full_rss / 2**20, 1),
        "bytes_per_key": round(per_key),
        "key_str_bytes": round(key_bytes),
        "bytes_per_key_beyond_key": round(per_key - key_bytes),
        "get": {"ops_per_s": gets["ops_per_s"], "p99_ms": gets["latency_ms"]["p99"], "errors": gets["errors"]},
        "put": {"ops_per_s": puts["ops_per_s"], "p99_ms": puts["latency_ms"]["p99"], "errors": puts["errors"]},
        "value_sizes": sizes,
    }


def _sizes(ctx: click.Context, param: click.Parameter, text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"must be sizes in bytes separated by commas, got {text!r}") from None
    if not sizes or any(not 1 <= size <= 1_000_000 for size in sizes):
        raise click.BadParameter(f"each size must be 1 to 1000000 bytes (the node's default value limit), got {text!r}")
    return sizes


@click.command("scale", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--keys", type=click.IntRange(1_000, 10_000_000), default=1_000_000, show_default=True,
              help="Keys the node holds while memory, start-up, GET and PUT are measured.")
@click.option("--value-sizes", default=",".join(map(str, DEFAULT_VALUE_SIZES)), show_default=True,
              callback=_sizes, help="Value sizes in bytes for the large-value PUT runs.")
@click.option("--duration", type=FloatRange(1, 120), default=5.0, show_default=True,
              help="Measured seconds of each load run, after the warm-up.")
@click.option("--warmup", type=FloatRange(0, 60), default=1.0, show_default=True,
              help="Seconds of load before each run's measured time.")
@click.option("--connections", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Connections of the GET and PUT runs (fewer for large values).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@stops_cleanly("its node was stopped and its data removed")
def scale(ctx: click.Context, keys: int, value_sizes: tuple[int, ...], duration: float, warmup: float,
          connections: int, as_json: bool) -> None:
    """Measure one node's memory, start-up and throughput with --keys keys, and PUT throughput with large values.

    Starts one node (defaults: --sync full) in a temporary directory and
    notes its memory empty. PUTs --keys keys of 100 bytes, restarts the
    node and times its start-up (to its first PING answer) with that data,
    then reads its memory again: the difference over --keys is the bytes per
    key, reported also without the key's own str object. Then measures GET
    and PUT throughput over those keys, and PUT throughput and MB/s for each
    of --value-sizes.

    Exit status: 0 when every run completed, 1 when one did not, 2 for bad options,
    128 + the signal on SIGINT or SIGTERM (its node is stopped first).
    """
    result = measure_or_exit(ctx, lambda: scale_run(keys, value_sizes, duration, connections, warmup), as_json)
    if result is None:
        return
    click.echo(
        f"{result['keys']:,} keys of 100 B: filled in {result['fill_s']} s ({result['fill_puts_per_s']:,} PUT/s); "
        f"start-up {result['start_s']} s (empty: {result['empty_start_s']} s)\n"
        f"memory: {result['rss_mib']} MiB ({result['rss_empty_mib']} MiB empty): {result['bytes_per_key']} B per key, "
        f"{result['bytes_per_key_beyond_key']} B beyond the key's own {result['key_str_bytes']} B str\n"
        f"GET {result['get']['ops_per_s']:,}/s (p99 {result['get']['p99_ms']:.2f} ms), "
        f"PUT {result['put']['ops_per_s']:,}/s (p99 {result['put']['p99_ms']:.2f} ms)")
    for size in result["value_sizes"]:
        click.echo(f"values of {size['value_size']:,} B: {size['ops_per_s']:,} PUT/s = {size['mb_per_s']} MB/s "
                   f"({size['connections']} connections, p99 {size['p99_ms']:.1f} ms, {size['errors']} errors)")
