"""Scenario 5, the failover timeline: a fixed-rate PUT load while one node is killed and restarted.

    kvwire bench failover --via all --out results/

Each run starts its own 3-node LocalCluster (and, through HAProxy, haproxy
with haproxy/kvwire.cfg), then sends PUTs open loop, through one of:

- client: the kvwire client given all three nodes;
- haproxy: HAProxy's TCP frontend, one connection;
- rest: HAProxy's HTTP frontend in front of the nodes' in-process bridges
  (``--http-listen``), over HTTP keep-alive; the victim is n1 (every bridge
  serves the load, balanced round robin).

Every request is its own
task started at the time ``bench.recorder.Schedule`` gives it, and its latency
counts from that time, so a stall shows as latency or errors rather than as a
pause in sending. At ``kill_at`` the node serving the load gets kill -9, at
``restart_at`` it is started again. Both survivors' HEALTH is polled every
5 ms from the kill on. The figures:

- detect_down_s: kill to the later survivor reporting it DOWN;
- up_s: restart to the later survivor reporting it UP;
- caught_up_s: restart to the first poll, once it is UP for both, where both
  report 0 pending hints for it and it answers a consistency=one GET of the
  last write acknowledged before that with that version or a later one (a
  later one: the key may have been written again since);
- stale_keys_after_run: keys whose last acknowledged version it still lacks
  after the run, checked one by one (should be 0).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import click
import uvloop

from kvwire.bench.cpu import machine_busy_seconds
from kvwire.bench.interrupt import stops_cleanly
from kvwire.bench.option_types import DirectoryPath
from kvwire.bench.output import prepare_directory
from kvwire.bench.plot import failover_table, plot_failover
from kvwire.bench.recorder import LatencyRecorder, Schedule, Timeline
from kvwire.bench.workload import key_name
from kvwire.client import AsyncClient, KvwireError, RetryPolicy, Version
from kvwire.testing import LocalCluster
from kvwire.testing.balancer import HAProxyProcess
from kvwire.testing.bridge import REST_PREFIX, with_http

VIAS = ("haproxy", "client", "rest")
# This checkout's haproxy/kvwire.cfg, else the copy `pip install .` put in <prefix>/share/kvwire.
DEFAULT_HAPROXY_CONFIG = next(
    (path for path in (Path(__file__).resolve().parent.parent / "haproxy" / "kvwire.cfg",
                       Path(sys.prefix) / "share" / "kvwire" / "haproxy" / "kvwire.cfg") if path.is_file()),
    Path("haproxy/kvwire.cfg"),
)
# HEALTH is answered from the node's event loop in well under 1 ms, so 5 ms
# polling resolves detection (0.5 s failure timeout) to about 1 %.
POLL_INTERVAL_S = 0.005
PROBE_TIMEOUT_S = 0.5
# After the load stops, how long hint replay may still take before caught_up_s is None.
CATCH_UP_GRACE_S = 5.0
# Through HAProxy the client must not hide errors: one try, one endpoint (the
# frontend); a later request simply reconnects, and HAProxy picks a live node.
HAPROXY_RETRY = RetryPolicy(attempts=1, cooldown=0.0)
# The watch's own calls: one try each, so a dead node costs one poll, not a backoff.
_PROBE: dict[str, Any] = {
    "timeout": PROBE_TIMEOUT_S, "retry": RetryPolicy(attempts=1, attempt_timeout=PROBE_TIMEOUT_S, cooldown=0.0),
}


@dataclass(frozen=True)
class FailoverSettings:
    rate: float = 1000.0
    duration: float = 20.0
    kill_at: float = 5.0
    restart_at: float = 15.0
    value_size: int = 100
    keys: int = 1000
    interval: float = 0.1
    # Requests past this many in flight are not sent but counted as "overload"
    # errors: at 1,000/s that is a full second of backlog, a failure already,
    # and queueing them would only make the driver's memory the limit.
    max_in_flight: int = 1000
    # Each PUT's deadline, failover included (the client's default).
    timeout: float = 5.0
    # The nodes' --sync; None keeps theirs ("full": an fsync per group commit).
    sync: str | None = None

    def __post_init__(self) -> None:
        # Each message names the field as the command line does (--kill-at for kill_at).
        ranges = {"rate": (0, 50_000), "duration": (0, 3600), "interval": (0, self.duration), "timeout": (0, 60)}
        for name, (low, high) in ranges.items():
            if not low < getattr(self, name) <= high:  # false for nan too
                raise ValueError(f"{_option(name)} must be in ({low}, {high:g}], got {getattr(self, name)}")
        if not 0 < self.kill_at < self.restart_at < self.duration:
            raise ValueError(f"need 0 < --kill-at < --restart-at < --duration, got --kill-at {self.kill_at:g}, "
                             f"--restart-at {self.restart_at:g}, --duration {self.duration:g}")
        for name, (low, high) in {"value_size": (0, 1 << 20), "keys": (1, 10**6), "max_in_flight": (1, 10**5)}.items():
            if type(getattr(self, name)) is not int or not low <= getattr(self, name) <= high:
                raise ValueError(f"{_option(name)} must be a whole number from {low} to {high}, got {getattr(self, name)!r}")
        if self.sync not in (None, "off", "normal", "full"):
            raise ValueError(f"--sync must be off, normal or full, got {self.sync!r}")


def _option(field_name: str) -> str:
    """``kill_at`` -> ``--kill-at``: the command-line option of a FailoverSettings field."""
    return "--" + field_name.replace("_", "-")


@dataclass
class Events:
    """Monotonic times of what happened to the victim; None until seen."""

    start: float
    killed: float | None = None
    restarted: float | None = None
    down_by: dict[str, float] = field(default_factory=dict)  # survivor -> first poll showing it DOWN
    up_by: dict[str, float] = field(default_factory=dict)  # survivor -> first poll showing it UP after the restart
    answered: float | None = None  # the restarted node's first reply
    caught_up: float | None = None


def event_figures(events: Events, survivors: list[str]) -> dict[str, Any]:
    """Seconds from the kill to DOWN and from the restart to UP (in every survivor's view) and to caught up."""

    def after(origin: float | None, seen: dict[str, float] | float | None) -> float | None:
        if isinstance(seen, dict):
            seen = max(seen.values()) if seen and all(s in seen for s in survivors) else None
        return None if origin is None or seen is None else round(seen - origin, 4)

    return {
        "kill_at": after(events.start, events.killed),
        "restart_at": after(events.start, events.restarted),
        "detect_down_s": after(events.killed, events.down_by),
        "up_s": after(events.restarted, events.up_by),
        "answers_s": after(events.restarted, events.answered),
        "caught_up_s": after(events.restarted, events.caught_up),
        "detect_down_by": {s: after(events.killed, t) for s, t in sorted(events.down_by.items())},
        "up_by": {s: after(events.restarted, t) for s, t in sorted(events.up_by.items())},
    }


class FailoverRun:
    """One run: the open-loop load, the kill and restart, the watch on the survivors, the summary."""

    def __init__(self, via: str, settings: FailoverSettings, cluster: LocalCluster, endpoints: list[str]) -> None:
        self.via, self.settings, self.cluster = via, settings, cluster
        retry = HAPROXY_RETRY if via == "haproxy" else RetryPolicy()
        self.client = AsyncClient(endpoints, timeout=settings.timeout, retry=retry)
        self.value = bytes(settings.value_size)
        self.recorder = LatencyRecorder()
        self.error_codes: dict[str, int] = {}
        self.error_samples: dict[str, str] = {}  # code -> its first message, to tell causes apart
        self.in_flight: set[asyncio.Task] = set()
        self.acknowledged: dict[str, Version] = {}  # key -> highest version acknowledged
        self.last_ack: tuple[str, Version] | None = None
        self.sent = 0
        self.crash: BaseException | None = None

    async def run(self) -> dict[str, Any]:
        settings = self.settings
        async with self.client:
            self.victim = await self._serving_node()
            self.survivors = [n for n in self.cluster.node_ids if n != self.victim]
            self.victim_client = AsyncClient([self.cluster[self.victim].address], **_PROBE)
            cpu_before = (machine_busy_seconds(), time.process_time())
            start = time.monotonic() + 0.05
            self.schedule = Schedule(settings.rate, start)
            self.timeline = Timeline(start, settings.interval)
            self.events = Events(start)
            self.end = start + settings.duration
            watcher = asyncio.create_task(self._watch())
            faults = asyncio.create_task(self._inject_faults())
            await self._load()
            drain_deadline = self.end + settings.timeout + 1.0
            if self.in_flight:
                await asyncio.wait(set(self.in_flight), timeout=max(0.0, drain_deadline - time.monotonic()))
            for task in list(self.in_flight):  # bounded: whatever outlived its own timeout
                task.cancel()
                self._error("unfinished", time.monotonic())
            finished = time.monotonic()
            # The machine is shared (2 cores here): say how busy it was, and how much of that was us.
            self.cpu_cores = {
                "machine": round((machine_busy_seconds() - cpu_before[0]) / (finished - start), 2),
                "driver": round((time.process_time() - cpu_before[1]) / (finished - start), 2),
                "available": os.cpu_count(),
            }
            await faults
            await watcher
            stale = await self._stale_keys()
        if self.crash is not None:
            raise RuntimeError(f"the load driver failed: {self.crash!r}") from self.crash
        return self._result(max(finished, self.end), stale)

    async def _serving_node(self) -> str:
        """Connects, and names the node serving the load: through HAProxy the
        one connection's node, through the client its first endpoint."""
        return (await self.client.health())["node_id"]

    # --- the load ---------------------------------------------------------------------

    async def _load(self) -> None:
        schedule = self.schedule
        # Every start in [start, end), even if the loop wakes after the end: a late driver must not drop requests.
        total = math.ceil(self.settings.duration * self.settings.rate - 1e-9)
        while schedule.taken < total:
            for _ in range(min(schedule.due(time.monotonic()), total - schedule.taken)):
                intended = schedule.take()
                if len(self.in_flight) >= self.settings.max_in_flight:
                    self._error("overload", intended)
                    continue
                task = asyncio.create_task(self._put(self.sent % self.settings.keys, intended))
                self.in_flight.add(task)
                task.add_done_callback(self._done)
                self.sent += 1
            await _sleep_until(schedule.next_start())

    async def _put(self, index: int, intended: float) -> None:
        key = key_name(index)
        try:
            version = await self.client.put(key, self.value)
        except KvwireError as exc:  # counted, not raised: failures are what we measure
            self._error(type(exc).__name__, time.monotonic(), str(exc))
            return
        self._acknowledge(key, version, intended)

    def _acknowledge(self, key: str, version: Version, intended: float) -> None:
        completed = time.monotonic()
        self.recorder.record(intended, completed)
        self.timeline.success(intended, completed)
        if key not in self.acknowledged or version > self.acknowledged[key]:
            self.acknowledged[key] = version
        self.last_ack = (key, version)

    def _done(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.crash = self.crash or task.exception()  # a bug here, not a failed request

    def _error(self, code: str, when: float, message: str = "") -> None:
        self.error_codes[code] = self.error_codes.get(code, 0) + 1
        self.error_samples.setdefault(code, message[:300])
        self.timeline.error(when)

    # --- the fault and its detection --------------------------------------------------

    async def _inject_faults(self) -> None:
        await _sleep_until(self.events.start + self.settings.kill_at)
        self.events.killed = time.monotonic()
        await asyncio.to_thread(self.cluster.kill, self.victim)  # SIGKILL, then reap: off the loop
        await _sleep_until(self.events.start + self.settings.restart_at)
        self.events.restarted = time.monotonic()
        await asyncio.to_thread(self.cluster.start, self.victim)

    async def _watch(self) -> None:
        """Poll the survivors' HEALTH (and the victim once restarted) until it has caught up."""
        events, victim = self.events, self.victim
        survivors = {s: AsyncClient([self.cluster[s].address], **_PROBE) for s in self.survivors}
        target: tuple[str, Version] | None = None  # the last write acknowledged before it was UP everywhere
        deadline = self.end + CATCH_UP_GRACE_S
        await _sleep_until(events.start + self.settings.kill_at)
        try:
            while time.monotonic() < deadline and events.caught_up is None:
                replies = await asyncio.gather(*(c.health() for c in survivors.values()), return_exceptions=True)
                seen = time.monotonic()
                entries = {s: _peer_entry(reply, victim) for s, reply in zip(survivors, replies)}
                for survivor, entry in entries.items():
                    if entry is not None and not entry["healthy"]:
                        events.down_by.setdefault(survivor, seen)
                    # UP only counts once DOWN was seen, so a restart before detection isn't "instantly UP".
                    if entry is not None and entry["healthy"] and survivor in events.down_by and events.restarted:
                        events.up_by.setdefault(survivor, seen)
                if events.restarted is not None:
                    up_everywhere = len(events.up_by) == len(survivors)
                    if up_everywhere and target is None:
                        target = self.last_ack
                    no_hints = all(e is not None and e.get("pending_hints") == 0 for e in entries.values())
                    if await self._victim_holds(target if up_everywhere else None) and no_hints:
                        events.caught_up = time.monotonic()
                await asyncio.sleep(POLL_INTERVAL_S)
        finally:
            await asyncio.gather(*(c.close() for c in survivors.values()))

    async def _victim_holds(self, target: tuple[str, Version] | None) -> bool:
        """Whether the restarted node answers and, given a target write, holds it or a later version."""
        try:
            if target is None:
                await self.victim_client.ping()
            else:
                _, version = await self.victim_client.get_with_version(target[0], consistency="one")
        except KvwireError:  # still starting, or the key not there yet
            return False
        self.events.answered = self.events.answered or time.monotonic()
        return target is not None and version >= target[1]

    async def _stale_keys(self) -> int | None:
        # A write is acknowledged by a majority, so its copy to the third node
        # may land a moment later: stale keys are checked again for up to a second.
        if self.events.caught_up is None:
            await self.victim_client.close()
            return None
        async with self.victim_client as client:
            async def stale(key: str) -> bool:
                try:
                    _, version = await client.get_with_version(key, consistency="one", timeout=2.0)
                except KvwireError:
                    return True
                return version < self.acknowledged[key]

            keys = list(self.acknowledged)
            for pause in (0.0, 0.2, 0.8):
                await asyncio.sleep(pause)
                keys = [key for key, behind in zip(keys, await asyncio.gather(*map(stale, keys))) if behind]
                if not keys:
                    break
        return len(keys)

    # --- the summary ------------------------------------------------------------------

    def _result(self, until: float, stale: int | None) -> dict[str, Any]:
        return {
            "via": self.via, "settings": asdict(self.settings), "killed": self.victim, "survivors": self.survivors,
            "requests": self.schedule.taken, "ok": len(self.recorder), "failed": sum(self.error_codes.values()),
            "error_codes": dict(sorted(self.error_codes.items())),
            "error_samples": dict(sorted(self.error_samples.items())),
            "longest_stall_s": round(self.timeline.longest_stall(self.end), 4),
            **event_figures(self.events, self.survivors),
            "stale_keys_after_run": stale, "latency_ms": self.recorder.summary_ms(),
            "duration_s": round(until - self.events.start, 3), "cpu_cores": self.cpu_cores,
            "timeline": self.timeline.rows(until),
        }


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


def _peer_entry(reply: Any, peer: str) -> dict[str, Any] | None:
    """``peer``'s entry in a HEALTH report's cluster.nodes; None for a failed call."""
    if not isinstance(reply, dict):
        return None
    return next((e for e in reply.get("cluster", {}).get("nodes", []) if e.get("node_id") == peer), None)


class RestFailoverRun(FailoverRun):
    """The same run through HAProxy's HTTP frontend: each PUT a REST request on a
    pool of keep-alive connections, as a web client would send them."""

    def __init__(self, settings: FailoverSettings, cluster: LocalCluster, http_address: str) -> None:
        super().__init__("rest", settings, cluster, cluster.endpoints)
        self.base = f"http://{http_address}{REST_PREFIX}/kv/"
        self.body = json.dumps({"value": "x" * settings.value_size}).encode()

    async def _serving_node(self) -> str:
        import aiohttp

        await self.client.health()  # connected
        connector = aiohttp.TCPConnector(limit=self.settings.max_in_flight)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        return self.cluster.node_ids[0]  # round robin: every bridge serves the load

    async def run(self) -> dict[str, Any]:
        try:
            return await super().run()
        finally:
            await self.session.close()

    async def _put(self, index: int, intended: float) -> None:
        import aiohttp

        key = key_name(index)
        try:
            async with self.session.put(self.base + key + "/", data=self.body,
                                        headers={"Content-Type": "application/json"}) as response:
                text = await response.text()
                if response.status not in (200, 201):
                    self._error(f"HTTP {response.status}", time.monotonic(), text)
                    return
                version = Version(**json.loads(text)["version"])
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # counted, not raised
            self._error(type(exc).__name__, time.monotonic(), str(exc))
            return
        self._acknowledge(key, version, intended)


def run_failover(via: str, settings: FailoverSettings, workdir: Path, haproxy_config: Path = DEFAULT_HAPROXY_CONFIG) -> dict[str, Any]:
    """Start a 3-node cluster (and HAProxy, but for ``via="client"``) in ``workdir``, run, stop everything."""
    if via not in VIAS:
        raise ValueError(f"via must be one of {', '.join(VIAS)}, got {via!r}")
    workdir = Path(workdir)
    cluster = LocalCluster(3, data_dir=workdir / "data", sync=settings.sync)
    bridges = with_http(cluster) if via == "rest" else {}
    with cluster:
        if via == "client":
            return uvloop.run(FailoverRun(via, settings, cluster, cluster.endpoints).run())
        addresses = [bridges[node_id].removeprefix("http://") for node_id in cluster.node_ids] if bridges else ()
        with HAProxyProcess.for_cluster(haproxy_config, cluster, workdir=workdir, bridges=addresses) as lb:
            lb.wait_all("kvwire_nodes", "UP")
            if via == "rest":
                lb.wait_all("kvwire_bridges", "UP", timeout=15)
                return uvloop.run(RestFailoverRun(settings, cluster, lb.http_address).run())
            return uvloop.run(FailoverRun(via, settings, cluster, [lb.tcp_address]).run())


# --- command line -------------------------------------------------------------------------


_HELP = {
    "rate": "PUTs per second, open loop.", "duration": "Seconds of load.", "kill_at": "kill -9 at this second.",
    "restart_at": "Restart at this second.", "value_size": "Value bytes.", "keys": "Keys, written in turn.",
    "interval": "Timeline bucket, seconds.", "max_in_flight": "Requests in flight beyond which new ones count as 'overload'.",
    "timeout": "Each PUT's deadline, seconds.", "sync": "The nodes' --sync: off, normal or full.  [default: the nodes' own, full]",
}


def _settings_options(command: Any) -> Any:
    """One option for each field of FailoverSettings, with its default and type."""
    for option in reversed(fields(FailoverSettings)):
        kind = {"float": float, "int": int}.get(str(option.type), str)
        command = click.option(
            _option(option.name), option.name, type=kind, default=option.default,
            show_default=option.default is not None, metavar=kind.__name__.upper(), help=_HELP[option.name],
        )(command)
    return command


@click.command(short_help="Scenario 5: PUTs while a node is killed and restarted.",
               context_settings={"help_option_names": ["-h", "--help"]}, epilog=(
    "Exit status: 0 when the runs completed (failed requests are counted, not fatal), "
    "1 when a run could not start, 2 for bad options, 128 + the signal on SIGINT or SIGTERM (130, 143; "
    "its nodes and HAProxy are stopped first)."))
@click.option("--via", type=click.Choice([*VIAS, "all"]), default="all", show_default=True,
              help="HAProxy's TCP frontend, the client given all 3 nodes, REST through HAProxy's HTTP frontend, or all.")
@_settings_options
@click.option("--haproxy-config", type=click.Path(path_type=Path), default=DEFAULT_HAPROXY_CONFIG,
              metavar="FILE", help="HAProxy's configuration.  [default: haproxy/kvwire.cfg]")
@click.option("--workdir", type=DirectoryPath(), default=None, metavar="DIR",
              help="Keep node data and logs in DIR/<via>.  [default: a temporary directory]")
@click.option("--out", type=DirectoryPath(), default=None, metavar="DIR",
              help="Write failover-<via>.json and failover.png into DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of the table.")
@click.pass_context
@stops_cleanly("what it started (nodes, HAProxy) was stopped, and nothing was written")
def failover(ctx: click.Context, via: str, haproxy_config: Path, workdir: Path | None, out: Path | None,
             as_json: bool, **options: Any) -> None:
    """Scenario 5: a fixed-rate PUT load while one node is killed and restarted.

    Each run starts its own 3-node cluster (and, through HAProxy, haproxy),
    sends PUTs open loop, kills the node serving the load at --kill-at and
    restarts it at --restart-at, and reports failed requests, the longest
    stall, how long the survivors took to mark it DOWN and UP again, and
    when it had caught up.
    """
    try:
        settings = FailoverSettings(**options)
        if not haproxy_config.is_file():
            raise ValueError(f"--haproxy-config {haproxy_config}: no such file")
        for option, directory in (("--out", out), ("--workdir", workdir)):
            if directory is not None:
                prepare_directory(directory, option)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    results = []
    try:
        for one in VIAS if via == "all" else [via]:
            with tempfile.TemporaryDirectory(prefix=f"kvwire-failover-{one}-") as scratch:
                results.append(run_failover(one, settings, workdir / one if workdir else Path(scratch), haproxy_config))
    except (OSError, RuntimeError) as exc:  # TimeoutError is an OSError
        click.echo(f"{ctx.command_path}: {type(exc).__name__}: {str(exc)[:2000]}", err=True)
        ctx.exit(1)
    click.echo(json.dumps(results) if as_json else failover_table(results))
    if out is not None:
        for result in results:
            (out / f"failover-{result['via']}.json").write_text(json.dumps(result, indent=1) + "\n")
        plot_failover(results, out / "failover.png")
        click.echo(f"{ctx.command_path}: results and plot written to {out}", err=True)


if __name__ == "__main__":
    failover(prog_name="python -m kvwire.bench.failover")
