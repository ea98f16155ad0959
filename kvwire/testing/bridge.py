"""A real ``kvwire bridge`` (the REST API) as a child process, for tests and the benchmark suite."""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .node import free_port, wait_for
from .process import ChildProcess

if TYPE_CHECKING:
    from .certs import DevCerts

REST_PREFIX = "/kv-store/v1"


def rest_answers(url: str, ssl_context: ssl.SSLContext | None = None) -> bool:
    """True when a bridge at ``url`` serves its OpenAPI document (over HTTPS: trusted by ``ssl_context``)."""
    try:
        with urllib.request.urlopen(f"{url}{REST_PREFIX}/openapi.json", timeout=1.0, context=ssl_context) as response:
            return response.status == 200
    except OSError:
        return False


class BridgeProcess(ChildProcess):
    """``kvwire bridge`` in a child process on a free port; stderr goes to ``log_path``."""

    def __init__(self, endpoints: Sequence[str], *, log_path: Path, args: Sequence[str] = (), port: int | None = None,
                 env: dict[str, str] | None = None, tls: DevCerts | None = None) -> None:
        # The caller's own KVWIRE_* settings must not leak in.
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")}
        self.port = port if port is not None else free_port()
        # With tls: HTTPS with the node certificate, which is also its client certificate towards TLS nodes.
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.ssl_context = ssl.create_default_context(cafile=tls.ca) if tls is not None else None
        command = [sys.executable, "-m", "kvwire", "bridge", "--listen", f"127.0.0.1:{self.port}",
                   "--endpoints", ",".join(endpoints), *(tls.node_args() if tls is not None else ()), *args]
        super().__init__("kvwire bridge", command, log_path=log_path, env={**inherited, **(env or {})})

    def wait_ready(self, timeout: float = 15.0) -> BridgeProcess:
        def ready() -> bool:
            self.check_alive()
            return rest_answers(self.url, self.ssl_context)

        wait_for(ready, timeout=timeout, what=f"kvwire bridge answering on {self.url}")
        return self

    def signal(self, signum: int, timeout: float = 15.0) -> int:
        return self.signal_and_wait(signum, timeout)


def with_http(cluster, *node_ids: str) -> dict[str, str]:
    """Give the named nodes of a LocalCluster (default: all) an in-process bridge
    (``--http-listen``) on a free port, for their next start; their base URLs."""
    urls = {}
    for node in cluster:
        if node_ids and node.node_id not in node_ids:
            continue
        port = free_port(node.host)
        node.extra_args += ["--http-listen", f"{node.host}:{port}"]
        urls[node.node_id] = f"http://{node.host}:{port}"
    return urls
