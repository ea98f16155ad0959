"""The bridge's fast path (http_bridge/fast_path.py) against aiohttp's own handling.

Two real ``kvwire bridge`` processes in front of one real node: one with the
fast path (the default), one with ``--no-fast-path``. The same raw requests,
sent to both, must get the same answers, whether the fast path answers them
itself or hands the connection to aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import select
import signal
import socket
import threading
import time

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from rest_helpers import PREFIX, BridgeProcess, http, raw_exchange, read_response

from kvwire.http_bridge import BridgeConfig, start_bridge
from kvwire.http_bridge.fast_path import _HAND_OVER, _NEED_DATA, Request, parse
from kvwire.client import RetryPolicy
from kvwire.protocol.messages import Ping, Pong, Put, PutReply, Version
from kvwire.testing import NodeProcess
from kvwire.testing.node import wait_for
from kvwire.testing.scripted import ScriptedNode

NODE_MAX_VALUE_BYTES = 2_000
MIB = 1024 * 1024
MAX_BODY_BYTES = 8_192
BRIDGE_ARGS = ["--max-body-bytes", str(MAX_BODY_BYTES), "--max-value-bytes", "100000"]
# Headers whose values must agree; Date, Server and Content-Length may differ.
COMPARED_HEADERS = ("content-type", "location", "retry-after", "www-authenticate", "allow", "cache-control")


@pytest.fixture(scope="module")
def bridges(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-path")
    node_args = ["--sync", "off", "--max-value-bytes", str(NODE_MAX_VALUE_BYTES)]
    with NodeProcess("n1", data_dir=root / "n1", extra_args=node_args) as node:
        with BridgeProcess([node.address], log_path=root / "fast.log", args=BRIDGE_ARGS) as fast, \
                BridgeProcess([node.address], log_path=root / "aiohttp.log", args=[*BRIDGE_ARGS, "--no-fast-path"]) as slow:
            fast.wait_ready()
            slow.wait_ready()
            yield fast, slow
            assert "Traceback" not in fast.log() and "Traceback" not in slow.log()


def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: localhost"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None and not any(name.lower() in ("content-length", "transfer-encoding") for name in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def kv_path(key: str, slash: bool = True) -> str:
    return f"{PREFIX}/kv/{key}{'/' if slash else ''}"


def value_body(value) -> bytes:
    return json.dumps({"value": value}).encode()


# Each case: a name and a function of the key prefix giving the raw request and whether it is a HEAD.
# They run in order on both bridges, each bridge with its own keys, so versions agree.
CASES = [
    ("put creates", lambda k: request("PUT", kv_path(f"{k}a"), value_body("x"))),
    ("put replaces", lambda k: request("PUT", kv_path(f"{k}a"), value_body({"n": [1, 2.5, None]}))),
    ("put bytes", lambda k: request("PUT", kv_path(f"{k}b", slash=False), value_body({"$bytes": "AAEC"}))),
    ("get", lambda k: request("GET", kv_path(f"{k}a"))),
    ("get without slash", lambda k: request("GET", kv_path(f"{k}a", slash=False))),
    ("get one", lambda k: request("GET", kv_path(f"{k}a") + "?consistency=one")),
    ("get quorum", lambda k: request("GET", kv_path(f"{k}a") + "?consistency=quorum")),
    ("get bad consistency", lambda k: request("GET", kv_path(f"{k}a") + "?consistency=all")),
    ("get missing", lambda k: request("GET", kv_path(f"{k}missing"))),
    ("get escaped key", lambda k: request("GET", kv_path(f"{k}%C3%A9%2Fx"))),
    ("get key not utf-8", lambda k: request("GET", kv_path(f"{k}%FF"))),
    ("get key too long", lambda k: request("GET", kv_path(k + "x" * 1100))),
    ("delete", lambda k: request("DELETE", kv_path(f"{k}a"))),
    ("delete again", lambda k: request("DELETE", kv_path(f"{k}a"))),
    ("put not json", lambda k: request("PUT", kv_path(f"{k}c"), b"{nope")),
    ("put empty body", lambda k: request("PUT", kv_path(f"{k}c"), b"")),
    ("put no value field", lambda k: request("PUT", kv_path(f"{k}c"), b'{"v": 1}')),
    ("put not utf-8", lambda k: request("PUT", kv_path(f"{k}c"), b'{"value": "\xff"}')),
    ("put over the node's limit", lambda k: request("PUT", kv_path(f"{k}c"), value_body("x" * NODE_MAX_VALUE_BYTES))),
    ("put bad authorization", lambda k: request("PUT", kv_path(f"{k}c"), value_body(1), {"Authorization": "Basic eA=="})),
    ("put long idempotency key", lambda k: request("PUT", kv_path(f"{k}c"), value_body(1), {"Idempotency-Key": "i" * 129})),
    ("put with idempotency key", lambda k: request("PUT", kv_path(f"{k}d"), value_body(1), {"Idempotency-Key": f"{k}once"})),
    ("put retried", lambda k: request("PUT", kv_path(f"{k}d"), value_body(1), {"X-Kvwire-Request-Id": f"{k}once"})),
    ("connection close", lambda k: request("GET", kv_path(f"{k}d"), headers={"Connection": "close"})),
    ("brace in key", lambda k: request("GET", kv_path(f"{k}%7Bx"))),
    ("braces in key", lambda k: request("PUT", kv_path(f"{k}%7Bb%7D"), value_body(1))),
    # Handed to aiohttp:
    ("head", lambda k: request("HEAD", kv_path(f"{k}d"))),
    ("get key with a bare % (handed over)", lambda k: request("GET", kv_path(f"{k}%ZZ"))),
    ("post", lambda k: request("POST", kv_path(f"{k}d"), value_body(1))),
    ("chunked put", lambda k: request("PUT", kv_path(f"{k}e"), b'c\r\n{"value": 7}\r\n0\r\n\r\n',
                                      {"Transfer-Encoding": "chunked"})),
    ("expect continue", lambda k: request("PUT", kv_path(f"{k}f"), value_body(8), {"Expect": "100-continue"})),
    ("http/1.0", lambda k: request("GET", kv_path(f"{k}d"), version="HTTP/1.0")),
    ("two segments", lambda k: request("GET", f"{PREFIX}/kv/{k}a/b/")),
    ("empty key", lambda k: request("GET", f"{PREFIX}/kv//")),
    ("dot dot", lambda k: request("GET", f"{PREFIX}/kv/../")),
    ("other query", lambda k: request("GET", kv_path(f"{k}d") + "?consistency=one&x=1")),
    ("body over --max-body-bytes", lambda k: request("PUT", kv_path(f"{k}g"), value_body("x" * MAX_BODY_BYTES))),
    ("body on a get", lambda k: request("GET", kv_path(f"{k}d"), b"{}")),
    ("two content-lengths", lambda k: request("PUT", kv_path(f"{k}h"), value_body(1),
                                              {"Content-Length": "12", "content-length": "12"})),
    ("space before colon", lambda k: request("GET", kv_path(f"{k}d"), headers={"Authorization ": "Bearer x"})),
    ("unknown path", lambda k: request("GET", "/nope")),
    ("garbage", lambda k: b"\x00\x01 nonsense\r\n\r\n"),
    ("bare line feeds", lambda k: request("GET", kv_path(f"{k}d")).replace(b"\r\n", b"\n")),
    ("bare carriage returns", lambda k: request("GET", kv_path(f"{k}d")).replace(b"\r\n", b"\r")),
    ("no host", lambda k: request("GET", kv_path(f"{k}d")).replace(b"Host: localhost\r\n", b"")),
    ("two hosts", lambda k: request("GET", kv_path(f"{k}d"), headers={"Host": "other"})),
    ("two user-agents", lambda k: request("PUT", kv_path(f"{k}i"), value_body(1), {"User-Agent": "a", "user-agent": "b"})),
    ("129 headers", lambda k: request("GET", kv_path(f"{k}d"), headers={f"X-H{index}": "v" for index in range(128)})),
    ("a header line past 8190 bytes", lambda k: request("GET", kv_path(f"{k}d"), headers={"Authorization": "Bearer " + "a" * 9000})),
    # Found by a review: each was a wrong key, a 500 or a wait for a body never coming.
    ("a '#' in the target", lambda k: request("DELETE", f"{PREFIX}/kv/{k}d#/{k}b/")),
    ("corrupt gzip body", lambda k: request("PUT", kv_path(f"{k}j"), value_body(1), {"Content-Encoding": "gzip"})),
    ("idempotency key not utf-8", lambda k: request("PUT", kv_path(f"{k}j"), value_body(1),
                                                    {"Idempotency-Key": "caf@"}).replace(b"caf@", b"caf\xe9")),
    ("token not utf-8", lambda k: request("GET", kv_path(f"{k}d"),
                                          headers={"Authorization": "Bearer caf@"}).replace(b"caf@", b"caf\xe9")),
    ("declared body over --max-body-bytes", lambda k: request("PUT", kv_path(f"{k}g"), b"",
                                                              {"Content-Length": str(10**9)})),
    ("expect continue, body over --max-body-bytes", lambda k: request(
        "PUT", kv_path(f"{k}g"), b"", {"Expect": "100-continue", "Content-Length": str(10**9)})),
    ("expect continue, bad key", lambda k: request(
        "PUT", kv_path(f"{k}%FF"), b"", {"Expect": "100-continue", "Content-Length": "12"})),
    ("expect unknown", lambda k: request("PUT", kv_path(f"{k}f"), value_body(8), {"Expect": "tea"})),
]
# What the review's cases must answer, on both bridges, whichever worker runs them (the
# ones that need an earlier case's key are self-contained tests below).
REVIEWED_STATUSES = {
    "braces in key": 201, "a '#' in the target": 400, "corrupt gzip body": 400,
    "idempotency key not utf-8": 400, "token not utf-8": 401, "declared body over --max-body-bytes": 413,
    "expect continue, body over --max-body-bytes": 413, "expect continue, bad key": 400, "expect unknown": 417,
}


def normalised(response, prefix: str) -> tuple:
    body = response.body.decode("utf-8", "replace").replace(prefix, "side-")
    if response.headers.get("content-type", "").startswith("application/json") and body:
        body = json.loads(body)
    headers = {name: response.headers[name].replace(prefix, "side-") for name in COMPARED_HEADERS if name in response.headers}
    return response.status, headers, body


@pytest.mark.parametrize("name,make", CASES, ids=[name for name, _ in CASES])
def test_the_fast_path_answers_as_aiohttp_does(bridges, name, make):
    fast, slow = bridges
    head = name == "head"
    answers = []
    for bridge, prefix in ((fast, "fastside-"), (slow, "slowside-")):
        [response] = raw_exchange(bridge.port, make(prefix), heads=[head])
        answers.append(normalised(response, prefix))
    assert answers[0] == answers[1]
    assert answers[0][0] != 500
    if name in ("chunked put", "expect continue"):
        assert answers[0][0] == 201  # aiohttp's, and right
    if name in REVIEWED_STATUSES:
        assert answers[0][0] == REVIEWED_STATUSES[name], answers[0]
        assert answers[0][1]["content-type"].startswith("application/json")


def test_a_key_with_braces_reads_back_however_they_are_escaped(bridges):
    for bridge, prefix in zip(bridges, ("fastside-braces-", "slowside-braces-")):
        [response] = raw_exchange(bridge.port, request("PUT", kv_path(f"{prefix}%7Bb%7D"), value_body(1)))
        assert response.status == 201, response
        [response] = raw_exchange(bridge.port, request("GET", kv_path(f"{prefix}%7bb%7d")))
        assert response.status == 200 and json.loads(response.body)["key"] == f"{prefix}{{b}}", response


def test_a_hash_in_the_target_deletes_nothing(bridges):
    """aiohttp routes on the path before a '#', and the key used to be read after it:
    DELETE .../harmless#/victim/ deleted victim. Refused now, both keys kept."""
    for bridge, prefix in zip(bridges, ("fastside-hash-", "slowside-hash-")):
        for key in ("harmless", "victim"):
            [response] = raw_exchange(bridge.port, request("PUT", kv_path(f"{prefix}{key}"), value_body(key)))
            assert response.status == 201, response
        [response] = raw_exchange(bridge.port, request("DELETE", f"{PREFIX}/kv/{prefix}harmless#/{prefix}victim/"))
        assert response.status == 400 and b"'#'" in response.body, response
        for key in ("harmless", "victim"):
            [response] = raw_exchange(bridge.port, request("GET", kv_path(f"{prefix}{key}")))
            assert response.status == 200, (prefix, key, response)


# Requests built from parts, each part sometimes odd: the same must come back from both bridges.
# Plain parts are listed several times, so that about half the requests stay on the fast path.
_KEYS = st.sampled_from(["k", "k", "k", "k%2Fx", "%C3%A9", "a;b", "k:1@x", "%FF", "%7Bx", "%Z1", "x" * 1030, "..", "%2e"])
_GET_QUERIES = st.sampled_from(["", "", "", "?consistency=one", "?consistency=quorum", "?consistency=ALL",
                                "?consistency=", "?x=1", "?consistency=one&x=1", "?consistency=%6Fne"])
_OTHER_QUERIES = st.sampled_from(["", "", "", "", "", "?x=1"])
_HEADER_SETS = st.lists(st.sampled_from([
    ("Accept", "*/*"), ("Accept", "*/*"), ("Connection", "keep-alive"), ("X-Anything", "\tvalue\t"),
    ("Authorization", "Bearer"), ("Authorization", "Basic eA=="), ("Authorization", "Bearer  "),
    ("Idempotency-Key", ""), ("Idempotency-Key", "i" * 129), ("Idempotency-Key", "{prefix}same-id"),
    ("X-Kvwire-Request-Id", "{prefix}other-id"), ("Connection", "Upgrade"), ("Content-Type", "text/plain"),
]), max_size=3)
_PUT_BODIES = st.sampled_from([b'{"value": 1}', b'{"value": "x"}', b'{"value": [1, {"a": null}]}', b"", b"[1]", b"{",
                               b'{"value": {"$bytes": "!"}}', b'{"value": 1e999}', b'\xef\xbb\xbf{"value": 1}', None])
_OTHER_BODIES = st.sampled_from([None, None, None, None, None, b"{}"])


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(["GET", "PUT", "DELETE"]), key=_KEYS, slash=st.booleans(), headers=_HEADER_SETS,
       data=st.data())
def test_built_requests_get_the_same_answer_from_both(bridges, method, key, slash, headers, data):
    fast, slow = bridges
    query = data.draw(_GET_QUERIES if method == "GET" else _OTHER_QUERIES, label="query")
    body = data.draw(_PUT_BODIES if method == "PUT" else _OTHER_BODIES, label="body")
    answers = []
    for bridge, prefix in ((fast, "fastside-"), (slow, "slowside-")):
        # Request ids name their bridge's side too: one id sent by both would be a retry on the node.
        head = [f"{method} {kv_path(prefix + key, slash)}{query} HTTP/1.1", "Host: localhost",
                *(f"{name}: {value.format(prefix=prefix)}" for name, value in headers)]
        if body is not None:
            head.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
        [response] = raw_exchange(bridge.port, raw)
        answers.append(normalised(response, prefix))
    event("answered by the fast path" if isinstance(parse(bytearray(raw), MAX_BODY_BYTES), tuple) else "handed to aiohttp")
    assert answers[0] == answers[1]


def test_the_cases_reach_both_sides():
    """The fast path must answer the first cases itself and hand the later ones over, or the
    comparison above compares aiohttp with itself."""
    names = [name for name, _ in CASES]
    answered = [name for name, make in CASES if isinstance(parse(bytearray(make("F-")), MAX_BODY_BYTES), tuple)]
    assert answered == names[:names.index("head")]


def test_pipelined_requests_are_answered_in_order_across_a_hand_over(bridges):
    fast, _ = bridges
    key = kv_path("pipelined")
    data = (request("PUT", key, value_body(1)) + request("GET", key) + request("HEAD", key)
            + request("PUT", key, value_body(2)) + request("GET", key + "?consistency=one"))
    put, get, head, put_again, get_again = raw_exchange(fast.port, data, heads=[False, False, True, False, False])
    assert (put.status, get.status, head.status, put_again.status, get_again.status) == (201, 200, 200, 200, 200)
    assert json.loads(get.body)["value"] == 1 and json.loads(get_again.body)["value"] == 2
    assert head.body == b"" and json.loads(put_again.body)["version"]["counter"] == 2


def test_a_request_then_end_of_file_is_answered_and_closed(bridges):
    """A client that half-closes after its request (``nc -N``) gets its answer, then the
    bridge closes. (aiohttp 3.14 closes at once, unanswered: the one difference.)"""
    fast, _ = bridges
    with socket.create_connection(("127.0.0.1", fast.port), timeout=10) as sock:
        sock.sendall(request("GET", kv_path("eof-missing")))
        sock.shutdown(socket.SHUT_WR)
        stream = sock.makefile("rb")
        assert read_response(stream).status == 404
        assert stream.read() == b""  # and then the bridge closes


def test_a_request_cut_short_by_end_of_file_gets_aiohttps_answer(bridges):
    fast, slow = bridges
    cut = request("PUT", kv_path("cut"), value_body("x" * 100))[:-20]
    answers = []
    for bridge in (fast, slow):
        with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as sock:
            sock.sendall(cut)
            sock.shutdown(socket.SHUT_WR)
            answers.append(sock.makefile("rb").read())
    assert answers[0] == answers[1]
    assert http("GET", f"{fast.url}{kv_path('cut')}").status == 404


def test_fast_path_requests_are_counted_in_the_metrics(bridges):
    fast, _ = bridges

    def puts_counted() -> float:
        text = http("GET", f"{fast.url}/metrics").text
        found = re.search(r'kvwire_http_requests_total\{method="PUT",route="/kv-store/v1/kv/\{key\}/",status="201"\} (\S+)', text)
        return float(found.group(1)) if found else 0.0

    before = puts_counted()
    for index in range(3):
        [response] = raw_exchange(fast.port, request("PUT", kv_path(f"counted-{index}"), value_body(index)))
        assert response.status == 201
    assert puts_counted() == before + 3


# --- stopping with a request in flight ------------------------------------------------------


def test_a_request_in_flight_is_answered_before_the_bridge_stops(tmp_path):
    received = threading.Event()
    release = threading.Event()

    async def slow_put(message):
        received.set()
        await asyncio.to_thread(release.wait, 15)
        return PutReply(message.id, Version(1, "scripted"), True)

    with ScriptedNode(slow_put, answers_hello=False) as node:
        bridge = BridgeProcess([node.address], log_path=tmp_path / "bridge.log")
        with bridge:
            with socket.create_connection(("127.0.0.1", bridge.port), timeout=15) as sock:
                sock.sendall(request("PUT", kv_path("in-flight"), value_body(1)))
                assert received.wait(10), "the PUT never reached the node"
                bridge.send_signal(signal.SIGTERM)
                # Stopping now, with the PUT in flight: only then may the node answer it.
                wait_for(lambda: "received SIGTERM" in bridge.log(), timeout=10, what="the bridge stopping")
                release.set()
                response = read_response(sock.makefile("rb"))
            assert response.status == 201 and json.loads(response.body)["version"] == {"counter": 1, "node": "scripted"}
            assert bridge.wait(15) == 0
        assert "Traceback" not in bridge.log()


# --- clients that do not read, and stopping ---------------------------------------------------


def test_a_client_that_pipelines_without_reading_is_held_back(bridges):
    """Once its answers fill the socket, the bridge stops reading too, so what it holds stays
    bounded (aiohttp's own queue stops at 32 requests)."""
    fast, _ = bridges
    chunk = request("GET", kv_path("held-back")) * 1000
    sent = 0
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(("127.0.0.1", fast.port))
        sock.setblocking(False)
        deadline = time.monotonic() + 60
        while sent < 64 * MIB and time.monotonic() < deadline:
            _, writable, _ = select.select([], [sock], [], 1.0)
            if not writable:
                break  # a whole second without room: the bridge has stopped reading
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(chunk)
        # Socket buffers on both sides and the bridge's bounded share: a few MiB.
        assert sent < 32 * MIB, f"the bridge took {sent} bytes from a client that reads nothing"
        assert http("GET", f"{fast.url}{kv_path('held-back')}").status == 404  # and others are served meanwhile


def test_stopping_sends_an_answer_still_in_the_socket_before_closing(tmp_path):
    big = ["--max-value-bytes", str(20 * MIB)]
    node_args = ["--sync", "off", *big, "--max-frame-bytes", str(21 * MIB)]
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=node_args) as node:
        bridge = BridgeProcess([node.address], log_path=tmp_path / "bridge.log", args=[*big, "--max-body-bytes", str(40 * MIB)])
        with bridge:
            value = "v" * (12 * MIB)  # more than the kernel's socket buffers hold
            assert http("PUT", f"{bridge.url}{kv_path('big')}", {"value": value}).status == 201
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                sock.settimeout(30)
                sock.connect(("127.0.0.1", bridge.port))
                sock.sendall(request("GET", kv_path("big")))
                bridge.send_signal(signal.SIGTERM)
                wait_for(lambda: "received SIGTERM" in bridge.log(), timeout=10, what="the bridge stopping")
                response = read_response(sock.makefile("rb"))  # only now does the client read
            assert response.status == 200 and json.loads(response.body)["value"] == value
            assert bridge.wait(30) == 0


async def test_a_put_whose_body_is_still_arriving_at_shutdown_is_read_and_answered(tmp_path):
    """The bridge runs in this process so that the test can see its connection holding the
    first half of the PUT, and then stopping, before the second half is sent."""
    loop = asyncio.get_running_loop()

    async def until(condition, what: str) -> None:
        deadline = loop.time() + 10
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.005)

    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as node:
        bridge = await start_bridge(BridgeConfig(port=0, endpoints=(node.address,)))
        [site] = bridge._runner.sites
        connections = site._fast_path.connections
        whole = request("PUT", kv_path("half-sent"), value_body("x" * 1000))
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        try:
            writer.write(whole[:-500])
            await until(lambda: any(connection._buffer for connection in connections), "the first half read")
            stopping = asyncio.ensure_future(bridge.close())
            await until(lambda: all(connection._closing for connection in connections), "the bridge stopping")
            writer.write(whole[-500:])
            response = await asyncio.wait_for(reader.read(), 10)  # the answer, then the bridge closes
            await asyncio.wait_for(stopping, 15)
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 ") and b"Connection: close" in head, head
    assert json.loads(body)["value"] == "x" * 1000


async def test_stopping_waits_for_both_kinds_of_connection_at_once():
    """A request in flight on the fast path and one on a connection handed to aiohttp wait out
    their shutdown_timeout together. (aiohttp alone takes up to two: one for the request to finish,
    one more once it is cancelled; the fast path drops its connection after one.) They used to wait
    one after the other: three."""
    release = asyncio.Event()

    async def held(message):
        await release.wait()

    def answer(message):
        if isinstance(message, Ping):
            return Pong(message.id)
        return held(message) if isinstance(message, Put) else None

    async with ScriptedNode(answer, answers_hello=False) as node:
        config = BridgeConfig(port=0, endpoints=(node.address,), timeout=60, shutdown_timeout=2.0,
                              retry=RetryPolicy(attempts=1))
        bridge = await start_bridge(config)
        writers = []
        try:
            for raw in (request("PUT", kv_path("held-fast"), value_body(1)),
                        request("PUT", kv_path("held-aiohttp"), b'c\r\n{"value": 1}\r\n0\r\n\r\n',
                                {"Transfer-Encoding": "chunked"})):
                _, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
                writer.write(raw)
                writers.append(writer)
            deadline = asyncio.get_running_loop().time() + 10
            while sum(isinstance(message, Put) for message in node.received) < 2:
                assert asyncio.get_running_loop().time() < deadline, f"the two PUTs never reached the node: {node.received}"
                await asyncio.sleep(0.01)
            started = asyncio.get_running_loop().time()
            await bridge.close()
            took = asyncio.get_running_loop().time() - started
        finally:
            release.set()
            for writer in writers:
                writer.close()
    assert 3.9 <= took < 5.0, f"stopping took {took:.2f} s with shutdown_timeout 2 (at once: 4; one after the other: 6)"


# --- the parser alone -------------------------------------------------------------------------


def test_parse_waits_for_the_whole_body_and_reads_one_request():
    whole = request("PUT", kv_path("k"), value_body("v")) + request("GET", kv_path("k"))
    first = len(request("PUT", kv_path("k"), value_body("v")))
    for cut in range(1, first):
        assert parse(bytearray(whole[:cut]), MAX_BODY_BYTES) is _NEED_DATA, cut
    parsed, length = parse(bytearray(whole), MAX_BODY_BYTES)
    assert isinstance(parsed, Request) and length == first
    assert (parsed.method, parsed.raw_path, parsed.body) == ("PUT", kv_path("k"), value_body("v"))


def test_parse_hands_over_what_cannot_be_one_of_its_requests_at_once():
    for start in (b"\x00\x00\x00\x10", b"POST ", b"GET /other", b"PUT /kv-store/v1/kvx", b"get /kv-store/"):
        assert parse(bytearray(start), MAX_BODY_BYTES) is _HAND_OVER, start


@given(st.binary(max_size=300))
def test_parse_never_raises_and_never_claims_more_than_it_has(data):
    result = parse(bytearray(data), MAX_BODY_BYTES)
    assert result is _HAND_OVER or result is _NEED_DATA or (isinstance(result, tuple) and result[1] <= len(data))


@given(st.sampled_from([name for name, _ in CASES]), st.binary(max_size=40))
def test_parse_reads_a_known_request_the_same_whatever_follows(name, tail):
    make = dict(CASES)[name]
    data = make("P-")
    alone = parse(bytearray(data), MAX_BODY_BYTES)
    followed = parse(bytearray(data + tail), MAX_BODY_BYTES)
    if isinstance(alone, tuple):  # "Connection: close" too: answered, and what follows never is
        # A case of two requests, the first saying "Connection: close": the first alone.
        assert isinstance(followed, tuple) and followed[1] == alone[1] <= len(data)
        assert (followed[0].method, followed[0].raw_path, followed[0].body) == (alone[0].method, alone[0].raw_path, alone[0].body)


def test_a_request_saying_connection_close_is_answered_whatever_follows_it(bridges):
    """RFC 9112 9.6: answer it, then close, processing nothing after it. Handed to aiohttp
    with the bytes after it, it was refused with them (400) and its PUT never applied;
    aiohttp alone (--no-fast-path) still does that, the one answer where the two differ."""
    bridge, _ = bridges
    key = "closing"
    first = request("PUT", kv_path(key), value_body("applied"), headers={"Connection": "close"})
    after = request("PUT", kv_path(key), value_body("never"))
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=15) as sock:
        sock.sendall(first + after)  # one write: they arrive together
        stream = sock.makefile("rb")
        response = read_response(stream)
        assert stream.read() == b""  # then closed, the second request unanswered
    assert (response.status, response.headers.get("connection")) == (201, "close"), response
    assert http("GET", f"http://127.0.0.1:{bridge.port}{kv_path(key)}").json["value"] == "applied"


def test_the_answer_to_connection_close_survives_a_client_still_sending(tmp_path):
    """The bridge answers and stops reading. Closed with the client's bytes unread, the
    kernel resets the connection and drops what of the answer it still held for a client
    not reading yet (a large one): the connection lingers instead, reading and dropping
    what still comes (linger.py), until the whole answer is sent."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as node, \
            BridgeProcess([node.address], log_path=tmp_path / "bridge.log") as bridge:
        bridge.wait_ready()
        value = "v" * 1_000_000
        assert http("PUT", f"{bridge.url}{kv_path('large')}", {"value": value}).status == 201
        first = request("GET", kv_path("large"), headers={"Connection": "close"})
        with socket.create_connection(("127.0.0.1", bridge.port), timeout=15) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the answer waits in the bridge's kernel
            with contextlib.suppress(OSError):  # a reset, or the bridge closing once it has dropped enough
                sock.sendall(first + b"x" * 8_000_000)  # more than the kernel's buffers hold
            response = read_response(sock.makefile("rb"))
    assert (response.status, response.headers.get("connection")) == (200, "close"), response.status
    assert json.loads(response.body)["value"] == value
