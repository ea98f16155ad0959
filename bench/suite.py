"""``kvwire bench suite``: every scenario of the README's Performance section, in one run.

    kvwire bench suite --out bench/results

Each scenario starts what it needs on loopback (nodes, HAProxy, the bridge,
redis-server, etcd), runs its workloads one after another, and stops it. Every
figure lands in ``<out>/<date>/results.json`` and ``summary.md`` (with the
failover plot, ``failover.png``); nothing is carried over from an earlier run.
Peers whose programs are missing are skipped, and the summary says why.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from kvwire.bench import peers, wrk
from kvwire.bench.failover import DEFAULT_HAPROXY_CONFIG, FailoverSettings, run_failover
from kvwire.bench.interrupt import exit_interrupted, interrupted_by, stops_cleanly
from kvwire.bench.load import run_load
from kvwire.bench.native import build as build_native
from kvwire.bench.option_types import DirectoryPath
from kvwire.bench.output import prepare_directory
from kvwire.bench.plot import plot_failover
from kvwire.bench.settings import Settings
from kvwire.bench.summary import (
    IN_NODE_REST_SETUP,
    NATIVE_CLUSTER_SETUP,
    NATIVE_SETUP,
    STANDALONE_REST_SETUP,
    machine,
    write_summary,
)
from kvwire.bench.workload import mix_name, parse_mix
from kvwire.testing import LocalCluster, NodeProcess, wait_for
from kvwire.testing.balancer import HAProxyProcess
from kvwire.testing.bridge import BridgeProcess, rest_answers, with_http

SCENARIOS = {
    1: "one node",
    2: "three nodes, direct",
    3: "three nodes through HAProxy",
    4: "REST through the bridges",
    5: "failover timeline",
    6: "peers: redis-server and etcd",
}
ONE_NODE_MIXES = ("get", "put", "get=90,put=10")
ONE_NODE_SHAPES = ((1, 1), (1, 16), (50, 1), (50, 16))  # (connections, pipeline)
CLUSTER_WORKLOADS = (("put", None), ("get", None), ("get", "one"), ("get=90,put=10", None))
CONNECTIONS = 50


@dataclass(frozen=True)
class SuiteSettings:
    duration: float = 5.0
    warmup: float = 1.0
    value_size: int = 100
    keys: int = 10_000
    scenarios: tuple[int, ...] = tuple(SCENARIOS)
    failover: FailoverSettings = FailoverSettings()

    def __post_init__(self) -> None:
        if not 1 <= self.duration <= 120:
            raise ValueError(f"--duration must be 1-120 s, got {self.duration:g}")
        if not 0 <= self.warmup <= 30:
            raise ValueError(f"--warmup must be 0-30 s, got {self.warmup:g}")
        if not self.scenarios or set(self.scenarios) - set(SCENARIOS):
            raise ValueError(f"--scenarios must name some of {', '.join(map(str, SCENARIOS))}, "
                             f"got {','.join(map(str, self.scenarios))}")


def _cluster_generators(mix: str, consistency: str | None, native: bool) -> tuple[str, ...]:
    """The generators that load one workload of scenario 2, in the order they run.

    The quorum PUT and GET run from the compiled generator too, as wrk loads
    etcd: the Python generator's CPU shares these two cores. Each pair runs back
    to back, PUT Python first and GET compiled first (ABBA), so that the
    cluster's drift over the minutes it runs favours neither generator: rows a
    minute apart were seen to differ by as much as the generators do.
    """
    if not native or consistency is not None or mix not in ("put", "get"):
        return ("python",)
    return ("python", "native") if mix == "put" else ("native", "python")


class Suite:
    """Runs the scenarios, collecting one row per measured workload in ``rows``."""

    def __init__(self, settings: SuiteSettings, workdir: Path, results_dir: Path) -> None:
        self.settings, self.workdir, self.results_dir = settings, workdir, results_dir
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.failover: list[dict[str, Any]] = []

    def run(self) -> None:
        steps: dict[int, Callable[[], None]] = {
            1: self.one_node, 2: self.three_nodes, 3: self.three_nodes, 4: self.three_nodes,
            5: self.failover_timeline, 6: self.peers,
        }
        done: set[Callable[[], None]] = set()
        for number in self.settings.scenarios:
            step = steps[number]
            if step in done:  # 2, 3 and 4 share one cluster
                continue
            done.add(step)
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others' figures
                _say(f"scenario {number} failed: {type(exc).__name__}: {exc}")
                self.skipped.append({"scenario": number, "what": SCENARIOS[number], "why": f"failed: {exc}",
                                     "traceback": traceback.format_exc()})

    def native_ready(self, scenario: int, setup: str) -> bool:
        """Whether the compiled generator is built; if not (no C compiler), the
        Python generator's rows stand alone and the summary says why."""
        try:
            build_native()
        except RuntimeError as exc:
            self.skipped.append({"scenario": scenario, "what": setup, "why": str(exc)})
            return False
        return True

    # --- kvwire through its own generator ----------------------------------------------------

    def load(self, scenario: int, setup: str, endpoints: list[str], pids: tuple[int, ...], mix: str, *,
             connections: int = CONNECTIONS, pipeline: int = 1, consistency: str | None = None,
             generator: str = "python") -> None:
        s = self.settings
        settings = Settings(
            endpoints=tuple(endpoints), mix=parse_mix(mix), connections=connections, pipeline=pipeline,
            duration=s.duration, warmup=s.warmup, value_size=s.value_size, keys=s.keys, consistency=consistency,
            server_pids=pids, generator=generator,
        )
        workload = mix_name(settings.mix) + (f" ({consistency})" if consistency else "")
        _say(f"[{scenario}] {setup}: {workload}, {connections} connections, pipeline {pipeline}")
        result = run_load(settings)
        command = ["kvwire", "bench", "--endpoints", ",".join(endpoints), "--mix", mix, "--connections",
                   str(connections), "--pipeline", str(pipeline), "--duration", f"{s.duration:g}", "--warmup",
                   f"{s.warmup:g}", "--value-size", str(s.value_size), "--keys", str(s.keys)]
        if consistency:
            command += ["--consistency", consistency]
        if generator != "python":
            command += ["--generator", generator]
        self.add(scenario, setup, workload, result | {"tool": "kvwire bench", "command": shlex.join(command)})

    def add(self, scenario: int, setup: str, workload: str, result: dict[str, Any]) -> None:
        row = {"scenario": scenario, "setup": setup, "workload": workload} | {
            key: result.get(key) for key in (
                "tool", "command", "connections", "pipeline", "value_size", "ops_per_s", "errors", "error_codes",
                "latency_ms", "server_cpu_us_per_op", "server_cpu_cores", "machine_cpu_cores",
            )
        }
        self.rows.append(row)
        latency = row["latency_ms"] or {}
        _say(f"    {row['ops_per_s']:,.0f} ops/s, p99 {latency.get('p99')} ms, errors {row['errors']}, "
             f"server {row['server_cpu_us_per_op'] or 0:.1f} us/op")

    def one_node(self) -> None:
        with NodeProcess("n1", data_dir=self.workdir / "one-node") as node:
            for mix in ONE_NODE_MIXES:
                for connections, pipeline in ONE_NODE_SHAPES:
                    self.load(1, "one node", [node.address], (node.pid,), mix,
                              connections=connections, pipeline=pipeline)
        if not self.native_ready(1, NATIVE_SETUP):
            return
        # A fresh node, as each redis-server is fresh: not one that has just taken
        # the PUT workloads above, whose SQLite and cache state would carry over.
        with NodeProcess("n1", data_dir=self.workdir / "one-node-native") as node:
            for mix in ("get", "put"):
                self.load(1, NATIVE_SETUP, [node.address], (node.pid,), mix, generator="native")

    def three_nodes(self) -> None:
        wanted = set(self.settings.scenarios)
        cluster = LocalCluster(3, data_dir=self.workdir / "three-nodes")
        # n1 serves the REST API in its own process too, as `kvwire up` runs every node
        # and as etcd's gateway runs in its member: idle until scenario 4.
        in_node_url = with_http(cluster, "n1")["n1"] if 4 in wanted else None
        with cluster:
            cluster.wait_ready()
            pids = tuple(node.pid for node in cluster)
            if 2 in wanted:
                native = self.native_ready(2, NATIVE_CLUSTER_SETUP)
                for mix, consistency in CLUSTER_WORKLOADS:
                    for generator in _cluster_generators(mix, consistency, native):
                        setup = NATIVE_CLUSTER_SETUP if generator == "native" else "3 nodes, direct"
                        self.load(2, setup, cluster.endpoints, pids, mix, consistency=consistency, generator=generator)
            if 3 in wanted:
                with HAProxyProcess.for_cluster(DEFAULT_HAPROXY_CONFIG, cluster, workdir=self.workdir / "haproxy") as lb:
                    lb.wait_all("kvwire_nodes", "UP")
                    for mix, consistency in CLUSTER_WORKLOADS:
                        self.load(3, "3 nodes, HAProxy", [lb.tcp_address], pids, mix, consistency=consistency)
            if 4 in wanted:
                self.rest(cluster, pids, in_node_url)

    def rest(self, cluster: LocalCluster, pids: tuple[int, ...], in_node_url: str) -> None:
        problem = wrk.wrk_problem()
        if problem:
            self.skipped.append({"scenario": 4, "what": SCENARIOS[4], "why": problem})
            return
        log = self.workdir / "bridge.log"
        with BridgeProcess(cluster.endpoints, log_path=log) as bridge:
            bridge.wait_ready()
            self.rest_runs("a standalone bridge", STANDALONE_REST_SETUP, bridge.url, (bridge.pid, *pids))
        wait_for(lambda: rest_answers(in_node_url), timeout=15, what=f"n1's own bridge at {in_node_url}")
        self.rest_runs("n1's own bridge", IN_NODE_REST_SETUP, in_node_url, pids)

    def rest_runs(self, through: str, setup: str, url: str, pids: tuple[int, ...]) -> None:
        for op in ("get", "put"):
            _say(f"[4] REST through {through}: {op.upper()}, {CONNECTIONS} connections (wrk)")
            result = wrk.run_kvwire_rest(
                url, op, connections=CONNECTIONS, duration=round(self.settings.duration),
                value_size=self.settings.value_size, keys=self.settings.keys, server_pids=pids,
            )
            self.add(4, setup, op, result)

    # --- the failover timeline -----------------------------------------------------------------

    def failover_timeline(self) -> None:
        for via in ("client", "haproxy", "rest"):
            _say(f"[5] failover through the {via}: {self.settings.failover.rate:g} PUT/s open loop, "
                 f"kill -9 at {self.settings.failover.kill_at:g} s, restart at {self.settings.failover.restart_at:g} s")
            result = run_failover(via, self.settings.failover, self.workdir / f"failover-{via}", DEFAULT_HAPROXY_CONFIG)
            _say(f"    failed {result['failed']}, longest stall {result['longest_stall_s']:.3f} s, "
                 f"DOWN after {result['detect_down_s']} s")
            self.failover.append(result)
        plot_failover(self.failover, self.results_dir / "failover.png")

    # --- peers -----------------------------------------------------------------------------------

    def peers(self) -> None:
        available = peers.available_peers()
        s = self.settings
        duration = max(1, round(s.duration))
        if available["redis"]:
            self.skipped.append({"scenario": 6, "what": "redis-server", "why": available["redis"]})
        else:
            for persistence in ("none", "everysec"):
                with peers.RedisServer(self.workdir / f"redis-{persistence}", persistence) as server:
                    server.wait_ready()
                    for op in ("get", "set"):
                        for connections, pipeline in ONE_NODE_SHAPES:
                            setup = f"redis-server ({'no persistence' if persistence == 'none' else 'appendfsync everysec'})"
                            _say(f"[6] {setup}: {op.upper()}, {connections} connections, pipeline {pipeline}")
                            result = peers.run_redis_benchmark(
                                server, op, value_size=s.value_size, connections=connections, pipeline=pipeline,
                                duration=duration, keys=s.keys,
                            )
                            self.add(6, setup, op, result)
        for needed in ("etcd", "wrk"):
            if available[needed]:
                self.skipped.append({"scenario": 6, "what": "etcd", "why": available[needed]})
                return
        with peers.EtcdCluster(self.workdir / "etcd") as etcd:
            for op in ("put", "range"):
                _say(f"[6] etcd, 3 members, JSON gateway: {op}, {CONNECTIONS} connections (wrk)")
                result = peers.run_etcd(etcd, op, connections=CONNECTIONS, duration=duration,
                                        value_size=s.value_size, keys=s.keys)
                self.add(6, "etcd, 3 members (gateway)", op, result)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="kvwire-suite-") as scratch:
        yield Path(scratch)


@click.command()
@click.option("--out", type=DirectoryPath(), default=Path("bench/results"), show_default=True,
              metavar="DIR", help="Where results go: OUT/<date>/.")
@click.option("--duration", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="Measured time per workload, 1-120.")
@click.option("--warmup", type=float, default=1.0, show_default=True, metavar="SECONDS",
              help="Unmeasured time before each workload, 0-30.")
@click.option("--scenarios", default=",".join(map(str, SCENARIOS)), show_default=True, metavar="N[,N...]",
              help="Which scenarios to run.")
@click.option("--failover-rate", type=float, default=FailoverSettings.rate, show_default=True, metavar="OPS_PER_S",
              help="Open-loop PUT rate of the failover timeline.")
@click.option("--workdir", type=DirectoryPath(), default=None, metavar="DIR",
              help="Keep the data directories and logs here.  [default: a temporary directory, removed]")
@click.pass_context
@stops_cleanly()
def suite(ctx: click.Context, out: Path, duration: float, warmup: float, scenarios: str, failover_rate: float,
          workdir: Path | None) -> None:
    """Run every scenario of the README's Performance section.

    The scenarios: 1 one node, 2 three nodes direct, 3 through HAProxy, 4
    REST through a standalone bridge and through n1's own, 5 failover
    timeline, 6 redis-server and etcd side by side. Writes results.json, summary.md and failover.png to
    OUT/<date>/. Peers whose programs are missing are skipped, and the
    summary says why.

    Exit status: 0 when every scenario ran, 1 when one failed (the others'
    figures are still written), 2 for bad options, 128 + the signal on SIGINT
    or SIGTERM (130, 143): what was running is stopped, and the figures
    measured so far are written, marked interrupted.
    """
    started = time.time()
    try:
        try:
            numbers = tuple(sorted({int(part) for part in scenarios.split(",") if part.strip()}))
        except ValueError:
            raise ValueError(f"--scenarios must be numbers from 1 to {len(SCENARIOS)} separated by commas, "
                             f"got {scenarios!r}") from None
        try:
            failover = FailoverSettings(rate=failover_rate)
        except ValueError as exc:  # its message names --rate, the option of `bench failover`
            raise ValueError(str(exc).replace("--rate", "--failover-rate", 1)) from None
        settings = SuiteSettings(duration=duration, warmup=warmup, scenarios=numbers, failover=failover)
        # Neither is left behind when the other is refused: --workdir first, and taken
        # away again (if this run made it) when --out is refused.
        made_workdir = workdir is not None and not workdir.exists()
        if workdir is not None:
            prepare_directory(workdir, "--workdir")
        try:
            results_dir = prepare_directory(out / time.strftime("%Y-%m-%d", time.localtime(started)), "--out")
        except ValueError:
            if made_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    # An earlier run's plot of the day, beside this run's summary, would pass for this run's.
    (results_dir / "failover.png").unlink(missing_ok=True)
    interrupted: str | None = None
    with _workdir(workdir) as scratch:
        run = Suite(settings, scratch, results_dir)
        try:
            run.run()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (bench.interrupt): what ran is stopped by now
            interrupted = signal.Signals(interrupted_by()).name
    command = ["kvwire", "bench", "suite", "--out", str(out), "--duration", f"{duration:g}", "--warmup", f"{warmup:g}",
               "--scenarios", ",".join(map(str, numbers)), "--failover-rate", f"{failover_rate:g}"]
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "settings": {"duration": settings.duration, "warmup": settings.warmup, "value_size": settings.value_size,
                     "keys": settings.keys, "scenarios": list(settings.scenarios),
                     "failover_rate": settings.failover.rate},
        "machine": machine(),
        "command": shlex.join(command + (["--workdir", str(workdir)] if workdir is not None else [])),
        "rows": run.rows,
        "failover": run.failover,
        "skipped": run.skipped,
        "interrupted": interrupted,  # None, or the signal that cut the run short
    }
    (results_dir / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    write_summary(report, results_dir / "summary.md")
    written = f"{results_dir}/ (summary.md, results.json{', failover.png' if run.failover else ''})"
    if interrupted:
        exit_interrupted(ctx, f"the figures measured before it are in {written}")
    _say(f"results in {written}")
    if any(item["why"].startswith("failed") for item in run.skipped):
        sys.exit(1)
