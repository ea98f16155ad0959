"""How fast a 3-node cluster notices a dead or hung node, measured on real processes.

    kvwire bench detection --rounds 5

What a round measures is in the command's help, below.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click

from kvwire import Client
from kvwire.bench.interrupt import stops_cleanly
from kvwire.testing import LocalCluster

POLL_INTERVAL = 0.005
# How long a fresh cluster runs before the first fault: a peer that has just
# come UP is still heard off the heartbeat's beat for a moment (its first
# exchanges), which would time that moment rather than a cluster in service.
SETTLE = 1.0
# How long a killed node stays down before it is started again, as a supervisor
# would: long enough for its peers' redial backoff to reach its 1 s cap.
DOWN_FOR = 2.0


def _until(cluster: LocalCluster, observer: str, peer: str, healthy: bool, timeout: float = 10.0) -> float:
    started = time.monotonic()
    with Client([cluster[observer].address], timeout=2) as client:
        while True:
            nodes = {node["node_id"]: node["healthy"] for node in client.health()["cluster"]["nodes"]}
            if nodes[peer] is healthy:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{observer} did not see {peer} {'UP' if healthy else 'DOWN'} within {timeout} s")
            time.sleep(POLL_INTERVAL)


def measure_round(root: Path) -> dict[str, float]:
    with LocalCluster(3, data_dir=root) as cluster:
        time.sleep(SETTLE)
        cluster.kill("n3")
        killed = _until(cluster, "n1", "n3", healthy=False)
        time.sleep(DOWN_FOR)
        cluster.start("n3")
        restarted = _until(cluster, "n1", "n3", healthy=True)
        cluster.pause("n2")
        stopped = _until(cluster, "n1", "n2", healthy=False)
        cluster.resume("n2")
        resumed = _until(cluster, "n1", "n2", healthy=True)
    return {"kill_9_to_down_ms": killed * 1000, "restart_to_up_ms": restarted * 1000,
            "sigstop_to_down_ms": stopped * 1000, "sigcont_to_up_ms": resumed * 1000}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rounds", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Fresh clusters to measure, 1-100.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@stops_cleanly("its nodes were stopped and their data removed")
def detection(ctx: click.Context, rounds: int, as_json: bool) -> None:
    """How fast a 3-node cluster notices a dead or hung node.

    Each round starts a fresh cluster on 127.0.0.1-3, lets it run for a
    second, and times, from n1's HEALTH (polled every 5 ms): kill -9 of n3
    until n1 reports it DOWN;
    n3 started again 2 s later until n1 reports it UP (its process start
    included); SIGSTOP of n2 until DOWN; SIGCONT of n2 until UP again.
    Prints the median, min and max of each, in milliseconds.

    Exit status: 0 when every round completed, 1 when one could not (a node
    that did not start, a change not seen within 10 s), 2 for bad options,
    128 + the signal on SIGINT or SIGTERM (its nodes are stopped first).
    """
    measured = []
    try:
        for _ in range(rounds):
            with tempfile.TemporaryDirectory(prefix="kvwire-detection-") as root:
                measured.append(measure_round(Path(root)))
    except (OSError, RuntimeError) as exc:  # TimeoutError is an OSError
        click.echo(f"{ctx.command_path}: {type(exc).__name__}: {exc}", err=True)
        ctx.exit(1)
    summary = {
        name: {"median": round(statistics.median(r[name] for r in measured), 1),
               "min": round(min(r[name] for r in measured), 1), "max": round(max(r[name] for r in measured), 1)}
        for name in measured[0]
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for name, figures in summary.items():
            click.echo(f"{name:22} median {figures['median']:7.1f}  min {figures['min']:7.1f}  max {figures['max']:7.1f}")


if __name__ == "__main__":
    detection(prog_name="python -m kvwire.bench.detection")
