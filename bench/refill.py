"""How fast anti-entropy refills a node that lost its disk, and what clients get meanwhile
(README "Self-healing").

    kvwire bench refill --keys 100000

What a run does is in the command's help, below.
"""

from __future__ import annotations

import os
import tempfile
import threading
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
from kvwire.testing import LocalCluster, wait_for
from kvwire.testing.data import local_copies

# How long the refill may take before the run gives up.
REFILL_LIMIT_S = 600.0


def _keys_held(cluster: LocalCluster, node_id: str) -> int:
    try:
        return cluster.health(node_id)["keys"]
    except (OSError, RuntimeError):
        return -1  # busy or restarting: ask again


def _fill(settings: Settings, value_size: int, attempts: int = 5) -> None:
    """PUT every key, again if some PUTs failed: on two cores a long pipelined fill
    sees a few quorum writes time out (NO_QUORUM), and a PUT is safe to repeat."""
    for attempt in range(1, attempts + 1):
        try:
            uvloop.run(preload(settings, os.urandom(value_size)))
            return
        except RuntimeError:
            if attempt == attempts:
                raise


def refill_run(keys: int, value_size: int, duration: float, connections: int, node_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="kvwire-refill-") as root, \
            LocalCluster(3, data_dir=root, node_args=node_args) as cluster:
        load = Settings(endpoints=tuple(cluster.endpoints_of("n1", "n2")), mix={"get": 1, "put": 1}, keys=keys,
                        value_size=value_size, connections=connections, duration=duration, warmup=1.0,
                        server_pids=tuple(node.pid for node in cluster))
        # Two connections of 32 pipelined PUTs each: deeper, and on two cores some
        # quorum writes wait past the 1 s write timeout.
        fill = Settings(endpoints=tuple(cluster.endpoints), mix={"put": 1}, keys=keys, value_size=value_size,
                        connections=2)
        _fill(fill, value_size)
        wait_for(lambda: _keys_held(cluster, "n3") >= keys, timeout=120, what="n3 holding every key before the wipe")
        before = run_load(load, preloaded=True)

        cluster.wipe("n3")
        cluster["n3"].extra_args.append("--join")  # the documented way back from a lost disk
        cluster.start("n3")
        cluster.wait_ready("n3")
        started = time.monotonic()
        finished: list[float] = []

        def watch() -> None:
            deadline = started + REFILL_LIMIT_S
            while time.monotonic() < deadline:
                if _keys_held(cluster, "n3") >= keys:
                    finished.append(time.monotonic())
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        during = run_load(replace(load, server_pids=tuple(node.pid for node in cluster)), preloaded=True)
        watcher.join(REFILL_LIMIT_S)
        if not finished:
            raise RuntimeError(f"n3 did not hold all {keys} keys within {REFILL_LIMIT_S:g} s")
        refill_s = finished[0] - started
        held = local_copies(cluster["n3"].address, [key_name(index) for index in range(keys)])
        if len(held) != keys:
            raise RuntimeError(f"n3 reports {keys} keys but holds {len(held)} of the {keys} written")
    return {
        "keys": keys,
        "value_size": value_size,
        "refill_s": round(refill_s, 2),
        "keys_per_s": round(keys / refill_s),
        "load_overlapped_s": round(min(refill_s, 1.0 + duration), 2),
        "before": {"ops_per_s": before["ops_per_s"], "p99_ms": before["latency_ms"]["p99"], "errors": before["errors"]},
        "during": {"ops_per_s": during["ops_per_s"], "p99_ms": during["latency_ms"]["p99"], "errors": during["errors"]},
        "during_over_before": round(during["ops_per_s"] / before["ops_per_s"], 3) if before["ops_per_s"] else None,
    }


@click.command("refill", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--keys", type=click.IntRange(100, 1_000_000), default=100_000, show_default=True,
              help="Keys written before n3's data directory is deleted.")
@click.option("--value-size", type=click.IntRange(1, 100_000), default=100, show_default=True, help="Bytes per value.")
@click.option("--duration", type=FloatRange(1, 300), default=10.0, show_default=True,
              help="Measured seconds of each client load (before, and from n3's restart), after 1 s of warm-up.")
@click.option("--connections", type=click.IntRange(1, 1000), default=16, show_default=True,
              help="Connections of the client load, spread over n1 and n2.")
@click.option("--repair-rate", type=click.IntRange(min=1), default=None,
              help="The nodes' --repair-rate (default: theirs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@stops_cleanly("its nodes were stopped and their data removed")
def refill(ctx: click.Context, keys: int, value_size: int, duration: float, connections: int,
           repair_rate: int | None, as_json: bool) -> None:
    """Time anti-entropy's refill of a node that lost its disk, under client load.

    Starts a 3-node cluster on 127.0.0.1-3 (default --sync full), PUTs --keys
    keys, and measures a 50/50 GET/PUT client load on n1 and n2 over those keys.
    Then kills n3, deletes its data directory, starts it empty under the same
    id with --join, and runs the same load again from that moment while timing
    how long n3 takes to hold every key again. Nothing reads n3, so only anti-entropy (and
    the load's own PUTs) can refill it; every key is checked on n3 at the end.

    Exit status: 0 when the refill completed, 1 when it did not, 2 for bad options,
    128 + the signal on SIGINT or SIGTERM (its nodes are stopped first).
    """
    node_args = [] if repair_rate is None else ["--repair-rate", str(repair_rate)]
    result = measure_or_exit(ctx, lambda: refill_run(keys, value_size, duration, connections, node_args), as_json)
    if result is None:
        return
    click.echo(
        f"refill of {result['keys']:,} keys of {result['value_size']} B: {result['refill_s']} s "
        f"({result['keys_per_s']:,} keys/s)\n"
        f"client load (GET/PUT 50/50 on n1, n2): before {result['before']['ops_per_s']:,} ops/s "
        f"(p99 {result['before']['p99_ms']:.1f} ms, {result['before']['errors']} errors), during "
        f"{result['during']['ops_per_s']:,} ops/s (p99 {result['during']['p99_ms']:.1f} ms, "
        f"{result['during']['errors']} errors): {result['during_over_before']}x; the load overlapped the refill "
        f"for {result['load_overlapped_s']} s")
