"""HTTP load with wrk, reported in the same shape as every other runner in the suite.

wrk's own report is prose; the Lua scripts in ``bench/lua`` print one JSON line
from wrk's ``done()`` hook instead (``wrk_report.lua``), found by a marker in
stdout. Keys are ``key:%08d`` as in ``bench.load``, so the REST figures compare
with the binary protocol's on the same key space.

A result is a plain dict (:func:`result_dict`), so the suite can tabulate kvwire
and the reference servers side by side.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kvwire.bench.cpu import server_cpu_seconds

LUA_DIR = Path(__file__).with_name("lua")
KVWIRE_REST_SCRIPT = LUA_DIR / "kvwire_rest.lua"
ETCD_GATEWAY_SCRIPT = LUA_DIR / "etcd_gateway.lua"
MARKER = "KVWIRE_WRK_RESULT "  # printed by wrk_report.lua
# wrk's LuaJIT reads LUA_PATH when it opens its package library; ";;" keeps the default path after ours.
_LUA_PATH = f"{LUA_DIR}/?.lua;;"
# Beyond wrk's run itself: start-up, building the key tables in init(), and the report.
_GRACE_S = 30.0
_PRELOAD_CONCURRENCY = 16
_LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")


@dataclass(frozen=True)
class WrkSettings:
    """One wrk run. wrk accepts whole seconds only (``-d 1.5s`` is refused)."""

    connections: int = 50
    duration: int = 5
    threads: int = 1
    # A reply slower than this is a timeout error; wrk's default is 2 s, etcd's p99 under load is about 23 ms.
    timeout: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= 64:
            raise ValueError(f"threads must be 1-64, got {self.threads}")
        if not self.threads <= self.connections <= 10_000:
            raise ValueError(f"connections must be between threads ({self.threads}) and 10000, got {self.connections}")
        if type(self.duration) is not int or not 1 <= self.duration <= 3600:
            raise ValueError(f"duration must be whole seconds in [1, 3600] (wrk takes no fractions), got {self.duration!r}")
        if type(self.timeout) is not int or not 1 <= self.timeout <= 600:
            raise ValueError(f"timeout must be whole seconds in [1, 600], got {self.timeout!r}")


@dataclass(frozen=True)
class Keyspace:
    """What the Lua scripts here read from the environment: the operation, the key count and the value size."""

    op: str
    keys: int = 10_000
    value_size: int = 100
    ops: tuple[str, ...] = ("get", "put")

    def __post_init__(self) -> None:
        if self.op not in self.ops:
            raise ValueError(f"op must be one of {', '.join(self.ops)}, got {self.op!r}")
        # Each wrk thread builds a table of every key's path or request body in init().
        if not 1 <= self.keys <= 1_000_000:
            raise ValueError(f"keys must be 1-1000000, got {self.keys}")
        if not 0 <= self.value_size <= 1024 * 1024:
            raise ValueError(f"value_size must be 0-1048576, got {self.value_size}")

    @property
    def env(self) -> dict[str, str]:
        return {"KVWIRE_OP": self.op, "KVWIRE_KEYS": str(self.keys), "KVWIRE_VALUE_SIZE": str(self.value_size)}


def wrk_problem() -> str | None:
    """None when wrk can run here, else why not and how to fix it."""
    if shutil.which("wrk") is None:
        return "wrk not on PATH; apt-get install wrk"
    return None


def run_wrk(
    url: str, script: Path, *, connections: int = 50, duration: int = 5, threads: int = 1,
    env: Mapping[str, str] | None = None, server_pids: Sequence[int] = (), name: str = "wrk",
    value_size: int = 0, timeout: int = 2,
) -> dict[str, Any]:
    """Run wrk with ``script`` against ``url``; ``env`` reaches the script through os.getenv.

    Errors are socket errors, timeouts, any non-2xx status, and whatever the
    script counts as a miss. ``server_pids`` are the processes whose CPU time is
    charged to the requests.
    """
    settings = WrkSettings(connections=connections, duration=duration, threads=threads, timeout=timeout)
    if not script.is_file():
        raise ValueError(f"no wrk script at {script}")
    script_env = {**(env or {}), "LUA_PATH": _LUA_PATH}
    argv = [
        "wrk", f"-t{settings.threads}", f"-c{settings.connections}", f"-d{settings.duration}s",
        f"--timeout={settings.timeout}s", "-s", str(script), url,
    ]
    command = shlex.join([f"{key}={value}" for key, value in script_env.items()] + argv)
    cpu_before, started = server_cpu_seconds(tuple(server_pids)), time.monotonic()
    completed = subprocess.run(
        argv,
        env={**os.environ, **script_env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=settings.duration + _GRACE_S,
        check=False,
    )
    elapsed, cpu_after = time.monotonic() - started, server_cpu_seconds(tuple(server_pids))
    report = _find_report(completed)
    requests = report["requests"]
    latency = {key: value / 1000 for key, value in report["latency_us"].items()} if requests else dict.fromkeys(_LATENCY_KEYS)
    return result_dict(
        name=name, tool="wrk", command=command, requests=requests, errors=report["errors"], latency_ms=latency,
        ops_per_s=requests / (report["duration_us"] / 1e6) if report["duration_us"] else 0.0,
        cpu_seconds=None if cpu_before is None else cpu_after - cpu_before, elapsed=elapsed,
        connections=settings.connections, pipeline=1, value_size=value_size,
    )


def run_kvwire_rest(
    base_url: str, op: str, *, connections: int = 50, duration: int = 5, value_size: int = 100,
    keys: int = 10_000, server_pids: Sequence[int] = (), threads: int = 1, preload: bool = True,
) -> dict[str, Any]:
    """GET or PUT random keys through the HTTP bridge at ``base_url``; GETs preload every key first."""
    space = Keyspace(op, keys, value_size, ops=("get", "put"))
    if op == "get" and preload:
        preload_rest(base_url, keys, value_size)
    return run_wrk(
        base_url, KVWIRE_REST_SCRIPT, connections=connections, duration=duration, threads=threads, env=space.env,
        server_pids=server_pids, name=f"kvwire-rest-{op}", value_size=value_size,
    )


def result_dict(
    *, name: str, tool: str, command: str, ops_per_s: float, requests: int, errors: int,
    latency_ms: Mapping[str, float | None], cpu_seconds: float | None, elapsed: float,
    connections: int, pipeline: int, value_size: int,
) -> dict[str, Any]:
    """The one result shape of the suite; server CPU is charged per request and per second of the run."""
    return {
        "name": name,
        "tool": tool,
        "command": command,
        "ops_per_s": ops_per_s,
        "requests": requests,
        "errors": errors,
        "latency_ms": {key: latency_ms.get(key) for key in _LATENCY_KEYS},
        "server_cpu_us_per_op": None if cpu_seconds is None or not requests else cpu_seconds * 1e6 / requests,
        "server_cpu_cores": None if cpu_seconds is None or elapsed <= 0 else cpu_seconds / elapsed,
        "connections": connections,
        "pipeline": pipeline,
        "value_size": value_size,
    }


def _find_report(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    for line in completed.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-20:])
    raise RuntimeError(f"wrk exited {completed.returncode} without its JSON report; its output ends:\n{tail}")


# --- preloading, so that reads find their keys --------------------------------------------


def rest_key_path(index: int) -> str:
    return f"/kv-store/v1/kv/key:{index:08d}/"


def rest_value_body(value_size: int) -> bytes:
    """The PUT body kvwire_rest.lua sends: a JSON string of ``value_size`` characters."""
    return json.dumps({"value": "x" * value_size}).encode()


def preload_rest(base_url: str, keys: int, value_size: int, *, timeout: float = 60.0) -> float:
    """PUT every key once through the HTTP bridge at ``base_url``; the seconds it took."""
    body = rest_value_body(value_size)
    return preload_http(base_url, keys, lambda index: ("PUT", rest_key_path(index), body), timeout=timeout)


def preload_http(
    base_url: str,
    count: int,
    request: Callable[[int], tuple[str, str, bytes]],
    *,
    timeout: float = 60.0,
    concurrency: int = _PRELOAD_CONCURRENCY,
) -> float:
    """Send ``request(i)`` (method, path, body) for i in range(count) over a few keep-alive connections.

    Raises on the first non-2xx reply or when ``timeout`` seconds run out. Sent
    concurrently because servers that fsync each write (etcd, kvwire with
    --sync full) take milliseconds per request but commit many together.
    """
    if count < 0 or not 1 <= concurrency <= 256 or timeout <= 0:
        raise ValueError("count must be >= 0, concurrency 1-256 and timeout > 0")
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"base_url must be http://host:port, got {base_url!r}")
    deadline = time.monotonic() + timeout
    failures: list[str] = []

    def worker(first: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=min(timeout, 10.0))
        try:
            for index in range(first, count, concurrency):
                if failures or time.monotonic() > deadline:
                    failures.append(f"preload did not finish within {timeout:g} s")
                    return
                method, path, body = request(index)
                connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
                reply = connection.getresponse()
                text = reply.read()
                if not 200 <= reply.status < 300:
                    failures.append(f"{method} {path} answered {reply.status}: {text[:200]!r}")
                    return
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"preload request failed: {exc!r}")
        finally:
            connection.close()

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(first,), daemon=True) for first in range(min(concurrency, count))]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()) + 11)  # a request in flight may take its socket timeout
    if failures or any(thread.is_alive() for thread in workers):
        raise RuntimeError(failures[0] if failures else f"preload did not finish within {timeout:g} s")
    return time.monotonic() - started
