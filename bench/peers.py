"""Reference servers run next to kvwire on this machine: redis-server and a 3-member etcd.

Each runner returns the suite's one result shape (``bench.wrk.result_dict``), so
the figures tabulate beside kvwire's. Everything listens on 127.0.0.1 with ports
the kernel picked, keeps its data and logs under a workdir the caller owns, and
every run is bounded in time.

Redis is driven by redis-benchmark (its own tool: the best case for redis) and
etcd by wrk through its JSON gateway, as kvwire's REST bridge is; the
reference figures in docs/design.md section 8 were measured the same way.
"""

from __future__ import annotations

import base64
import csv
import http.client
import io
import os
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from kvwire.bench import wrk
from kvwire.bench.cpu import server_cpu_seconds
from kvwire.testing import ChildProcess, LineCopy, free_port, wait_for
from kvwire.testing.process import StartsOnEnter

HOST = "127.0.0.1"
_LOG_TAIL_LINES = 30


def available_peers() -> dict[str, str | None]:
    """For "redis", "etcd" and "wrk": None when usable here, else why not and how to fix it."""
    missing = {
        "redis": [tool for tool in ("redis-server", "redis-benchmark") if shutil.which(tool) is None],
        "etcd": [tool for tool in ("etcd",) if shutil.which(tool) is None],
    }
    packages = {"redis": "redis-server redis-tools", "etcd": "etcd-server"}
    peers: dict[str, str | None] = {
        name: f"{' and '.join(tools)} not on PATH; apt-get install {packages[name]}" if tools else None
        for name, tools in missing.items()
    }
    peers["wrk"] = wrk.wrk_problem()
    return peers


class _Server(ChildProcess):
    """A reference server logging both streams, asked to stop with SIGTERM before it is killed."""

    stdout_to_log = True
    stop_grace = 10.0

    def log_tail(self) -> str:
        return "\n".join(self.log().splitlines()[-_LOG_TAIL_LINES:])


# --- redis ------------------------------------------------------------------------------


class RedisServer(_Server):
    """``redis-server`` on a free port, with no persistence or with an fsync each second.

    ``with RedisServer(workdir) as redis:`` starts it, waits for PING, and stops it.
    """

    def __init__(self, workdir: str | os.PathLike, persistence: str = "none") -> None:
        if persistence not in ("none", "everysec"):
            raise ValueError(f"persistence must be none or everysec, got {persistence!r}")
        self.port = free_port(HOST)
        self.dir = Path(workdir) / f"redis-{self.port}"
        self.persistence = persistence
        aof = ["--appendonly", "yes", "--appendfsync", "everysec"] if persistence == "everysec" else ["--appendonly", "no"]
        # --save '' turns RDB snapshots off, so neither mode forks to save during a run.
        command = [
            "redis-server", "--port", str(self.port), "--bind", HOST, "--protected-mode", "no",
            "--save", "", *aof, "--dir", str(self.dir),
        ]
        super().__init__("redis-server", command, log_path=self.dir.with_suffix(".log"))

    def start(self, copy_to: LineCopy | None = None) -> Self:
        self.dir.mkdir(parents=True, exist_ok=True)
        return super().start(copy_to)

    def wait_ready(self, timeout: float = 10.0) -> Self:
        def answers() -> bool:
            if not self.running:
                raise RuntimeError(f"redis-server exited {self.returncode}; log ends:\n{self.log_tail()}")
            try:
                return redis_command(self.port, "PING") == b"+PONG"
            except OSError:
                return False

        wait_for(answers, timeout=timeout, what=f"redis-server answering PING on port {self.port}")
        return self


def redis_command(port: int, *args: str | bytes, timeout: float = 5.0) -> bytes:
    """One command's raw reply: a status line such as ``+PONG``, or a bulk string's content."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(_resp(args))
        with sock.makefile("rb") as reader:
            line = reader.readline().rstrip(b"\r\n")
            if line.startswith(b"$") and line != b"$-1":
                return reader.read(int(line[1:]))
            return line


def _resp(args: Sequence[str | bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def redis_preload(port: int, keys: int, value_size: int, *, timeout: float = 60.0) -> None:
    """SET every key redis-benchmark's ``-r keys`` picks from (``key:%012d``), pipelined on one connection.

    A random SET run first would leave keys out: 100k random SETs over 10k
    keys missed one, and the GETs that asked for it counted 95 misses.
    """
    value = b"x" * value_size
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        for first in range(0, keys, 1000):
            batch = range(first, min(first + 1000, keys))
            sock.sendall(b"".join(_resp((b"SET", b"key:%012d" % index, value)) for index in batch))
            expected, received = b"+OK\r\n" * len(batch), b""
            while len(received) < len(expected):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("redis-server closed the connection during the preload")
                received += chunk
            if received != expected:
                raise RuntimeError(f"redis-server refused a preload SET: {received[:200]!r}")


def _redis_stats(port: int) -> dict[str, int]:
    text = redis_command(port, "INFO", "stats").decode()
    return {name: int(value) for name, _, value in (line.partition(":") for line in text.splitlines()) if value.isdigit()}


# Redis' fastest here, 1.7M GET/s at depth 16 (docs/design.md section 8), for the longest run allowed.
_MAX_DURATION_S = 120
_MAX_REQUESTS = 1_700_000 * _MAX_DURATION_S
# Enough rounds on every connection for the rate to settle; about 0.1-0.3 s at 50 connections.
_CALIBRATION_REQUESTS_PER_DEPTH = 20_000


@dataclass(frozen=True)
class RedisBenchmark:
    """One redis-benchmark run. With ``requests`` None, a short calibration run sizes it to last ``duration`` s;
    with ``requests`` given, ``duration`` still bounds it (killed after 3 x duration + 60 s)."""

    op: str = "get"
    value_size: int = 100
    connections: int = 50
    pipeline: int = 1
    requests: int | None = None
    duration: float = 5.0
    keys: int = 10_000

    def __post_init__(self) -> None:
        if self.op not in ("get", "set"):
            raise ValueError(f"op must be get or set, got {self.op!r}")
        if not 0 <= self.value_size <= 1024 * 1024:
            raise ValueError(f"value_size must be 0-1048576 bytes, got {self.value_size}")
        if not 1 <= self.connections <= 10_000 or not 1 <= self.pipeline <= 1024:
            raise ValueError(f"connections must be 1-10000 and pipeline 1-1024, got {self.connections} and {self.pipeline}")
        if self.requests is not None and not self.connections <= self.requests <= _MAX_REQUESTS:
            raise ValueError(f"requests must be between connections and {_MAX_REQUESTS}, got {self.requests}")
        if not 0.5 <= self.duration <= _MAX_DURATION_S or not 1 <= self.keys <= 10_000_000:
            raise ValueError(
                f"duration must be 0.5-{_MAX_DURATION_S} s and keys 1-10000000, got {self.duration} and {self.keys}"
            )


def run_redis_benchmark(
    server: RedisServer, op: str, *, value_size: int = 100, connections: int = 50, pipeline: int = 1,
    requests: int | None = None, duration: float = 5.0, keys: int = 10_000,
    server_pids: Sequence[int] | None = None, preload: bool = True, name: str | None = None,
) -> dict[str, Any]:
    """redis-benchmark ``-t get|set`` on random keys from ``keys``; GETs find every key (``preload``).

    redis-benchmark reports p50, p95 and p99 but not p90 or p99.9, so those are
    None. Errors are the server's error replies plus, for GET, its keyspace misses.
    """
    bench = RedisBenchmark(op, value_size, connections, pipeline, requests, duration, keys)
    pids = tuple(server_pids) if server_pids is not None else (server.pid,)
    if op == "get" and preload:
        redis_preload(server.port, keys, value_size)
    if bench.requests is None:
        rps = _redis_benchmark(server.port, bench, _CALIBRATION_REQUESTS_PER_DEPTH * pipeline)[1]["rps"]
        count = min(max(int(rps * duration), connections * pipeline), _MAX_REQUESTS)
    else:
        count = bench.requests
    stats_before, cpu_before, started = _redis_stats(server.port), server_cpu_seconds(pids), time.monotonic()
    command, row = _redis_benchmark(server.port, bench, count)
    elapsed, cpu_after, stats_after = time.monotonic() - started, server_cpu_seconds(pids), _redis_stats(server.port)
    counted = ("total_error_replies", "keyspace_misses") if op == "get" else ("total_error_replies",)
    errors = sum(stats_after.get(stat, 0) - stats_before.get(stat, 0) for stat in counted)
    return wrk.result_dict(
        name=name or f"redis-{op}", tool="redis-benchmark", command=command, ops_per_s=row["rps"], requests=count,
        errors=errors, latency_ms={"p50": row["p50_latency_ms"], "p99": row["p99_latency_ms"], "max": row["max_latency_ms"]},
        cpu_seconds=None if cpu_before is None else cpu_after - cpu_before, elapsed=elapsed,
        connections=connections, pipeline=pipeline, value_size=value_size,
    )


def _redis_benchmark(port: int, bench: RedisBenchmark, requests: int) -> tuple[str, dict[str, float]]:
    """Run it; the command line and its CSV row (rps and latencies in ms)."""
    argv = [
        "redis-benchmark", "-h", HOST, "-p", str(port), "-t", bench.op, "-d", str(bench.value_size),
        "-c", str(bench.connections), "-P", str(bench.pipeline), "-n", str(requests), "-r", str(bench.keys), "--csv",
    ]
    # Bounded: the calibration or the caller sized it, but a stalled server must not hang the suite.
    completed = subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3 * bench.duration + 60, check=False
    )
    rows = list(csv.DictReader(io.StringIO(completed.stdout)))
    if completed.returncode != 0 or len(rows) != 1:
        raise RuntimeError(f"{shlex.join(argv)} exited {completed.returncode}: {(completed.stdout + completed.stderr)[-1000:]}")
    return shlex.join(argv), {key: float(value) for key, value in rows[0].items() if key != "test"}


# --- etcd -------------------------------------------------------------------------------


class _EtcdMember(_Server):
    # Killed, not SIGTERMed: a SIGTERMed leader first hands leadership over,
    # which took 7 s when the other members were stopping too, and the data
    # is thrown away anyway.
    stop_grace = 0.0

    def __init__(self, name: str, workdir: Path, client_port: int, peer_port: int, initial_cluster: str) -> None:
        # ETCD_* variables are flags too; one left in our environment could change the cluster.
        env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD_")}
        self.client_url = f"http://{HOST}:{client_port}"
        peer_url = f"http://{HOST}:{peer_port}"
        command = [
            "etcd", "--name", name, "--data-dir", str(workdir / name),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"kvwire-bench-{os.getpid()}",
        ]
        super().__init__(f"etcd member {name}", command, log_path=workdir / f"{name}.log", env=env)


class EtcdCluster(StartsOnEnter):
    """``members`` etcd processes on 127.0.0.1 forming one cluster, with etcd's default fsync on every commit.

    ``with EtcdCluster(workdir) as etcd:`` starts them, waits until a PUT through
    member 1's gateway succeeds, and kills them at the end.
    """

    def __init__(self, workdir: str | os.PathLike, members: int = 3, *, ready_timeout: float = 30.0) -> None:
        if not 1 <= members <= 7:
            raise ValueError(f"members must be 1-7, got {members}")
        if ready_timeout <= 0:
            raise ValueError(f"ready_timeout must be positive, got {ready_timeout}")
        self.workdir = Path(workdir) / f"etcd-{os.getpid()}-{time.monotonic_ns()}"
        self.ready_timeout = ready_timeout
        ports = [(free_port(HOST), free_port(HOST)) for _ in range(members)]
        initial_cluster = ",".join(f"e{i + 1}=http://{HOST}:{peer}" for i, (_, peer) in enumerate(ports))
        self.members = [
            _EtcdMember(f"e{i + 1}", self.workdir, client, peer, initial_cluster) for i, (client, peer) in enumerate(ports)
        ]

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(member.pid for member in self.members)

    @property
    def client_urls(self) -> tuple[str, ...]:
        return tuple(member.client_url for member in self.members)

    @property
    def running(self) -> bool:
        return all(member.running for member in self.members)

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            if not member.running:
                member.start()
        return self

    def wait_ready(self) -> Self:
        try:
            wait_for(self._serves, timeout=self.ready_timeout, what="etcd members healthy and a PUT accepted")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}; the logs end:\n{self._log_tails()}") from None
        return self

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def _serves(self) -> bool:
        for member in self.members:
            if not member.running:
                raise RuntimeError(f"{member.name} exited {member.returncode}; the logs end:\n{self._log_tails()}")
        try:
            # /health says true once the cluster has a leader; the PUT proves it commits.
            healthy = all(b'"true"' in _http(f"{url}/health") for url in self.client_urls)
            return healthy and bool(_http(f"{self.client_urls[0]}/v3/kv/put", _etcd_put_body("ready", 0)))
        except (OSError, http.client.HTTPException):
            return False

    def _log_tails(self) -> str:
        return "\n".join(f"--- {member.name} ({member.log_path})\n{member.log_tail()}" for member in self.members)


def _etcd_put_body(key: str, value_size: int) -> bytes:
    """The body etcd_gateway.lua sends: base64 key and a value of ``value_size`` x's."""
    key64, value64 = (base64.b64encode(text.encode()).decode() for text in (key, "x" * value_size))
    return f'{{"key":"{key64}","value":"{value64}"}}'.encode()


def _http(url: str, body: bytes | None = None) -> bytes:
    """GET, or POST ``body``; urllib raises HTTPError, an OSError, for any status but 2xx."""
    with urllib.request.urlopen(url, data=body, timeout=2.0) as reply:
        return reply.read()


def run_etcd(
    cluster: EtcdCluster, op: str, *, connections: int = 50, duration: int = 5, value_size: int = 100,
    keys: int = 10_000, server_pids: Sequence[int] | None = None, threads: int = 1, preload: bool = True,
) -> dict[str, Any]:
    """PUT or range random keys through member 1's JSON gateway with wrk; ranges find every key (``preload``).

    One URL because wrk takes one, as in the reference run (docs/design.md section 8); writes go
    through the raft leader whichever member receives them, and ranges are
    linearizable (etcd's default), so they ask the leader too.
    """
    space = wrk.Keyspace(op, keys, value_size, ops=("put", "range"))
    url = cluster.client_urls[0]
    if op == "range" and preload:
        wrk.preload_http(url, keys, lambda index: ("POST", "/v3/kv/put", _etcd_put_body(f"key:{index:08d}", value_size)))
    return wrk.run_wrk(
        url, wrk.ETCD_GATEWAY_SCRIPT, connections=connections, duration=duration, threads=threads, env=space.env,
        server_pids=tuple(server_pids) if server_pids is not None else cluster.pids, name=f"etcd-{op}",
        value_size=value_size,
    )
