"""``kvwire up``: a local cluster in the foreground, the README's main command.

Each node is its own ``kvwire serve`` process, as in production, with its
HTTP bridge (``--http-listen``) inside; their pids are printed, so
``kill -9``, ``kill -STOP`` and ``kill -CONT`` of one show failover for real.
A node that dies is restarted with backoff while the others (and HAProxy)
keep serving, as a process manager would in production; ``kvwire up ctl``
(kvwire/cli/control.py) stops, kills and starts one on purpose. Ctrl-C or
SIGTERM stops every node cleanly. A node refusing its options stops the
cluster with exit 1: restarting it could only fail the same way.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import shlex
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..protocol import Health, HealthReply, Ping, Pong
from ..protocol.address import format_endpoint, parse_host_port
from ..secret_file import write_secret_file
from ..server.datadir import DataDirInUseError, DataDirLock
from ..server.storage import DATABASE_FILE_NAME, DataDirError, is_claimed
from ..tls import TlsConfigError
from ..testing import ChildProcess, DevCerts
from .control import ControlError, ControlServer, check_no_live_up, ctl
from .exit_status import USAGE_ERROR_STATUS
from .haproxy import haproxy_child
from .main import checked_settings, serve
from .options import DirectoryPath, Seconds, usage_error
from .signals import STOP_SIGNALS
from .supervisor import STOPPED_STATUSES, Supervisor, bind_refusal
from .up_certs import prepare_dev_certs
from .up_probe import ClosedWithoutReply, NoAnswer, reply_of

DEFAULT_BASE_PORT = 7379
DEFAULT_HTTP_BASE_PORT = 8000
# Opening SQLite, checking it (quick_check) and binding take about 2 s with a
# million keys; a node that doesn't answer in this long is stuck, or its data
# far larger (--start-timeout), and the user should hear about it.
READY_TIMEOUT = 30.0
# A node lets requests in flight finish for up to 10 s (ServerConfig.shutdown_timeout).
STOP_GRACE = 15.0
POLL_INTERVAL = 0.1
# A `ctl start` waits this long for the main thread to start the node (it
# polls every POLL_INTERVAL, and a start takes milliseconds).
CTL_START_TIMEOUT = 10.0
# ... and then for the node to answer PING, so that a script's next command finds
# it serving: --start-timeout, but at most this, within ctl's 30 s wait for a
# reply (kvwire/cli/control.py).
CTL_ANSWER_TIMEOUT = 15.0
MAX_START_TIMEOUT = 3600.0
# kvwire serve variables each node must not share: `up` keeps them from its nodes.
NOT_FOR_EVERY_NODE = frozenset({"KVWIRE_CLUSTER", "KVWIRE_HTTP_LISTEN", "KVWIRE_METRICS_LISTEN", "KVWIRE_JOIN"})


def _check_data_dir_free(node_dir: Path) -> None:
    """Refuse at once a node directory another process holds (a `kvwire serve` started by
    hand): the node would exit, be restarted over and over, and `up` give up after 30 s
    saying only that it did not answer."""
    if not node_dir.is_dir():
        return
    try:
        DataDirLock(node_dir).acquire().release()
    except DataDirInUseError as exc:
        raise click.ClickException(str(exc)) from None
    except (DataDirError, OSError):
        pass  # the node's own start says what is wrong with it, as it does without up


# Not interspersed: everything from `ctl` on is ctl's (`kvwire up ctl stop --data-dir DIR n2`).
@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--nodes", "node_count", type=click.IntRange(min=1, max=99), default=3, show_default=True, help="How many nodes: n1, n2, ...")
@click.option("--host", default="127.0.0.1", show_default=True, callback=lambda ctx, param, value: _host(value),
              help="Address every node listens on.")
@click.option("--base-port", type=click.IntRange(min=1, max=65535), default=DEFAULT_BASE_PORT, show_default=True, help="Port of n1; node i listens on BASE_PORT + i - 1.")
@click.option("--data-dir", type=DirectoryPath(), default=Path(".kvwire"), show_default=True, help="Each node keeps its data in DATA_DIR/<node id>.")
@click.option("--cluster-id", default="kvwire", show_default=True, help="Cluster id the nodes share; clients naming another are refused.")
@click.option("--sync", type=click.Choice(["full", "normal", "off"]), default="full", show_default=True, help="Durability of each commit, as for kvwire serve.")
@click.option("--http-base-port", type=click.IntRange(min=1, max=65535), default=DEFAULT_HTTP_BASE_PORT, show_default=True, help="Port of n1's REST API (its HTTP bridge); node i serves it on HTTP_BASE_PORT + i - 1.")
@click.option("--no-http", is_flag=True, help="Run no HTTP bridges.")
@click.option("--haproxy", "with_haproxy", is_flag=True, help="Also run haproxy with haproxy/kvwire.cfg in front (TCP :7000, HTTP :8088, stats :8080).")
@click.option("--tls", is_flag=True, help="TLS on every link, with the development certificates in DATA_DIR/tls, made by kvwire certs on first use: mutual (client certificates) on the nodes' ports; the REST bridges serve HTTPS and ask no client certificate (give the nodes an --auth-file for tokens).")
@click.option("--start-timeout", type=Seconds(min=0, max=MAX_START_TIMEOUT, min_open=True), default=READY_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="How long every node (and haproxy) gets to answer at the start before up gives up and stops them; "
                   "`ctl start` waits this long for its node, at most 15 s.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- SERVE_OPTIONS... | ctl COMMAND...]")
@click.pass_context
def up(ctx: click.Context, node_count: int, host: str, base_port: int, data_dir: Path, cluster_id: str, sync: str, http_base_port: int,
       no_http: bool, with_haproxy: bool, tls: bool, start_timeout: float, serve_args: tuple[str, ...]) -> None:
    """Run a local cluster in the foreground until Ctrl-C.

    Starts one `kvwire serve` process per node (by default n1-n3 on
    127.0.0.1:7379-7381, data in ./.kvwire/n1-n3), each with its HTTP bridge
    (the REST API, on 127.0.0.1:8000-8002), prints their endpoints, and
    copies each node's log lines to stderr behind its id. Options after
    `--` go to every node, e.g. `kvwire up -- --write-timeout 2`; one that
    `kvwire serve` would refuse is a usage error before any node starts.

    A node that dies (try `kill -9 PID`) is restarted, after 0.2 s and
    longer if it keeps dying; the others keep serving. Exit status: 0 after
    Ctrl-C, SIGTERM or SIGHUP, 1 if a node refuses its options or can't start.

    \b
    From another terminal, control the running cluster (exit 0 done, 1 refused):
      kvwire up ctl status          each node: running, stopped or restarting
      kvwire up ctl stop n2         SIGTERM; n2 stays down until `start`
      kvwire up ctl kill n2         SIGKILL, a crash; n2 stays down until `start`
      kvwire up ctl start n2
    Add `--data-dir DIR` after `ctl COMMAND` if `up` was given one.
    """
    if serve_args[:1] == ("ctl",):
        _run_ctl(ctx, serve_args[1:])
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
    try:
        check_no_live_up(data_dir)  # before the ports: it is why they would be in use
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    for node_id, _ in nodes:
        _check_data_dir_free(data_dir / node_id)
    for node_id, port in nodes:
        _check_port_free(host, port, node_id)
    for node_id, port in http_ports.items():
        _check_port_free(host, port, f"the HTTP bridge of {node_id}", option="--http-base-port")
    members = ",".join(f"{node_id}={format_endpoint(host, port)}" for node_id, port in nodes)
    # A KVWIRE_CLUSTER in our environment would make a one-node `up` join a
    # cluster it didn't ask for; every other setting is passed explicitly.
    # KVWIRE_TLS_* exported for kvwire-cli would give every node a client's
    # certificate; --tls decides. One address or --join for every node would
    # fail all but the first (port in use) or make them wait on each other.
    # The rest (KVWIRE_AUTH_FILE, KVWIRE_WRITE_TIMEOUT...) reach every node.
    env = {name: value for name, value in os.environ.items()
           if name not in NOT_FOR_EVERY_NODE and not name.startswith("KVWIRE_TLS")}
    certs = DevCerts(data_dir / "tls") if tls else None  # written once every check has passed
    secret_path = data_dir / "cluster.secret" if node_count > 1 else None  # made by _run
    children = []
    for node_id, port in nodes:
        options = [
            "--node-id", node_id,
            "--listen", format_endpoint(host, port),
            "--data-dir", str(data_dir / node_id),
            "--cluster-id", cluster_id,
            "--sync", sync,
        ]
        if node_count > 1:
            options += ["--cluster", members, "--cluster-secret-file", str(secret_path)]
        if node_id in http_ports:
            options += ["--http-listen", format_endpoint(host, http_ports[node_id])]
        if certs is not None:
            options += certs.node_args()
        if not children:
            _check_serve_args(options, serve_args)
        children.append(_NodeChild(node_id, [sys.executable, "-m", "kvwire", "serve", *options, *serve_args],
                                   data_dir, [other for other, _ in nodes], env=env))
    if with_haproxy:  # kvwire/cli/haproxy.py
        bridge_ports = [http_ports.get(node_id, http_base_port + i) for i, (node_id, _) in enumerate(nodes)]
        children.append(haproxy_child(host, [port for _, port in nodes], bridge_ports, data_dir, tls=certs))
    if certs is not None:
        if prepare_dev_certs(certs, host, with_haproxy=with_haproxy, peers=node_count > 1):
            _say(f"kvwire up: wrote development certificates to {certs.directory} (kvwire certs)")
    sys.exit(_run(Supervisor(children), host, dict(nodes), http_ports, data_dir, cluster_id, certs=certs,
                  secret_path=secret_path, start_timeout=start_timeout))


def _run_ctl(ctx: click.Context, args: tuple[str, ...]) -> None:
    """`kvwire up ctl ...`: the options of `up` itself would be ignored, so they are refused."""
    given = [param.opts[0] for param in ctx.command.params
             if param.name != "serve_args" and ctx.get_parameter_source(param.name) is not ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"`kvwire up ctl` takes its own options, after the command (e.g. `kvwire up ctl status --data-dir DIR`); "
                               f"got {given[0]} before ctl")
    ctl.main(list(args), prog_name="kvwire up ctl")


class _NodeChild(ChildProcess):
    """A node of `up`. Each start whose data directory holds no node's database while
    another node's does (its disk was lost, or emptied by hand, or its first start
    was killed before its first commit) gives it ``--join``: started
    empty without it, the node would vote with nothing and could hide an acknowledged
    write that one peer alone holds (README "Self-healing", docs/operations.md)."""

    def __init__(self, node_id: str, command: list[str], data_dir: Path, node_ids: list[str], **kwargs: Any) -> None:
        super().__init__(node_id, **kwargs)
        self._command = command
        self._databases = {other: data_dir / other / DATABASE_FILE_NAME for other in node_ids}
        self.joining = False  # its last start was given --join

    @property
    def command(self) -> list[str]:
        return [*self._command, "--join"] if self.joining else self._command

    def start(self, *args: Any, **kwargs: Any) -> Any:
        own = self._databases[self.name]
        others = [path for name, path in self._databases.items() if name != self.name]
        # A database file is not enough: a first start killed before its first commit
        # leaves one that names no node, and the node would vote with nothing.
        self.joining = "--join" not in self._command and not is_claimed(own) and any(map(is_claimed, others))
        return super().start(*args, **kwargs)


# The options `up` sets for each node itself: given after `--` they would win (the last
# value does) and every node would take the same one, or not the one `up` serves and
# probes, and crash-loop meanwhile (an independent check ran `-- --listen 1.2.3.4:5`).
SET_BY_UP = {
    "node_id": "up names its nodes n1, n2, ... itself",
    "listen": "up gives each node its address: use --host and --base-port",
    "data_dir": "use kvwire up --data-dir (each node gets DIR/<node id>)",
    "cluster_id": "use kvwire up --cluster-id",
    "sync": "use kvwire up --sync",
    "cluster": "up names every member itself",
    "cluster_secret_file": "up makes the cluster secret and gives it to every node itself",
    "join": "up gives --join itself to a node whose data directory holds no node's database",
    "tls_cert": "use kvwire up --tls",
    "tls_key": "use kvwire up --tls",
    "tls_ca": "use kvwire up --tls",
    "http_listen": "use --http-base-port, or --no-http",
    "metrics_listen": "every node would take the same port; give each its own with kvwire serve",
}


def _check_serve_args(own: list[str], serve_args: tuple[str, ...]) -> None:
    """Read a node's command line (``own`` options, then ``serve_args``) as `kvwire serve` will,
    so that a stray argument or a bad option after `--` is refused now, before any node starts,
    not by every node in turn, and so are options that do not go together (--failure-timeout
    below twice --heartbeat-interval started every node to see each refuse it, exit 1). What
    only the node can check (its files, its ports) is left to it. An option `up` sets for
    each node itself is refused after `--`."""
    with serve.make_context("kvwire serve", list(serve_args), resilient_parsing=True) as given:
        for param in serve.params:
            if param.name in SET_BY_UP and given.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
                raise click.UsageError(f"{param.opts[0]} cannot be passed on to every node: {SET_BY_UP[param.name]}")
    what = f"the arguments passed on to kvwire serve ({shlex.join(serve_args)})" if serve_args else "its options"
    refused: str | None = None
    try:
        with serve.make_context("kvwire serve", [*own, *serve_args]) as given:
            try:
                checked_settings(given.params, read_files=False)
            except ValueError as exc:
                refused = usage_error(str(exc)).format_message()  # worded as serve words it: options, variables
    except click.ClickException as exc:
        refused = exc.format_message()
    if refused is not None:
        raise click.UsageError(f"every node would refuse {what}: {refused}")


def _run(supervisor: Supervisor, host: str, ports: dict[str, int], http_ports: dict[str, int], data_dir: Path, cluster_id: str,
         *, certs: DevCerts | None = None, secret_path: Path | None = None, start_timeout: float = READY_TIMEOUT) -> int:
    """Start the nodes and watch them until a signal or a configuration error; the exit status."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    # Installed before any node starts, so an early Ctrl-C still stops them all.
    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    control = None
    try:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            if secret_path is not None:
                _make_cluster_secret(secret_path)
            watcher = _Watcher(supervisor, host, ports, http_ports, data_dir, certs, start_timeout=start_timeout)
            control = ControlServer(data_dir, watcher.handle_control)
        except OSError as exc:  # a file where the directory should be, a read-only disk...
            where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != data_dir else ""
            _error(f"cannot use data directory {data_dir}: {exc.strerror or exc}{where}")
            return 1
        except (ControlError, TlsConfigError) as exc:  # client.pem or client.key will not load
            _error(str(exc))
            return 1
        supervisor.start(ports)  # HAProxy once they answer, so its first checks find them up
        _say(f"kvwire up: cluster {cluster_id!r}, {len(ports)} node{'s' if len(ports) > 1 else ''}; node logs follow on stderr")
        for child in supervisor.children:
            if child.name in ports:
                _say(watcher.node_line(child))
        return watcher.watch(stop, received)
    finally:
        if control is not None:
            control.close()  # first: no `ctl start` during the shutdown
        supervisor.stop(STOP_GRACE)  # done already, unless something raised: then leave no node behind
        _remove_haproxy_socket(supervisor, ports)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Watcher:
    """The loop of a running `up`: restarts, readiness, and the control socket's requests."""

    def __init__(self, supervisor: Supervisor, host: str, ports: dict[str, int], http_ports: dict[str, int],
                 data_dir: Path, certs: DevCerts | None, *, start_timeout: float = READY_TIMEOUT) -> None:
        self.supervisor = supervisor
        self.start_timeout = start_timeout
        self.host = host
        self.ports = ports
        self.http_ports = http_ports
        self.data_dir = data_dir
        self.certs = certs
        if certs is not None:
            certs.client_context()  # TlsConfigError now, before any node starts, if client.pem or client.key will not load
        self._answering_pid: dict[str, int] = {}  # node -> the pid that answered PING last
        self._no_answer: dict[str, str] = {}  # node -> why its current pid's last PING went unanswered
        self._announced = False  # "every node answers" printed
        self._balancer_started = False
        # `ctl start` requests, for the main thread: a child is tied to the thread
        # that starts it (Supervisor), and each request has a thread of its own.
        self._start_requests: queue.SimpleQueue[tuple[str, Future]] = queue.SimpleQueue()

    def node_line(self, child: ChildProcess) -> str:
        line = f"  {child.name}  {format_endpoint(self.host, self.ports[child.name])}  pid {child.pid}  data {self.data_dir / child.name}"
        if getattr(child, "joining", False):
            line += "  (--join: its data directory is empty and its peers' are not; it catches up before it votes)"
        return line

    def watch(self, stop: threading.Event, received: list[int]) -> int:
        ready_by = time.monotonic() + self.start_timeout
        while not stop.wait(POLL_INTERVAL):
            self._start_requested()
            for death in self.supervisor.reap():
                what = f"{'node ' if death.child.name in self.ports else ''}{death.child.name} exited unexpectedly ({_describe_status(death.status)}); its log is above"
                if death.restart_in is None:
                    refused = "its options" if death.status == USAGE_ERROR_STATUS else "its data directory or TLS files"
                    if not self._announced:  # a start every node may fail the same way
                        _error(f"{what}. It refused {refused}, so it is not restarted; stopping the cluster")
                        return _stop(self.supervisor, failed=True)
                    _error(f"{what}. It refused {refused}, so it is not restarted; it stays down until "
                           f"`kvwire up ctl start {death.child.name}`, and the others go on")
                    continue
                _error(f"{what}; restarting it in {death.restart_in:.1f} s")
            for child in self.supervisor.restart_due():
                _say(f"kvwire up: restarted {child.name} (restart {self._restarts(child.name)})")
                if child.name in self.ports:
                    _say(self.node_line(child))
            self._probe_new_pids()
            if not self._announced:
                waiting = [node_id for node_id in self.ports if not self._answers(node_id)]
                if not waiting and not self._balancer_started and self._every_node_has_quorum():
                    # Only now: started earlier, HAProxy's first checks fail (no answer, or
                    # no quorum yet) and it prints ALERTs and WARNINGs.
                    self.supervisor.start(child.name for child in self._balancers())
                    self._balancer_started = True
                waiting += [child.name for child in self._balancers() if not _admin_socket_answers(child)]
                if not waiting:
                    self._announce()
                elif time.monotonic() > ready_by:
                    why = "; ".join(f"{name} not answering after {self.start_timeout:g} s"
                                    + (f" ({self._no_answer[name]})" if name in self._no_answer else "") for name in waiting)
                    _error(f"{why}; giving up")
                    return _stop(self.supervisor, failed=True)
        name = signal.Signals(received[0]).name if received else "stop"
        running = sum(1 for state in self.supervisor.states() if state.name in self.ports and state.state == "running")
        _say(f"kvwire up: {name} received; stopping {running} running node{'' if running == 1 else 's'}")
        return _stop(self.supervisor, failed=False)

    def handle_control(self, request: dict) -> dict:
        """One `kvwire up ctl` request (on the control socket's thread); ControlError refuses it."""
        if request["command"] == "status":
            states = [{**asdict(state), "answers": state.state == "running" and self._answers_now(state.name)}
                      for state in self.supervisor.states()]
            return {"ok": True, "children": states}
        name = request.get("node")
        try:
            self.supervisor.child(name)
        except KeyError:
            names = ", ".join(child.name for child in self.supervisor.children)
            raise ControlError(f"unknown node {name!r}; this kvwire up runs {names}") from None
        return {"ok": True, "message": getattr(self, f"_ctl_{request['command']}")(name)}

    def _ctl_stop(self, name: str) -> str:
        was_running = self.supervisor.child(name).running
        killed = self.supervisor.stop_child(name, STOP_GRACE)
        if not was_running:
            message = f"{name} was not running"
        elif killed:
            message = f"{name} did not stop within {STOP_GRACE:g} s and was killed"
        else:
            message = f"{name} stopped ({_describe_status(self.supervisor.child(name).returncode)})"
        return self._held(message, name)

    def _ctl_kill(self, name: str) -> str:
        was_running = self.supervisor.child(name).running
        self.supervisor.kill_child(name)
        return self._held(f"{name} killed with SIGKILL" if was_running else f"{name} was not running", name)

    def _ctl_start(self, name: str) -> str:
        started: Future = Future()
        self._start_requests.put((name, started))
        try:
            try:
                child = started.result(timeout=CTL_START_TIMEOUT)
            except TimeoutError:
                if started.cancel():
                    raise ControlError(f"kvwire up did not get to starting {name} within {CTL_START_TIMEOUT:g} s; "
                                       "it may be stopping") from None
                child = started.result(timeout=CTL_START_TIMEOUT)  # the main thread took it up just now
        except RuntimeError as exc:  # the supervisor's refusal: running already, or up stopping
            raise ControlError(str(exc)) from None
        except ControlError:
            raise
        except Exception as exc:  # the program would not start (missing, out of file descriptors...)
            raise ControlError(f"{name} could not be started: {exc}") from None
        _say(f"kvwire up: started {name} (kvwire up ctl start)")
        if name not in self.ports:  # haproxy
            return f"{name} started, pid {child.pid}"
        _say(self.node_line(child))
        started_as = (f"{name} started with --join (its data directory was empty, its peers' are not), pid {child.pid}"
                      if getattr(child, "joining", False) else f"{name} started, pid {child.pid}")
        self._wait_answering(name, child, started_as)
        return started_as

    def _wait_answering(self, name: str, child: ChildProcess, started_as: str) -> None:
        """Wait until the node just started answers PING; ControlError if it exits first, or
        does not answer within --start-timeout (at most CTL_ANSWER_TIMEOUT): `ctl start` is
        not done until it serves."""
        timeout = min(self.start_timeout, CTL_ANSWER_TIMEOUT)
        deadline = time.monotonic() + timeout
        while True:
            why = self._ping(name)
            if why is None:
                return
            status = child.returncode
            if status is not None:
                raise ControlError(f"{name} exited as it started ({_describe_status(status)}); its log is in "
                                   "kvwire up's output")
            if time.monotonic() >= deadline:
                raise ControlError(f"{started_as}, but it does not answer PING after {timeout:g} s ({why}); "
                                   "it is left running, and its log is in kvwire up's output")
            time.sleep(POLL_INTERVAL)

    def _start_requested(self) -> None:
        """Run the `ctl start` requests waiting (on the main thread)."""
        while True:
            try:
                name, started = self._start_requests.get_nowait()
            except queue.Empty:
                return
            if not started.set_running_or_notify_cancel():
                continue  # its requester gave up waiting
            try:
                started.set_result(self.supervisor.start_child(name))
            except Exception as exc:  # for the requester to report: up and the other children go on
                started.set_exception(exc)

    def _held(self, message: str, name: str) -> str:
        message = f"{message}; it stays down until `kvwire up ctl start {name}`"
        _say(f"kvwire up: {message}")
        return message

    def _restarts(self, name: str) -> int:
        return next(state.restarts for state in self.supervisor.states() if state.name == name)

    def _answers_now(self, name: str) -> bool:
        """Whether ``name`` answers PING now, asked afresh: a node that answered once may
        have hung since (SIGSTOP) and still be running."""
        if name not in self.ports:
            return self._answers(name)
        return self._ping(name) is None

    def _answers(self, node_id: str) -> bool:
        child = self.supervisor.child(node_id)
        return child.running and self._answering_pid.get(node_id) == child.pid

    def _probe_new_pids(self) -> None:
        """PING each node whose current process hasn't answered yet."""
        for node_id in self.ports:
            child = self.supervisor.child(node_id)
            if child.running and self._answering_pid.get(node_id) != child.pid:
                why = self._ping(node_id)
                if why is not None:
                    self._no_answer[node_id] = why
                else:
                    self._no_answer.pop(node_id, None)
                    self._answering_pid[node_id] = child.pid
                    if self._announced:
                        _say(f"kvwire up: {node_id} answers again (pid {child.pid})")

    def _every_node_has_quorum(self) -> bool:
        """With balancers to start: whether every node's HEALTH says it has a quorum,
        which HAProxy's checks require (haproxy/kvwire.cfg)."""
        if not self._balancers():
            return True
        for node_id in self.ports:
            try:
                reply = self._request(node_id, Health(1), HealthReply)
            except NoAnswer:
                return False
            if reply.health.get("cluster", {}).get("has_quorum") is not True:
                return False
        return True

    def _ping(self, node_id: str) -> str | None:
        """None if ``node_id`` answers PING now, else why not, in a few words."""
        try:
            self._request(node_id, Ping(1), Pong)
        except NoAnswer as exc:
            return str(exc)
        return None

    def _request(self, node_id: str, request: Any, reply_type: type) -> Any:
        """The node's reply to ``request``; NoAnswer saying why there is none.

        The client certificate is loaded afresh each time: after `kvwire certs DIR/tls --force`
        a node started since presents the new set's certificate, which only the new CA verifies."""
        ssl_context = None
        if self.certs is not None:
            try:
                ssl_context = self.certs.client_context()
            except TlsConfigError as exc:  # removed or being replaced just now
                raise NoAnswer(str(exc)) from None
        try:
            return reply_of(self.host, self.ports[node_id], request, reply_type, ssl_context=ssl_context)
        except ClosedWithoutReply as exc:
            if self.certs is None:
                raise
            # In TLS 1.3 a node checks our certificate after our side of the handshake is done,
            # and a refusal reaches us as this; the node's log line says what it refused.
            raise NoAnswer(f"{exc}, as a node does when it refuses the client certificate "
                            f"{self.certs.directory / 'client.pem'}; its log says why") from None

    def _nodes_have_an_auth_file(self) -> bool:
        """Whether the nodes run with --auth-file (after `--`, or from KVWIRE_AUTH_FILE): the
        commands printed to try the cluster then need a token (REST: Authorization: Bearer)."""
        nodes = [child for child in self.supervisor.children if child.name in self.ports]
        return any(arg == "--auth-file" or arg.startswith("--auth-file=") for child in nodes for arg in child.command) \
            or bool(os.environ.get("KVWIRE_AUTH_FILE"))

    def _balancers(self) -> list[ChildProcess]:
        """HAProxy with --haproxy: the children that are not nodes."""
        return [child for child in self.supervisor.children if child.name not in self.ports]

    def _announce(self) -> None:
        self._announced = True
        certs, host = self.certs, self.host
        endpoints = ",".join(format_endpoint(host, port) for port in self.ports.values())
        _say("kvwire up: every node answers. Use the cluster with:")
        _say(f"  export KVWIRE_ENDPOINTS={endpoints}" + (_client_tls_exports(certs) if certs else ""))
        if self._nodes_have_an_auth_file():
            _say("  export KVWIRE_TOKEN=...  # a token of the nodes' auth file (or KVWIRE_TOKEN_FILE, a file holding one)")
        _say("  kvwire-cli put greeting hello && kvwire-cli get greeting")
        if self.http_ports:
            # Each bridge is bound before its node answers PING, so it is up too.
            urls = [_rest_url(host, port, https=certs is not None) for port in self.http_ports.values()]
            curl = f"curl --cacert {shlex.quote(str(certs.ca))}" if certs else "curl"
            _say(f"REST API: {' '.join(urls)}")
            if self._nodes_have_an_auth_file():
                curl += ' -H "Authorization: Bearer $KVWIRE_TOKEN"'
            _say(f"  {curl} -X PUT {urls[0]}/kv/greeting/ -d '{{\"value\": \"hello\"}}'")
            _say(f"  {curl} {urls[0]}/kv/greeting/ && {curl} {urls[0]}/health/")
        _say("Ctrl-C stops the cluster; `kvwire up ctl --help` stops, kills and starts one node.")


def _stop(supervisor: Supervisor, *, failed: bool) -> int:
    running = [child for child in supervisor.children if child.running]  # not those down on purpose or never started
    unclean = []
    for child in supervisor.stop(STOP_GRACE):
        _error(f"node {child.name} did not stop within {STOP_GRACE:g} s and was killed")
        unclean.append(child)
    if not failed:
        for child in running:
            if child not in unclean and child.returncode not in STOPPED_STATUSES:
                _error(f"node {child.name} stopped with {_describe_status(child.returncode)}; its log is above")
                unclean.append(child)
    if failed or unclean:
        return 1
    _say("kvwire up: every node stopped cleanly")
    return 0


def _admin_socket(child: ChildProcess) -> Path | None:
    """HAProxy's admin socket (haproxy/kvwire.cfg's ``stats socket``), bound with its frontends."""
    path = (child.env or {}).get("KVWIRE_LB_SOCKET")
    return Path(path) if path else None


def _admin_socket_answers(child: ChildProcess) -> bool:
    path = _admin_socket(child)
    if path is None or not child.running:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _remove_haproxy_socket(supervisor: Supervisor, ports: dict[str, int]) -> None:
    """HAProxy leaves its admin socket behind when it exits."""
    for child in supervisor.children:
        path = _admin_socket(child) if child.name not in ports else None
        if path is not None and not child.running and path.is_socket():
            path.unlink(missing_ok=True)


def _host(text: str) -> str:
    """``--host``, checked as the nodes will take it: an empty or malformed one made
    up print its table, start every node on another address or none, and give up 30 s
    later on a name lookup of the malformed host (a probe, 2026-12-07)."""
    host = _unbracketed(text)
    if not host:
        raise click.BadParameter("is empty: give the address every node listens on, such as 127.0.0.1")
    if any(character.isspace() for character in host):
        raise click.BadParameter(f"{text!r} holds a space")
    if "://" in host:
        raise click.BadParameter(f"{text!r}: give the host alone, without a scheme")
    if "[" in host or "]" in host:
        raise click.BadParameter(f"{text!r}: unbalanced brackets around the host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise click.BadParameter(f"{text!r}: give the host alone, without a port (--base-port sets the ports)") \
                from None
    try:
        parse_host_port(format_endpoint(host, 1))
    except ValueError as exc:
        raise click.BadParameter(str(exc).replace(f"{format_endpoint(host, 1)!r}", repr(text), 1)) from None
    return host


def _unbracketed(host: str) -> str:
    """``[::1]`` as ``::1``: up writes an IPv6 address in brackets itself where an address
    and a port meet, and a bracketed one would be bracketed twice ("[[::1]]:7379")."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def _make_cluster_secret(path: Path) -> None:
    """The local cluster's secret, made on first use and kept with its data (mode 600)."""
    try:
        write_secret_file(path)
    except FileExistsError:
        pass  # made by an earlier `kvwire up` on this data directory: the nodes keep it


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


def _describe_status(status: int | None) -> str:
    if status is not None and status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def _say(line: str) -> None:
    try:
        click.echo(line)
        sys.stdout.flush()
    except (OSError, ValueError):
        # A closed terminal (SIGHUP's cause): the nodes must still be stopped, cleanly,
        # and what is left in the buffer must not fail the exit (status 120).
        sys.stdout = open(os.devnull, "w")


def _error(line: str) -> None:
    try:
        click.echo(f"kvwire up: {line}", err=True)
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.stderr = open(os.devnull, "w")  # as in _say
