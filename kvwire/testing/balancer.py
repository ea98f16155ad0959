"""Real load balancers in front of real nodes: HAProxy and nginx as child processes.

For tests of ``haproxy/kvwire.cfg`` and ``deploy/nginx/``, and for users who
want to see their own balancer fail over before trusting it:

    with LocalCluster(3, data_dir=tmp_path) as cluster:
        with HAProxyProcess.for_cluster(CONFIG, cluster, workdir=tmp_path) as lb:
            lb.wait_all("kvwire_nodes", "UP")
            with WriteLoad(lb.tcp_address) as load:
                load.wait_acknowledged(100)
                cluster.kill(load.node_id)   # the node serving the load's connection
                lb.wait_status("kvwire_nodes", load.node_id, "DOWN", timeout=1.0)
            print(load.report.as_dict())     # failed requests, longest stall, ...

Each balancer runs in the foreground as our child (we keep its pid; a pid
file is only written by daemonised HAProxy). Its output goes to a log file
that failure messages quote.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..client import Client, RetryPolicy
from .node import free_port, wait_for
from .process import ChildProcess
from .wire import accepts_connections


def free_address(host: str = "127.0.0.1") -> str:
    return f"{host}:{free_port(host)}"


class BalancerProcess(ChildProcess):
    """A balancer binary run in the foreground; its stdout and stderr go to ``log_path``."""

    stdout_to_log = True
    # Both stop at once on SIGTERM; they are killed if that is not enough.
    stop_grace = 10.0


class HAProxyProcess(BalancerProcess):
    """``haproxy -db -f CONFIG``, with the config's addresses given by environment variables.

    ``env`` holds the ``KVWIRE_*`` variables of ``haproxy/kvwire.cfg``;
    :meth:`for_cluster` fills them from a :class:`LocalCluster` and free ports.
    """

    def __init__(self, config: str | os.PathLike, *, env: Mapping[str, str], log_path: str | os.PathLike, binary: str = "haproxy") -> None:
        self.config = Path(config)
        self.variables = dict(env)
        super().__init__("haproxy", [binary, "-db", "-f", str(self.config)], log_path=log_path,
                         env={**os.environ, **self.variables})

    @classmethod
    def for_cluster(
        cls,
        config: str | os.PathLike,
        cluster: Any,
        *,
        workdir: str | os.PathLike,
        bridges: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> HAProxyProcess:
        """HAProxy in front of the first three nodes of ``cluster`` (and ``bridges``, if any), on free ports."""
        workdir = Path(workdir)
        nodes = cluster.endpoints
        if len(nodes) != 3:
            raise ValueError(f"haproxy/kvwire.cfg names 3 nodes; the cluster has {len(nodes)}")
        # No bridges: point the HTTP servers at a port nothing listens on, so
        # they are DOWN rather than at someone else's :8000.
        bridges = list(bridges) or [free_address()] * 3
        env = {f"KVWIRE_NODE{i}": address for i, address in enumerate(nodes, 1)}
        env.update({f"KVWIRE_HTTP{i}": address for i, address in enumerate(bridges, 1)})
        env.update(
            KVWIRE_LB_TCP=free_address(),
            KVWIRE_LB_HTTP=free_address(),
            KVWIRE_LB_STATS=free_address(),
            KVWIRE_LB_SOCKET=str(workdir / "haproxy.sock"),
        )
        env.update(extra_env or {})
        return cls(config, env=env, log_path=workdir / "haproxy.log")

    @property
    def tcp_address(self) -> str:
        return self.variables["KVWIRE_LB_TCP"]

    @property
    def http_address(self) -> str:
        return self.variables["KVWIRE_LB_HTTP"]

    @property
    def stats_address(self) -> str:
        return self.variables["KVWIRE_LB_STATS"]

    def validate(self) -> subprocess.CompletedProcess:
        """``haproxy -c -f CONFIG`` with the same environment."""
        return subprocess.run(
            [self.command[0], "-c", "-f", str(self.config)], env=self.env, capture_output=True, text=True, timeout=30
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        def listening() -> bool:
            self.check_alive()
            return accepts_connections(self.stats_address) and accepts_connections(self.tcp_address)

        wait_for(listening, timeout=timeout, what=f"haproxy listening on {self.stats_address}")

    def fetch(self, path: str, timeout: float = 1.0) -> tuple[int, str]:
        """GET ``path`` from the stats frontend; (status, body)."""
        try:
            with urllib.request.urlopen(f"http://{self.stats_address}{path}", timeout=timeout) as response:
                # A failed TLS check can leave stray bytes in its last_chk column (HAProxy 2.6).
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def stats(self) -> list[dict[str, str]]:
        """Every row of ``/stats;csv``: one per frontend, backend and server."""
        status, body = self.fetch("/stats;csv")
        if status != 200:
            raise RuntimeError(f"/stats;csv answered {status}")
        return list(csv.DictReader(io.StringIO(body.lstrip("# "))))

    def statuses(self, backend: str, *, backups: bool = False) -> dict[str, str]:
        """``{server: status}`` of one backend's servers in rotation, e.g. ``{"n1": "UP", "n2": "DOWN 1/2", ...}``;
        with ``backups``, its backup servers too."""
        return {
            row["svname"]: row["status"] for row in self.stats()
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND") and (backups or row["bck"] != "1")
        }

    def wait_status(self, backend: str, server: str, status: str, timeout: float = 5.0, interval: float = 0.01) -> float:
        """Poll the stats until ``server`` shows exactly ``status`` (``UP``, ``DOWN``); seconds it took."""
        started = time.monotonic()
        seen: list[str] = []

        def reached() -> bool:
            self.check_alive()
            current = self.statuses(backend, backups=True).get(server)
            seen.append(str(current))
            return current == status

        try:
            wait_for(reached, timeout=timeout, interval=interval, what=f"{backend}/{server} {status}")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; last seen {seen[-1] if seen else None}; log:\n{self.log()[-3000:]}") from None
        return time.monotonic() - started

    def wait_all(self, backend: str, status: str, timeout: float = 5.0) -> None:
        def reached() -> bool:
            self.check_alive()
            states = self.statuses(backend)
            return bool(states) and all(state == status for state in states.values())

        wait_for(reached, timeout=timeout, what=f"every server of {backend} {status}")


class NginxProcess(BalancerProcess):
    """``nginx -c CONFIG`` in the foreground, its pid file and error log in ``workdir``.

    The config must not set ``daemon``, ``pid`` or ``error_log`` at the top
    level: they are given with ``-g`` so that a test never touches the system
    nginx's files.
    """

    def __init__(self, config: str | os.PathLike, *, workdir: str | os.PathLike, binary: str | None = None) -> None:
        self.config = Path(config)
        self.workdir = Path(workdir)
        self.binary = binary or shutil.which("nginx") or "/usr/sbin/nginx"
        self.globals = f"daemon off; pid {self.workdir / 'nginx.pid'}; error_log {self.workdir / 'nginx-error.log'} notice;"
        super().__init__("nginx", self._command(), log_path=self.workdir / "nginx.log")

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, *extra, "-p", str(self.workdir), "-c", str(self.config), "-g", self.globals]

    def validate(self) -> subprocess.CompletedProcess:
        """``nginx -t``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30)

    def log(self) -> str:
        parts = [super().log()]
        try:
            parts.append((self.workdir / "nginx-error.log").read_text(errors="replace"))
        except FileNotFoundError:
            pass
        return "\n".join(parts)

    def wait_ready(self, timeout: float = 10.0, addresses: Sequence[str] = ()) -> None:
        def started() -> bool:
            self.check_alive()
            return (self.workdir / "nginx.pid").exists() and all(accepts_connections(address) for address in addresses)

        wait_for(started, timeout=timeout, what="nginx started")


@dataclass
class LoadReport:
    """What :class:`WriteLoad` saw: every acknowledged write, every failure, the longest stall."""

    requests: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    longest_stall_s: float = 0.0
    slowest_request_s: float = 0.0
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "acknowledged": len(self.acknowledged),
            "failed": len(self.failures),
            "failures": sorted(set(self.failures)),
            "longest_stall_ms": round(self.longest_stall_s * 1000, 1),
            "slowest_request_ms": round(self.slowest_request_s * 1000, 1),
            "duration_s": round(self.duration_s, 2),
        }


class BackgroundLoad:
    """A load run in a thread by :meth:`_run`, which fills :attr:`report`; bounded in
    count (``max_requests``) and in time (``max_duration``)."""

    def __init__(self, endpoint: str, *, prefix: str, max_requests: int, max_duration: float, timeout: float) -> None:
        self.endpoint = endpoint
        self.prefix = prefix
        self.max_requests = max_requests
        self.max_duration = max_duration
        self.timeout = timeout
        self.report = LoadReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            with self._connected():
                self._drive()
        except BaseException as error:
            self._error = error

    def _connected(self) -> contextlib.AbstractContextManager:
        """Open what :meth:`_attempt` sends on, for the whole run."""
        raise NotImplementedError

    def _attempt(self, key: str, value: int) -> bool:
        """Write ``value`` under ``key`` (and whatever else one round does): True once
        acknowledged; a failure is appended to ``report.failures``, never raised."""
        raise NotImplementedError

    def _drive(self) -> None:
        """Rounds back to back until stopped or out of bounds. The stall is the longest
        time between two acknowledgements (or from the start to the first)."""
        report = self.report
        started = last_ack = time.monotonic()
        deadline = started + self.max_duration
        index = 0
        while not self._stop.is_set() and report.requests < self.max_requests and time.monotonic() < deadline:
            key = f"{self.prefix}:{index}"
            index += 1
            sent = time.monotonic()
            if self._attempt(key, index):
                report.acknowledged[key] = index
                now = time.monotonic()
                report.longest_stall_s = max(report.longest_stall_s, now - last_ack)
                last_ack = now
            report.slowest_request_s = max(report.slowest_request_s, time.monotonic() - sent)
        report.duration_s = time.monotonic() - started

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run_until(self, moment: float) -> None:
        """Let the load go on until ``time.monotonic()`` reaches ``moment`` (or it ends by its bounds)."""
        wait_for(lambda: time.monotonic() >= moment or not self.running, timeout=max(0.0, moment - time.monotonic()) + 1.0, what="load running")

    def wait_acknowledged(self, count: int, timeout: float = 10.0) -> None:
        wait_for(lambda: len(self.report.acknowledged) >= count or not self._thread.is_alive(), timeout=timeout, what=f"{count} writes acknowledged")
        if len(self.report.acknowledged) < count:
            raise RuntimeError(f"the load stopped after {self.report.as_dict()}: {self._error!r}")

    def stop(self) -> LoadReport:
        self._stop.set()
        self._thread.join(self.max_duration + 2 * self.timeout + 5)
        if self._thread.is_alive():
            raise RuntimeError("the write load did not stop")
        if self._error is not None:
            raise self._error
        return self.report

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class WriteLoad(BackgroundLoad):
    """One client writing distinct keys back to back through one endpoint, in a thread.

    Through a balancer, the load's one connection reaches one node,
    :attr:`node_id`: killing that node is what tests the balancer's failover
    (killing another only shows the cluster keeps writing).

    Bounded in count and in time. The stall is the longest time between two
    acknowledgements (or from the start to the first), which covers failed
    and retried requests alike.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        prefix: str = "load",
        max_requests: int = 20_000,
        max_duration: float = 15.0,
        timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(endpoint, prefix=prefix, max_requests=max_requests, max_duration=max_duration, timeout=timeout)
        # Passed to the Client as they are: a cluster's TLS settings, say.
        self.client_options = dict(client_options or {})
        # One endpoint: every retry goes back through the balancer, which picks a live node.
        self.retry = retry or RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.1, attempt_timeout=0.5, cooldown=0.0)
        # The node serving this load's connection when it started (asked with HEALTH).
        self.node_id: str | None = None

    @contextlib.contextmanager
    def _connected(self):
        with Client([self.endpoint], timeout=self.timeout, retry=self.retry, **self.client_options) as client:
            # The client keeps one connection, so one node behind the
            # balancer serves the whole load until that node fails.
            self.node_id = client.health()["node_id"]
            self._client = client
            yield

    def _attempt(self, key: str, value: int) -> bool:
        self.report.requests += 1
        try:
            self._client.put(key, value)
        except Exception as error:  # counted, not raised: failures are what we measure
            self.report.failures.append(type(error).__name__)
            return False
        return True


def kill_under_load(
    cluster: Any, endpoint: str, *, after_kill: Callable[[str], object] = lambda victim: None,
    client_options: Mapping[str, Any] | None = None,
) -> tuple[str, float, LoadReport]:
    """Write through ``endpoint`` (a balancer), ``kill -9`` the node serving the load's
    connection, then call ``after_kill(that node)`` (say, wait for the balancer to mark it
    DOWN) and keep writing through the others for a second.

    Returns the node, the seconds from the kill until ``after_kill`` returned, and the
    load's report, whose acknowledged writes a test should then read back.
    """
    load = WriteLoad(endpoint, max_requests=20_000, max_duration=10.0, client_options=client_options)
    return kill_during(load, cluster, lambda: load.node_id, after_kill=after_kill)


def kill_during(
    load: BackgroundLoad, cluster: Any, choose_victim: Callable[[], str], *,
    after_kill: Callable[[str], object] = lambda victim: None,
) -> tuple[str, float, LoadReport]:
    """Start ``load``; once 200 requests are acknowledged, ``kill -9`` the node
    ``choose_victim()`` names, call ``after_kill(it)``, and go on until 300 more are
    acknowledged and a second has passed since the kill. As :func:`kill_under_load`."""
    load.start()
    try:
        load.wait_acknowledged(200)
        before = len(load.report.acknowledged)
        killed_at = time.monotonic()
        victim = choose_victim()
        cluster.kill(victim)
        after_kill(victim)
        noticed = time.monotonic() - killed_at
        load.wait_acknowledged(before + 300, timeout=5.0)
        load.run_until(killed_at + 1.0)
    finally:
        report = load.stop()
    return victim, noticed, report


def report_figures(name: str, figures: Mapping[str, Any]) -> None:
    """Print one line of measured figures (seen with ``pytest -s``), and append
    it as JSON to the file named by ``KVWIRE_FIGURES``, if set."""
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    print(f"\nFIGURES {line}")
    target = os.environ.get("KVWIRE_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")
