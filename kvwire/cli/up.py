"""``kvwire up``: a local cluster in the foreground, the README's main command.

Each node is its own ``kvwire serve`` process, as in production, with its
HTTP bridge (``--http-listen``) inside; their pids are printed, so
``kill -STOP``/``kill -CONT`` of one shows failover for real.
Ctrl-C or SIGTERM stops every node cleanly. A node that dies on its own
stops the others too, with a non-zero exit: a cluster quietly running a node
short would hide the failure from whoever started it.
"""

from __future__ import annotations

import os
import shlex
import signal
import ssl
import sys
import threading
import time
from pathlib import Path

import click

from ..protocol import NEED_DATA, Connection, Ping, Pong, Side, encode
from ..protocol.address import format_endpoint
from ..secret_file import write_secret_file
from ..testing import ChildProcess, DevCerts
from ..testing.wire import connect_socket
from .haproxy import haproxy_child
from .supervisor import STOPPED_STATUSES, Supervisor, bind_refusal

DEFAULT_BASE_PORT = 7379
DEFAULT_HTTP_BASE_PORT = 8000
# Opening SQLite and binding take well under a second; a node that doesn't
# answer in this long is stuck, and the user should hear about it.
READY_TIMEOUT = 30.0
# A node lets requests in flight finish for up to 10 s (ServerConfig.shutdown_timeout).
STOP_GRACE = 15.0
POLL_INTERVAL = 0.1


@click.command()
@click.option("--nodes", "node_count", type=click.IntRange(min=1, max=99), default=3, show_default=True, help="How many nodes: n1, n2, ...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address every node listens on.")
@click.option("--base-port", type=click.IntRange(min=1, max=65535), default=DEFAULT_BASE_PORT, show_default=True, help="Port of n1; node i listens on BASE_PORT + i - 1.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".kvwire"), show_default=True, help="Each node keeps its data in DATA_DIR/<node id>.")
@click.option("--cluster-id", default="kvwire", show_default=True, help="Cluster id the nodes share; clients naming another are refused.")
@click.option("--sync", type=click.Choice(["full", "normal", "off"]), default="full", show_default=True, help="Durability of each commit, as for kvwire serve.")
@click.option("--http-base-port", type=click.IntRange(min=1, max=65535), default=DEFAULT_HTTP_BASE_PORT, show_default=True, help="Port of n1's REST API (its HTTP bridge); node i serves it on HTTP_BASE_PORT + i - 1.")
@click.option("--no-http", is_flag=True, help="Run no HTTP bridges.")
@click.option("--haproxy", "with_haproxy", is_flag=True, help="Also run haproxy with haproxy/kvwire.cfg in front (TCP :7000, HTTP :8088, stats :8080).")
@click.option("--tls", is_flag=True, help="TLS on every link (mutual, with client certificates), with the development certificates in DATA_DIR/tls, made by kvwire certs on first use.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- SERVE_OPTIONS...]")
def up(node_count: int, host: str, base_port: int, data_dir: Path, cluster_id: str, sync: str, http_base_port: int,
       no_http: bool, with_haproxy: bool, tls: bool, serve_args: tuple[str, ...]) -> None:
    """Run a local cluster in the foreground until Ctrl-C.

    Starts one `kvwire serve` process per node (by default n1-n3 on
    127.0.0.1:7379-7381, data in ./.kvwire/n1-n3), each with its HTTP bridge
    (the REST API, on 127.0.0.1:8000-8002), prints their endpoints, and
    copies each node's log lines to stderr behind its id. Options after
    `--` go to every node, e.g. `kvwire up -- --write-timeout 2`.
    """
    if base_port + node_count - 1 > 65535:
        raise click.UsageError(f"--base-port {base_port} leaves no room for {node_count} nodes below port 65536")
    if not no_http and http_base_port + node_count - 1 > 65535:
        raise click.UsageError(f"--http-base-port {http_base_port} leaves no room for {node_count} nodes below port 65536")
    nodes = [(f"n{i}", base_port + i - 1) for i in range(1, node_count + 1)]
    # node id -> port of its REST API; empty with --no-http.
    http_ports = {} if no_http else {node_id: http_base_port + i for i, (node_id, _) in enumerate(nodes)}
    clash = sorted(set(http_ports.values()) & {port for _, port in nodes})
    if clash:
        raise click.UsageError(f"port {clash[0]} would serve both a node and an HTTP bridge; move --http-base-port or --base-port")
    for node_id, port in nodes:
        _check_port_free(host, port, node_id)
    for node_id, port in http_ports.items():
        _check_port_free(host, port, f"the HTTP bridge of {node_id}", option="--http-base-port")
    members = ",".join(f"{node_id}={format_endpoint(host, port)}" for node_id, port in nodes)
    # A KVWIRE_CLUSTER in our environment would make a one-node `up` join a
    # cluster it didn't ask for; every other setting is passed explicitly.
    # KVWIRE_TLS_* exported for kvwire-cli would give every node a client's
    # certificate; --tls decides.
    env = {name: value for name, value in os.environ.items()
           if name != "KVWIRE_CLUSTER" and not name.startswith("KVWIRE_TLS")}
    certs = DevCerts(data_dir / "tls") if tls else None  # written once every check has passed
    secret_path = data_dir / "cluster.secret" if node_count > 1 else None  # made by _run
    children = []
    for node_id, port in nodes:
        command = [
            sys.executable, "-m", "kvwire", "serve",
            "--node-id", node_id,
            "--listen", format_endpoint(host, port),
            "--data-dir", str(data_dir / node_id),
            "--cluster-id", cluster_id,
            "--sync", sync,
        ]
        if node_count > 1:
            command += ["--cluster", members, "--cluster-secret-file", str(secret_path)]
        if node_id in http_ports:
            command += ["--http-listen", format_endpoint(host, http_ports[node_id])]
        if certs is not None:
            command += certs.node_args()
        children.append(ChildProcess(node_id, [*command, *serve_args], env=env))
    if with_haproxy:  # kvwire/cli/haproxy.py
        bridge_ports = [http_ports.get(node_id, http_base_port + i) for i, (node_id, _) in enumerate(nodes)]
        children.append(haproxy_child(host, [port for _, port in nodes], bridge_ports, data_dir, tls=certs))
    if certs is not None:
        _make_dev_certs(certs, host)
    sys.exit(_run(Supervisor(children), host, dict(nodes), http_ports, data_dir, cluster_id, certs=certs,
                  secret_path=secret_path))


def _run(supervisor: Supervisor, host: str, ports: dict[str, int], http_ports: dict[str, int], data_dir: Path, cluster_id: str,
         *, certs: DevCerts | None = None, secret_path: Path | None = None) -> int:
    """Start the nodes and watch them until a signal or a node's death; the exit status."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    # Installed before any node starts, so an early Ctrl-C still stops them all.
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if secret_path is not None:
            _make_cluster_secret(secret_path)
        supervisor.start()
        _say(f"kvwire up: cluster {cluster_id!r}, {len(ports)} node{'s' if len(ports) > 1 else ''}; node logs follow on stderr")
        for child in supervisor.children:
            if child.name in ports:  # a node, not haproxy
                _say(f"  {child.name}  {format_endpoint(host, ports[child.name])}  pid {child.pid}  data {data_dir / child.name}")
        return _watch(supervisor, host, ports, http_ports, stop, received, certs)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _watch(supervisor: Supervisor, host: str, ports: dict[str, int], http_ports: dict[str, int], stop: threading.Event,
           received: list[int], certs: DevCerts | None) -> int:
    waiting = set(ports)  # nodes not yet answering PING
    ssl_context = certs.client_context() if certs is not None else None
    ready_by = time.monotonic() + READY_TIMEOUT
    while not stop.wait(POLL_INTERVAL):
        exited = supervisor.exited()
        if exited and not stop.is_set():
            for child in exited:
                _error(f"node {child.name} exited unexpectedly ({_describe_status(child.returncode)}); its log is above")
            return _stop(supervisor, failed=True)
        if waiting:
            waiting = {node_id for node_id in waiting if not _answers_ping(host, ports[node_id], ssl_context=ssl_context)}
            if not waiting:
                endpoints = ",".join(format_endpoint(host, port) for port in ports.values())
                _say("kvwire up: every node answers. Use the cluster with:")
                _say(f"  export KVWIRE_ENDPOINTS={endpoints}" + (_client_tls_exports(certs) if certs else ""))
                _say("  kvwire-cli put greeting hello && kvwire-cli get greeting")
                if http_ports:
                    # Each bridge is bound before its node answers PING, so it is up too.
                    urls = [_rest_url(host, port, https=certs is not None) for port in http_ports.values()]
                    curl = f"curl --cacert {shlex.quote(str(certs.ca))}" if certs else "curl"
                    _say(f"REST API: {' '.join(urls)}")
                    _say(f"  {curl} -X PUT {urls[0]}/kv/greeting/ -d '{{\"value\": \"hello\"}}'")
                    _say(f"  {curl} {urls[0]}/kv/greeting/ && {curl} {urls[0]}/health/")
                _say("Ctrl-C stops the cluster.")
            elif time.monotonic() > ready_by:
                _error(f"{', '.join(sorted(waiting))} not answering after {READY_TIMEOUT:g} s; giving up")
                return _stop(supervisor, failed=True)
    name = signal.Signals(received[0]).name if received else "stop"
    _say(f"kvwire up: {name} received; stopping {len(ports)} node{'s' if len(ports) > 1 else ''}")
    return _stop(supervisor, failed=False)


def _stop(supervisor: Supervisor, *, failed: bool) -> int:
    unclean = []
    for child in supervisor.stop(STOP_GRACE):
        _error(f"node {child.name} did not stop within {STOP_GRACE:g} s and was killed")
        unclean.append(child)
    if not failed:
        for child in supervisor.children:
            if child not in unclean and child.returncode not in STOPPED_STATUSES:
                _error(f"node {child.name} stopped with {_describe_status(child.returncode)}; its log is above")
                unclean.append(child)
    if failed or unclean:
        return 1
    _say("kvwire up: every node stopped cleanly")
    return 0


def _make_cluster_secret(path: Path) -> None:
    """The local cluster's secret, made on first use and kept with its data (mode 600)."""
    try:
        write_secret_file(path)
    except FileExistsError:
        pass  # made by an earlier `kvwire up` on this data directory: the nodes keep it


def _make_dev_certs(certs: DevCerts, host: str) -> None:
    """The local cluster's development certificates, made on first use (as ``kvwire certs``) and kept with its data."""
    if not certs.existing():
        DevCerts.create(certs.directory, hosts=[host])
        _say(f"kvwire up: wrote development certificates to {certs.directory} (kvwire certs)")


def _client_tls_exports(certs: DevCerts) -> str:
    return "".join(f" {name}={shlex.quote(value)}" for name, value in certs.client_env().items())


def _rest_url(host: str, port: int, *, https: bool = False) -> str:
    return f"{'https' if https else 'http'}://{format_endpoint(host, port)}/kv-store/v1"


def _check_port_free(host: str, port: int, user: str, *, option: str = "--base-port") -> None:
    """Fail with one clear line now, rather than a node's log line and a torn-down cluster."""
    reason = bind_refusal(host, port)
    if reason == "already in use":
        reason = f"the port is already in use (another kvwire up or node?); pick another with {option}"
    if reason is not None:
        raise click.ClickException(f"cannot listen on {format_endpoint(host, port)} for {user}: {reason}")


def _answers_ping(host: str, port: int, timeout: float = 0.5, ssl_context: ssl.SSLContext | None = None) -> bool:
    try:
        with connect_socket(host, port, timeout=timeout, ssl_context=ssl_context) as sock:
            sock.sendall(encode(Ping(1)))
            codec = Connection(Side.CLIENT)
            while (event := codec.next_event()) is NEED_DATA:
                data = sock.recv(65536)
                if not data:
                    return False
                codec.receive_data(data)
            return isinstance(event, Pong)
    except (OSError, ValueError):
        return False


def _describe_status(status: int | None) -> str:
    if status is not None and status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def _say(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def _error(line: str) -> None:
    click.echo(f"kvwire up: {line}", err=True)
