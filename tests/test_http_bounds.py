"""The bridge's bounds (http_bridge/bounds.py): connections, idle time, a request's time to arrive.

Real ``kvwire bridge`` processes in front of a real node; the clients are raw
sockets, so that a test can hold a connection idle, or send half a request
and stop, as a slow-loris client does.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import time

import pytest
from rest_helpers import PREFIX, BridgeProcess, http, read_response

from kvwire.http_bridge import BridgeConfig
from kvwire.http_bridge.linger import LINGER_SECONDS
from kvwire.testing import NodeProcess, free_port
from kvwire.testing.node import wait_for


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with NodeProcess("n1", data_dir=tmp_path_factory.mktemp("bounds") / "n1", extra_args=["--sync", "off"]) as node:
        yield node


def bridge(node, tmp_path, *args: str) -> BridgeProcess:
    return BridgeProcess([node.address], log_path=tmp_path / "bridge.log", args=list(args))


def request(method: str, path: str, body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if method == "PUT" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{length}\r\n".encode() + body


KEY_GET = request("GET", f"{PREFIX}/kv/absent/")  # the fast path's, when it is on
HEALTH_GET = request("GET", f"{PREFIX}/health/")  # always aiohttp's: the connection is handed over


def metric(running: BridgeProcess, name: str) -> float:
    """One unlabelled sample from the bridge's /metrics."""
    for line in http("GET", f"{running.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in the bridge's /metrics")


class Client:
    """One raw connection to the bridge, kept open between requests."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.stream = self.sock.makefile("rb")

    def exchange(self, data: bytes):
        self.sock.sendall(data)
        return read_response(self.stream)

    def silent_for(self, seconds: float) -> bool:
        """Whether the bridge sends nothing and does not close for ``seconds``
        (the pace of a slow client, and an assertion that the bridge let it be)."""
        return not select.select([self.sock], [], [], seconds)[0]

    def closed_by_bridge(self, timeout: float) -> bool:
        """Whether the bridge closes this connection within ``timeout`` s (it sends nothing first)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def served_client(port: int, data: bytes, status: int) -> Client:
    """A connection whose request ``data`` was answered ``status``. The connection
    of wait_ready's probe is counted until the bridge has seen it close, a moment
    after its answer: a 503 until then is that, and the connection is tried again."""
    found: list[Client] = []

    def answered() -> bool:
        client = Client(port)
        answer = client.exchange(data)
        if answer.status == 503:
            client.close()
            return False
        assert answer.status == status, answer
        found.append(client)
        return True

    wait_for(answered, timeout=10, what="a connection answered")
    return found[0]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp-only"])
def test_connections_past_max_connections_get_503_and_the_next_after_a_close_is_served(node, tmp_path, fast_path):
    args = ["--max-connections", "3", *([] if fast_path else ["--no-fast-path"])]
    with bridge(node, tmp_path, *args) as running:
        running.wait_ready()
        clients: list[Client] = []
        try:
            # Each answered, so each is counted: two on the key routes, one handed to aiohttp.
            for data, status in ((KEY_GET, 404), (KEY_GET, 404), (HEALTH_GET, 200)):
                clients.append(served_client(running.port, data, status))
            with socket.create_connection(("127.0.0.1", running.port), timeout=10) as extra:
                stream = extra.makefile("rb")
                refused = read_response(stream)
                assert refused.status == 503, refused
                assert "too many connections to this bridge (3, its --max-connections)" in json.loads(refused.body)["error"]
                assert stream.read() == b""  # closed, without reading a request
            clients.pop(2).close()  # the one aiohttp serves: counted until it closes

            def served() -> bool:
                with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
                    sock.sendall(KEY_GET)
                    return read_response(sock.makefile("rb")).status == 404

            wait_for(served, timeout=10, what="a connection served once one of the three closed")
            assert [client.exchange(KEY_GET).status for client in clients] == [404, 404]  # the others untouched
            # Two clients and the scrape, once the bridge has seen the others close.
            wait_for(lambda: metric(running, "kvwire_http_open_connections") == 3, timeout=10,
                     what="the bridge counting its two clients and the scrape")
        finally:
            for client in clients:
                client.close()
        assert "refusing a connection: 3 open, the limit (--max-connections)" in running.log()
        assert metric(running, "kvwire_http_connections_refused_total") >= 1  # and any while the probe lingered


def test_a_refused_client_still_sending_its_request_reads_the_503_not_a_reset(node, tmp_path):
    """A connection past --max-connections that sends a 16 MiB PUT at once (more
    than loopback's socket buffers hold). Before the bridge read and dropped what a
    refused client still sends (a lingering close), it closed with those bytes
    unread, the kernel reset the connection, and the client's send failed with
    ECONNRESET or EPIPE before it could read the 503."""
    with bridge(node, tmp_path, "--max-connections", "1") as running:
        running.wait_ready()
        held = served_client(running.port, KEY_GET, 404)
        try:
            body = b"x" * (16 << 20)
            with socket.create_connection(("127.0.0.1", running.port), timeout=10) as extra:
                extra.sendall(request("PUT", f"{PREFIX}/kv/big/", body))
                refused = read_response(extra.makefile("rb"))
            assert refused.status == 503, refused
            assert "its --max-connections" in json.loads(refused.body)["error"]
            assert held.exchange(KEY_GET).status == 404  # the connection held is untouched
            # A refused client that neither stops sending nor closes is closed at
            # LINGER_SECONDS: then what it sends is answered with a reset.
            with socket.create_connection(("127.0.0.1", running.port), timeout=10) as lingering:
                assert read_response(lingering.makefile("rb")).status == 503
                refused_at = time.monotonic()

                def reset() -> bool:
                    try:
                        lingering.send(b"x")  # dropped while the bridge lingers; once it has closed, reset
                    except (ConnectionResetError, BrokenPipeError):
                        return True
                    return False

                wait_for(reset, timeout=10, what="the bridge closing a refused connection at its linger's end")
                assert time.monotonic() - refused_at >= LINGER_SECONDS * 0.9
        finally:
            held.close()


@pytest.mark.parametrize("first", [KEY_GET, HEALTH_GET], ids=["fast-path", "handed-over"])
def test_an_idle_connection_is_closed_after_idle_timeout_and_not_before(node, tmp_path, first):
    with bridge(node, tmp_path, "--idle-timeout", "1") as running:
        running.wait_ready()
        client = Client(running.port)
        try:
            answered = time.monotonic()
            assert client.exchange(first).status in (200, 404)
            assert client.silent_for(0.5)  # well inside the second
            assert client.closed_by_bridge(timeout=10)
            assert time.monotonic() - answered >= 0.9
        finally:
            client.close()


@pytest.mark.parametrize("served_by", ["fast-path", "aiohttp"])
def test_a_request_still_being_answered_is_not_cut_off_by_idle_timeout(node, tmp_path, served_by):
    """The node hung (SIGSTOP): the PUT waits out the bridge's --timeout (3 s), twice
    --idle-timeout and three times --request-timeout, and gets its 504 rather than a
    closed connection or a 408; the idle time then counts from that answer, not from
    the request."""
    with bridge(node, tmp_path, "--idle-timeout", "1.5", "--timeout", "3", "--request-timeout", "1",
                *(["--no-fast-path"] if served_by == "aiohttp" else [])) as running:
        running.wait_ready()
        client = Client(running.port)
        node.send_signal(signal.SIGSTOP)
        try:
            answer = client.exchange(request("PUT", f"{PREFIX}/kv/slow/", b'{"value": 1}'))
            assert answer.status == 504, answer
            node.send_signal(signal.SIGCONT)
            assert client.silent_for(0.5)
            assert client.exchange(KEY_GET).status == 404
        finally:
            node.send_signal(signal.SIGCONT)
            client.close()


@pytest.mark.parametrize("served_by", ["fast-path", "aiohttp"])
def test_a_client_that_reads_none_of_its_answers_is_dropped_after_idle_timeout(node, tmp_path, served_by):
    """A REST probe pipelined GETs of a 1 MiB value on every one of --max-connections
    and read none of the answers: neither timeout applied while the bridge's writes
    were held back, the connections stayed for good, and every other client was
    answered 503. A client reading nothing for --idle-timeout is now dropped."""
    from kvwire import Client as KvClient

    with KvClient(node.address) as writer:
        writer.put("big", "x" * 1_000_000)
    big_get = request("GET", f"{PREFIX}/kv/big/")
    with bridge(node, tmp_path, "--idle-timeout", "1", "--request-timeout", "1", "--max-connections", "2",
                *(["--no-fast-path"] if served_by == "aiohttp" else [])) as running:
        running.wait_ready()
        hogs = []
        try:
            wait_for(lambda: http("GET", f"{running.url}{PREFIX}/kv/big/").status == 200, timeout=10,
                     what="wait_ready's connection gone")
            for _ in range(2):
                hog = socket.socket()
                hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                hog.connect(("127.0.0.1", running.port))
                hog.sendall(big_get * 20)  # and reads nothing, ever
                hogs.append(hog)
            started = time.monotonic()
            assert http("GET", f"{running.url}{PREFIX}/kv/big/").status == 503  # the two hold both
            wait_for(lambda: http("GET", f"{running.url}{PREFIX}/kv/big/").status == 200, timeout=15,
                     what="the readers of nothing dropped, their connections free")
            assert time.monotonic() - started >= 0.9  # not before they had their --idle-timeout
            assert "its client read none of its answers for 1 s (--idle-timeout)" in running.log()
        finally:
            for hog in hogs:
                hog.close()


LORIS_PUT = request("PUT", f"{PREFIX}/kv/loris/", b'{"value": "' + b"x" * 80 + b'"}')


@pytest.mark.parametrize("how", ["head-then-silence", "body-cut-short", "one-byte-at-a-time"])
@pytest.mark.parametrize("served_by", ["fast-path", "aiohttp", "aiohttp-handed-over"])
def test_a_request_that_does_not_arrive_whole_within_request_timeout_gets_408(node, tmp_path, how, served_by):
    """Each way a request can come too slowly, on each kind of connection: the fast
    path's; one aiohttp serves from the start (--no-fast-path), where a handler reads
    the body; and one the fast path hands to aiohttp: at its head's end (a PUT with
    ``Expect: 100-continue``) or, trickled, at its second byte (a POST). aiohttp alone
    times nothing while a request arrives."""
    put = LORIS_PUT
    if served_by == "aiohttp-handed-over":
        if how == "one-byte-at-a-time":
            put = put.replace(b"PUT ", b"POST ", 1)
        else:
            put = put.replace(b"Host: localhost\r\n", b"Host: localhost\r\nExpect: 100-continue\r\n")
    with bridge(node, tmp_path, "--request-timeout", "1", *(["--no-fast-path"] if served_by == "aiohttp" else [])) as running:
        running.wait_ready()
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            began = time.monotonic()
            if how == "head-then-silence":
                sock.sendall(put[:put.index(b"\r\n\r\n") + 4])
            elif how == "body-cut-short":
                sock.sendall(put[:-30])
            else:
                # Bytes keep coming, each well inside the timeout: the request as a whole is late.
                # The bridge must answer while they still come: before the 14 s they would take.
                # Each byte 0.1 s after the last, unless the bridge has answered meanwhile.
                sent = 0
                while sent < len(put) - 1 and time.monotonic() - began < 5:
                    try:
                        sock.sendall(put[sent:sent + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        break  # closed after its answer, which is read below
                    sent += 1
                    if select.select([sock], [], [], 0.1)[0]:
                        break
                assert time.monotonic() - began < 3, "the bridge let the trickle go on"
            sock.settimeout(10)
            stream = sock.makefile("rb")
            answer = read_response(stream)
            if answer.status == 100:  # aiohttp's answer to the Expect, once its handler reads the body
                answer = read_response(stream)
            assert answer.status == 408, answer
            expected = ("the request's head did not arrive whole within 1 s" if how == "one-byte-at-a-time"
                        else "the request's body stopped arriving for 1 s")
            assert f"{expected} (--request-timeout)" in json.loads(answer.body)["error"]
            assert answer.headers.get("connection") == "close"
            assert time.monotonic() - began >= 0.9
            assert stream.read() == b""
        assert "--request-timeout" in running.log()
        assert metric(running, "kvwire_http_requests_timed_out_total") == 1


@pytest.mark.parametrize("fast_path", [True, False], ids=["handed-over", "aiohttp-only"])
def test_the_rest_of_a_body_answered_early_starts_no_request_timeout(node, tmp_path, fast_path):
    """aiohttp answers some requests before reading their bodies (a POST's 405) and
    reads and drops the rest as it comes. Those bytes are not a new request's head:
    the keep-alive connection stays open past --request-timeout (1 s) and serves the
    next request. Taken for a head, they made the idle connection get a 408 a second
    later. (A body past --max-body-bytes closes the connection instead: below.)"""
    args = ["--request-timeout", "1", *([] if fast_path else ["--no-fast-path"])]
    with bridge(node, tmp_path, *args) as running:
        running.wait_ready()
        client = Client(running.port)
        try:
            assert client.exchange(f"POST {PREFIX}/kv/k/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n"
                                   .encode()).status == 405
            client.sock.sendall(b"0123456789")  # the body, after its answer
            assert client.silent_for(2.5), "the bridge answered (408) or closed an idle keep-alive connection"
            assert client.exchange(HEALTH_GET).status == 200
        finally:
            client.close()
        assert "--request-timeout" not in running.log()


@pytest.mark.parametrize("sent", [0, 100_000], ids=["no-body", "part-of-the-body"])
@pytest.mark.parametrize("connection", ["close", "keep-alive"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["handed-over", "aiohttp-only"])
def test_a_413_for_a_body_over_max_body_bytes_closes_the_connection_at_once(node, tmp_path, sent, connection, fast_path):
    """A PUT whose Content-Length is over --max-body-bytes is answered 413 before its
    body is read, with Connection: close, and the bridge's side is shut at once: the
    client reads the 413, then the end. aiohttp used to read and drop that body for its
    lingering_time (10 s) first, whatever the request's Connection said. The bridge's
    socket closes LINGER_SECONDS after the answer at the latest, though the client
    holds its side open; a client still sending reads the 413, not a reset."""
    args = ["--request-timeout", "10", "--max-body-bytes", "1000", *([] if fast_path else ["--no-fast-path"])]
    with bridge(node, tmp_path, *args) as running:
        running.wait_ready()
        client = Client(running.port)
        try:
            head = (f"PUT {PREFIX}/kv/big/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 400000\r\n"
                    f"Connection: {connection}\r\n\r\n").encode()
            answer = client.exchange(head + b"x" * sent)
            answered_at = time.monotonic()
            assert answer.status == 413 and answer.headers.get("connection") == "close", answer
            assert json.loads(answer.body)["error"] == "the request body is larger than the limit of 1000 bytes"
            assert client.closed_by_bridge(timeout=1.0), "the bridge kept the connection open after its 413"
            # Only the scrape's own connection is left, though this client has not closed.
            wait_for(lambda: metric(running, "kvwire_http_open_connections") == 1, timeout=LINGER_SECONDS + 2,
                     what="the bridge closing its socket")
            assert time.monotonic() - answered_at < LINGER_SECONDS + 2  # well within --request-timeout (10 s)
        finally:
            client.close()


@pytest.mark.parametrize("served_by", ["fast-path", "aiohttp"])
def test_a_body_that_keeps_coming_may_take_longer_than_request_timeout(node, tmp_path, served_by):
    """The head whole at once, then the body in pieces 0.4 s apart for 2 s in all,
    twice --request-timeout: a slow upload, not a stalled one (as nginx's
    client_body_timeout), answered."""
    body = b'{"value": "' + b"y" * 40 + b'"}'
    put = request("PUT", f"{PREFIX}/kv/slow-upload-{served_by}/", body)  # each run creates its key
    head_end = put.index(b"\r\n\r\n") + 4
    with bridge(node, tmp_path, "--request-timeout", "1", *(["--no-fast-path"] if served_by == "aiohttp" else [])) as running:
        running.wait_ready()
        client = Client(running.port)
        try:
            client.sock.sendall(put[:head_end])
            pieces = [put[at:at + 10] for at in range(head_end, len(put), 10)]
            for piece in pieces[:-1]:
                assert client.silent_for(0.4)  # the client's pace; the bridge waits for more
                client.sock.sendall(piece)
            assert client.silent_for(0.4)
            assert client.exchange(pieces[-1]).status == 201
        finally:
            client.close()


def test_the_next_requests_time_starts_once_the_one_before_is_answered(node, tmp_path):
    """Pipelined: a PUT the hung node holds for the bridge's whole --timeout (2 s), and
    the first bytes of a GET sent with it. The GET's --request-timeout (1 s) counts from
    the PUT's answer, not from its bytes' arrival 2 s before: finished just after that
    answer, it is answered too."""
    get = request("GET", f"{PREFIX}/kv/after-slow/")
    with bridge(node, tmp_path, "--request-timeout", "1", "--timeout", "2") as running:
        running.wait_ready()
        client = Client(running.port)
        node.send_signal(signal.SIGSTOP)
        try:
            client.sock.sendall(request("PUT", f"{PREFIX}/kv/held/", b'{"value": 1}') + get[:10])
            assert read_response(client.stream).status == 504
            node.send_signal(signal.SIGCONT)
            # Half the GET's timeout after the answer, 2.5 s after its first bytes: not refused.
            assert client.silent_for(0.5)
            assert client.exchange(get[10:]).status == 404
        finally:
            node.send_signal(signal.SIGCONT)
            client.close()


def test_a_request_in_two_parts_within_request_timeout_is_answered(node, tmp_path):
    put = request("PUT", f"{PREFIX}/kv/two-parts/", b'{"value": 7}')
    with bridge(node, tmp_path, "--request-timeout", "2") as running:
        running.wait_ready()
        client = Client(running.port)
        try:
            client.sock.sendall(put[:20])
            assert client.silent_for(0.3)
            assert client.exchange(put[20:]).status == 201
            assert client.exchange(request("GET", f"{PREFIX}/kv/two-parts/")).status == 200
        finally:
            client.close()


@pytest.mark.parametrize("field, value", [("max_connections", 0), ("idle_timeout", 0), ("request_timeout", -1.0),
                                          ("max_connections", 2.5)])
def test_bad_bounds_are_refused_by_the_config(field, value):
    with pytest.raises(ValueError, match=field):
        BridgeConfig(**{field: value})


def test_a_nodes_own_bridge_takes_bodies_as_large_as_the_nodes_values(tmp_path):
    """Its bodies were capped at 4 MiB whatever the node's --max-value-bytes: a node
    given 6 MiB values answered 413 to a 5 MiB one through its own bridge."""
    port = free_port()
    six_mib = 6 * 1024 * 1024
    with NodeProcess("n1", data_dir=tmp_path / "n1",
                     extra_args=["--sync", "off", "--max-value-bytes", str(six_mib), "--max-frame-bytes", str(2 * six_mib),
                                 "--http-listen", f"127.0.0.1:{port}"]) as node:
        url = f"http://127.0.0.1:{port}{PREFIX}/kv/big/"
        wait_for(lambda: http("GET", f"http://127.0.0.1:{port}{PREFIX}/health/").status == 200, timeout=10,
                 what="n1's bridge")
        value = "v" * (5 * 1024 * 1024)
        assert http("PUT", url, {"value": value}, timeout=60).status == 201
        read = http("GET", url, timeout=60)
        assert read.status == 200 and read.json["value"] == value
        too_large = http("PUT", url, {"value": "v" * (six_mib + 1)}, timeout=60)
        assert too_large.status == 413, too_large  # the node's own limit still holds
        assert "Traceback" not in node.log()
