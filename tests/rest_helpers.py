"""Helpers for the REST tests: a real ``kvwire bridge`` process and a small HTTP client."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from kvwire.testing import LocalCluster, free_port, wait_for
from kvwire.testing.process import ChildProcess

PREFIX = "/kv-store/v1"


@dataclass
class Reply:
    status: int
    headers: Any
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


def http(method: str, url: str, body: Any = None, *, raw: bytes | None = None, headers: dict | None = None,
         timeout: float = 15.0) -> Reply:
    """One request; any status comes back as a Reply (urllib raises for >= 400)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read().decode())


def answers(url: str) -> bool:
    try:
        return http("GET", f"{url}{PREFIX}/openapi.json", timeout=1.0).status == 200
    except OSError:
        return False


class BridgeProcess(ChildProcess):
    """``kvwire bridge`` in a child process on a free port; stderr goes to ``log_path``."""

    name = "kvwire bridge"

    def __init__(self, endpoints: Sequence[str], *, log_path: Path, args: Sequence[str] = (), port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        # The caller's own KVWIRE_* settings must not leak in.
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")}
        super().__init__(log_path=log_path, env={**inherited, **(env or {})})
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "kvwire", "bridge", "--listen", f"127.0.0.1:{self.port}",
                        "--endpoints", ",".join(endpoints), *args]

    def wait_ready(self, timeout: float = 15.0) -> BridgeProcess:
        def ready() -> bool:
            self.check_alive()
            return answers(self.url)

        wait_for(ready, timeout=timeout, what=f"kvwire bridge answering on {self.url}")
        return self

    def signal(self, signum: int, timeout: float = 15.0) -> int:
        return self.signal_and_wait(signum, timeout)


def with_http(cluster: LocalCluster, *node_ids: str) -> dict[str, str]:
    """Give the named nodes (default: all) an in-process bridge on a free port; their base URLs."""
    urls = {}
    for node in cluster:
        if node_ids and node.node_id not in node_ids:
            continue
        port = free_port(node.host)
        node.extra_args += ["--http-listen", f"{node.host}:{port}"]
        urls[node.node_id] = f"http://{node.host}:{port}"
    return urls
