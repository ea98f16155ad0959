"""The control socket of a running ``kvwire up``, and ``kvwire up ctl``, its client.

``kvwire up`` listens on the Unix socket DATA_DIR/up.sock (mode 600, like the
cluster secret beside it: whoever can stop nodes must own the data) and removes
it on exit. One request per connection, a line of JSON each way:

    {"command": "stop", "node": "n2"}   ->  {"ok": true, "message": "n2 stopped"}
    {"command": "status"}               ->  {"ok": true, "children": [{"name": "n1", ...}, ...]}
    anything refused                    ->  {"ok": false, "error": "unknown node 'n9'; ..."}

The socket doubles as the data directory's lock: a second ``kvwire up`` that
finds a live socket there refuses to start; one left by a killed ``up`` is
stale (connection refused) and is replaced.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import sys
import threading
from pathlib import Path
from typing import Callable

import click

from .options import DirectoryPath

SOCKET_NAME = "up.sock"
COMMANDS = ("status", "stop", "kill", "start")
# A request is one short line; anything longer is not ours.
MAX_LINE_BYTES = 4096
# A client that connects and says nothing mustn't hold a thread for long.
REQUEST_READ_TIMEOUT_S = 5.0
# `stop` waits for the node's clean shutdown: up to 15 s (kvwire up's STOP_GRACE), then a kill.
REPLY_TIMEOUT_S = 30.0


class ControlError(Exception):
    """A request refused, or no ``kvwire up`` to send it to; the message is one line for the user."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


Handler = Callable[[dict], dict]


class ControlServer:
    """Serves ``handle(request) -> reply`` on DATA_DIR/up.sock, each connection on its own thread.

    ``handle`` raises :class:`ControlError` to refuse a request.
    """

    def __init__(self, data_dir: Path, handle: Handler) -> None:
        self.path = socket_path(data_dir)
        check_no_live_up(data_dir)
        self.path.unlink(missing_ok=True)  # stale: left by an `up` that was killed
        try:
            self._server = _Server(str(self.path), _RequestHandler)
        except OSError as exc:  # bound by a second `up` just now, or a path too long for AF_UNIX (108 bytes)
            raise ControlError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        os.chmod(self.path, 0o600)
        self._server.handle = handle
        self._thread = threading.Thread(target=self._server.serve_forever, name="kvwire up control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True  # a slow `ctl stop` never holds up our exit
    handle: Handler


class _RequestHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.connection.settimeout(REQUEST_READ_TIMEOUT_S)
        try:
            request = json.loads(self.rfile.readline(MAX_LINE_BYTES))
            if not isinstance(request, dict) or request.get("command") not in COMMANDS:
                raise ControlError(f"not a request: a JSON object with a command, one of {', '.join(COMMANDS)}")
            if request["command"] != "status" and not isinstance(request.get("node"), str):
                # A list or an object here was looked up as a name: a TypeError, no reply.
                raise ControlError(f"not a request: {request['command']} needs \"node\", a node's name")
            reply = self.server.handle(request)
        except ControlError as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, OSError, RecursionError) as exc:  # not JSON (or nested too deeply), or the client went silent
            reply = {"ok": False, "error": f"bad request: {exc}"}
        try:
            self.wfile.write(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass  # the client gave up waiting


def check_no_live_up(data_dir: Path) -> None:
    """ControlError if a ``kvwire up`` answers on DATA_DIR/up.sock: one data directory, one ``up``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(socket_path(data_dir)))
        except OSError:
            return
    raise ControlError(
        f"another kvwire up is running on data directory {data_dir} (it listens on {socket_path(data_dir)}); "
        f"stop it first, control it with `kvwire up ctl`, or pick another --data-dir")


# kvwire up closes its socket first when it stops, so a request caught by that gets no reply.
_NO_REPLY = ("kvwire up on {path} closed the connection without a reply (it is stopping, or stopped): "
             "the request may not have been carried out; `kvwire up ctl status` says what runs")


def send(data_dir: Path, request: dict) -> dict:
    """The reply of the ``kvwire up`` running on ``data_dir``; ControlError if there is none or it refuses."""
    path = socket_path(data_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(REPLY_TIMEOUT_S)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as replies:
                line = replies.readline()
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no kvwire up is running for data directory {data_dir} (nothing listens on {path})") from None
    except (ConnectionResetError, BrokenPipeError):
        raise ControlError(_NO_REPLY.format(path=path)) from None
    except TimeoutError:
        # Sent, and unanswered: a hung `up` (stopped, say) still carries it out once it
        # runs again (a probe saw a `ctl kill` do so after this error).
        raise ControlError(f"kvwire up on {path} did not answer within {REPLY_TIMEOUT_S:g} s (it is hung or "
                           "stopped): the request may yet be carried out; `kvwire up ctl status` says what "
                           "runs") from None
    except OSError as exc:
        raise ControlError(f"talking to kvwire up on {path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(_NO_REPLY.format(path=path)) from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "refused, with no reason given"))
    return reply


# --- kvwire up ctl ----------------------------------------------------------------------------

_DATA_DIR_OPTION = click.option(
    "--data-dir", type=DirectoryPath(), default=Path(".kvwire"), show_default=True,
    help="The data directory of the running kvwire up.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def ctl() -> None:
    """Control a running `kvwire up` through DATA_DIR/up.sock.

    Exit status: 0 done; 1 refused (unknown node, already running), not done
    (a node started that exits, or does not answer PING within 15 s), or no
    `kvwire up` running on that data directory; 2 bad usage; 130 interrupted
    while waiting for the answer (the request may have been carried out).
    """


@ctl.command()
@_DATA_DIR_OPTION
def status(data_dir: Path) -> None:
    """Each node (and haproxy): running, stopped, or restarting, with its pid."""
    for child in _send(data_dir, {"command": "status"})["children"]:
        pid = f"pid {child['pid']}" if child["pid"] is not None else "-"
        answers = "answers PING" if child.get("answers") else ""
        click.echo(f"{child['name']:<8} {child['state']:<11} {pid:<10} restarts {child['restarts']:<3} {answers}".rstrip())


def _node_command(name: str, summary: str) -> None:
    @ctl.command(name, help=summary)
    @click.argument("node")
    @_DATA_DIR_OPTION
    def command(node: str, data_dir: Path) -> None:
        click.echo(_send(data_dir, {"command": name, "node": node})["message"])


_node_command("stop", "Stop NODE cleanly (SIGTERM); it stays down until `start`.")
_node_command("kill", "Kill NODE with SIGKILL, as a crash; it stays down until `start`.")
_node_command("start", "Start NODE again after `stop` or `kill` (or now, if it awaits a restart).")


def _send(data_dir: Path, request: dict) -> dict:
    try:
        return send(data_dir, request)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        # click's own "Aborted!" exited 1, the status of a refusal, and said nothing of the
        # request, which `up` may have carried out already (a probe saw both happen).
        click.echo("interrupted: the request may or may not have been carried out; `kvwire up ctl status` "
                   "says what runs", err=True)
        sys.exit(128 + signal.SIGINT)
