"""How fast a 3-node cluster notices a dead or hung node, measured on real processes.

    python -m bench.detection --rounds 5

Each round starts a fresh LocalCluster on 127.0.0.1-3 and times, from n1's
HEALTH (polled every 5 ms):
- kill -9 of n3 until n1 reports it DOWN;
- SIGSTOP of n2 until n1 reports it DOWN;
- SIGCONT of n2 until n1 reports it UP again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kvwire import Client
from kvwire.testing import LocalCluster

POLL_INTERVAL = 0.005


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
        cluster.kill("n3")
        killed = _until(cluster, "n1", "n3", healthy=False)
        cluster.pause("n2")
        stopped = _until(cluster, "n1", "n2", healthy=False)
        cluster.resume("n2")
        resumed = _until(cluster, "n1", "n2", healthy=True)
    return {"kill_9_to_down_ms": killed * 1000, "sigstop_to_down_ms": stopped * 1000, "sigcont_to_up_ms": resumed * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh clusters to measure (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be from 1 to 100")
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="kvwire-detection-") as root:
            rounds.append(measure_round(Path(root)))
    summary = {
        name: {"median": round(statistics.median(r[name] for r in rounds), 1),
               "min": round(min(r[name] for r in rounds), 1), "max": round(max(r[name] for r in rounds), 1)}
        for name in rounds[0]
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for name, figures in summary.items():
            print(f"{name:22} median {figures['median']:7.1f}  min {figures['min']:7.1f}  max {figures['max']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
