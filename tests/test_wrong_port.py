"""The wrong port, for real: a kvwire client on the REST bridge's port, HTTP on a node's.

A node serving its bridge in-process (``kvwire serve --http-listen``) has two
ports side by side, and each is easy to mistake for the other. Either way the
error names HTTP and says which port speaks what (docs/protocol.md section 2).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import kvwire
from kvwire.protocol import CLOSED, Connection, ErrorCode, ErrorReply, KvwireConnectionError, Side
from kvwire.testing import NodeProcess, free_port, wait_for
from kvwire.testing.bridge import rest_answers

CLI = [sys.executable, "-m", "kvwire.cli.client"]


@pytest.fixture(scope="module")
def node_with_bridge(tmp_path_factory):
    """A node and its in-process bridge; yields the node and the bridge's address."""
    http_address = f"127.0.0.1:{free_port()}"
    data_dir = tmp_path_factory.mktemp("wrong_port") / "n1"
    with NodeProcess("n1", data_dir=data_dir, extra_args=["--sync", "off", "--http-listen", http_address]) as node:
        wait_for(lambda: rest_answers(f"http://{http_address}"), timeout=15, what=f"the bridge on {http_address}")
        yield node, http_address


def test_client_on_the_bridge_port_names_http_and_the_kvwire_port(node_with_bridge):
    _, http_address = node_with_bridge
    with kvwire.Client(http_address, timeout=5) as client:
        with pytest.raises(KvwireConnectionError) as info:
            client.get("k")
    message = str(info.value)
    assert "looks like an HTTP server" in message and "not a kvwire node" in message
    assert "--listen port (7379 by default)" in message and "bridge's port" in message
    assert http_address in message


def test_cli_on_the_bridge_port_prints_the_hint_in_one_line(node_with_bridge):
    _, http_address = node_with_bridge
    env = {name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")}
    result = subprocess.run(
        [*CLI, "--endpoints", http_address, "get", "k"], capture_output=True, text=True, timeout=60, env=env
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 3, result.stderr  # "no node reachable or answering sensibly"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvwire-cli: ")
    assert "looks like an HTTP server" in lines[0] and "--listen port (7379 by default)" in lines[0]


def test_http_request_on_the_node_port_gets_an_error_naming_the_bridge(node_with_bridge):
    node, _ = node_with_bridge
    codec = Connection(Side.CLIENT)
    with socket.create_connection((node.host, node.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while True:  # the node answers, then closes the connection
            data = sock.recv(65536)
            codec.receive_data(data)
            if not data:
                break
    reply = codec.next_event()
    assert isinstance(reply, ErrorReply)
    assert (reply.id, reply.code) == (None, ErrorCode.TOO_LARGE)
    assert "looks like an HTTP request" in reply.message and "'GET '" in reply.message
    assert "HTTP bridge" in reply.message and "kvwire serve --http-listen" in reply.message
    assert "kvwire bridge" in reply.message
    assert codec.next_event() is CLOSED
    assert node.ping(), "one wrong connection leaves the node serving others"


def _server(greeting: bytes | None):
    """A TCP server on loopback that greets each connection with ``greeting``, or, with
    None, sends back whatever it is sent (an echo server); closed with the test."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one(connection: socket.socket) -> None:
        with connection:
            if greeting is not None:
                connection.sendall(greeting)
            while data := connection.recv(65536):
                if greeting is None:
                    connection.sendall(data)

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=serve_one, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


@pytest.mark.parametrize("greeting, said", [
    (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", "this looks like an SSH server, not a kvwire node: it greets with 'SSH-'"),
    (None, "unknown reply op 1 (HELLO, a request's: the other side sends back what it is sent, as an echo server"),
], ids=["ssh", "echo"])
def test_a_client_pointed_at_another_kind_of_server_is_told_what_it_looks_like(greeting, said):
    """They said only "frame of 1397966893 bytes exceeds the limit" and "unknown reply op 1"
    (a client probe)."""
    with _server(greeting) as listener:
        address = "127.0.0.1:%d" % listener.getsockname()[1]
        with kvwire.Client(address, timeout=3) as client:
            with pytest.raises(KvwireConnectionError) as info:
                client.ping()
    assert said in str(info.value), str(info.value)
