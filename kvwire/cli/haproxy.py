"""``kvwire up --haproxy``: HAProxy with ``haproxy/kvwire.cfg`` in front of the local cluster.

HAProxy runs as one more child of ``kvwire up`` (``haproxy -db``, output
behind ``haproxy |``), stopped with the nodes. The config takes every
address from the environment, so nothing is rewritten: the nodes' and
bridges' addresses are passed, and the frontends bind ``--host`` rather than
every interface (unless the user set ``KVWIRE_LB_*`` already).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import click

from ..protocol.address import format_endpoint
from ..testing import ChildProcess, DevCerts
from .supervisor import bind_refusal

INSTALL_HINT = (
    "--haproxy needs the haproxy binary, which is not installed: on Debian or Ubuntu run "
    "`sudo apt-get install haproxy` (2.6 or later), or drop --haproxy"
)
# The config's frontends, and their ports when the user hasn't chosen others.
FRONTENDS = {"KVWIRE_LB_TCP": 7000, "KVWIRE_LB_HTTP": 8088, "KVWIRE_LB_STATS": 8080}
# The config names three servers per backend.
NODES = 3


def find_config() -> Path:
    """``haproxy/kvwire.cfg`` of this checkout, or the copy ``pip install`` put in ``<prefix>/share/kvwire``."""
    candidates = [
        Path(__file__).resolve().parents[2] / "haproxy" / "kvwire.cfg",
        Path(sys.prefix) / "share" / "kvwire" / "haproxy" / "kvwire.cfg",
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise click.ClickException(f"haproxy/kvwire.cfg not found (looked in {', '.join(map(str, candidates))})")


# The longest admin socket path haproxy accepts (its "socket path ... too long (max 97)").
MAX_SOCKET_PATH_CHARS = 97


def haproxy_child(host: str, node_ports: Sequence[int], http_ports: Sequence[int], data_dir: Path,
                  tls: DevCerts | None = None) -> ChildProcess:
    """The HAProxy child for ``kvwire up``, after checking it can start; prints its endpoints.
    With ``tls``, the config's TLS mode with those certificates."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise click.ClickException(INSTALL_HINT)
    if len(node_ports) != NODES:
        raise click.UsageError(f"--haproxy runs haproxy/kvwire.cfg, which balances {NODES} nodes; use --nodes {NODES}")
    config = find_config()
    env = dict(os.environ)
    for i, (node_port, http_port) in enumerate(zip(node_ports, http_ports), 1):
        env[f"KVWIRE_NODE{i}"] = format_endpoint(host, node_port)
        env[f"KVWIRE_HTTP{i}"] = format_endpoint(host, http_port)
    for name, port in FRONTENDS.items():
        if name not in env:
            _check_port_free(host, port, name)
            env[name] = format_endpoint(host, port)
    env.setdefault("KVWIRE_LB_SOCKET", str((data_dir / "haproxy.sock").absolute()))
    if len(env["KVWIRE_LB_SOCKET"]) > MAX_SOCKET_PATH_CHARS:
        # haproxy refuses its config for it, and up restarted it until its 30 s deadline
        # said only "not answering" (a deploy probe ran up from a deep directory).
        raise click.ClickException(
            f"haproxy's admin socket {env['KVWIRE_LB_SOCKET']} is {len(env['KVWIRE_LB_SOCKET'])} characters long, "
            f"and haproxy takes at most {MAX_SOCKET_PATH_CHARS}: give a shorter --data-dir, or set "
            "KVWIRE_LB_SOCKET=/tmp/NAME.sock")
    if tls is not None:
        env.update(KVWIRE_LB_TLS_CA=str(tls.ca.absolute()), KVWIRE_LB_TLS_CERT=str(tls.haproxy.absolute()))
    click.echo(
        f"haproxy ({config}): binary protocol on {env['KVWIRE_LB_TCP']}{' (TLS passed through)' if tls else ''}, "
        f"REST on {'https://' if tls else ''}{env['KVWIRE_LB_HTTP']}, "
        f"stats on http://{env['KVWIRE_LB_STATS']}/stats (Prometheus: /metrics)"
    )
    return ChildProcess("haproxy", [binary, "-db", "-f", str(config)], env=env)


def _check_port_free(host: str, port: int, variable: str) -> None:
    reason = bind_refusal(host, port)
    if reason is not None:
        raise click.ClickException(
            f"haproxy cannot listen on {format_endpoint(host, port)}: {reason}; set {variable}=HOST:PORT to use another"
        )
