"""The REST API over real TCP: a real cluster, `kvwire bridge` and `kvwire serve --http-listen` processes."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kvwire.http_bridge import (
    DEFAULT_MAX_BODY_BYTES,
    BridgeConfig,
    UnrepresentableValueError,
    create_app,
    openapi_document,
    status_for,
)
from kvwire import Client, ConflictError, RetryPolicy
from kvwire.protocol import DEFAULT_LIMITS, ErrorCode, ErrorReply, Limits, errors
from kvwire.server.storage import DataDirError
from kvwire.testing import LocalCluster, NodeProcess, ScriptedNode, error_classes, free_port, sample_error, wait_for
from rest_helpers import PREFIX, BridgeProcess, answers, http, with_http

NODE_MAX_VALUE_BYTES = 4096
STANDALONE_MAX_BODY_BYTES = 65536
WRITE_NO_QUORUM = "Failed to replicate to quorum of nodes"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three nodes with a small value limit, each with its own bridge, and a standalone bridge in front."""
    root = tmp_path_factory.mktemp("rest")
    nodes = LocalCluster(3, data_dir=root / "data", sync="off", node_args=["--max-value-bytes", str(NODE_MAX_VALUE_BYTES)])
    nodes.http_urls = with_http(nodes)
    with nodes:
        for url in nodes.http_urls.values():
            wait_for(lambda: answers(url), timeout=15, what=f"the bridge at {url}")
        # The standalone bridge keeps the default 1 MiB value limit, so a value
        # between the two reaches a node and is refused there (TOO_LARGE).
        standalone = BridgeProcess(
            nodes.endpoints, log_path=root / "bridge.log", args=["--max-body-bytes", str(STANDALONE_MAX_BODY_BYTES)]
        )
        with standalone:
            nodes.standalone = standalone
            yield nodes
        assert "Traceback" not in standalone.log()
    for node in nodes:
        assert "Traceback" not in node.log(), node.log()


@pytest.fixture(params=["standalone", "in-node"])
def api(request, cluster):
    """Base URL of ``/kv-store/v1`` through either kind of bridge, and that bridge's body limit."""
    if request.param == "standalone":
        return f"{cluster.standalone.url}{PREFIX}", STANDALONE_MAX_BODY_BYTES
    return f"{cluster.http_urls['n2']}{PREFIX}", DEFAULT_MAX_BODY_BYTES


def kv(base: str, key: str, *, slash: bool = True) -> str:
    return f"{base}/kv/{quote(key, safe='')}{'/' if slash else ''}"


def check_error(reply, status: int, *fragments: str) -> dict:
    assert reply.status == status, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    document = reply.json
    # maybe_applied: what the node said of a failed write, when it said it.
    assert set(document) <= {"error", "maybe_applied"} and isinstance(document["error"], str) and document["error"]
    assert type(document.get("maybe_applied", False)) is bool
    for fragment in fragments:
        assert fragment in document["error"]
    assert "Traceback" not in reply.text
    return document


# --- the documented paths ----------------------------------------------------------------


@pytest.mark.parametrize("header", ["Idempotency-Key", "X-Kvwire-Request-Id"])
def test_a_put_sent_again_with_its_idempotency_key_is_applied_once(api, request, header):
    base, _ = api
    key = f"once-{request.node.callspec.id}"
    first = http("PUT", kv(base, key), {"value": "a"}, headers={header: f"id-{key}"})
    assert first.status == 201, first.text
    between = http("PUT", kv(base, key), {"value": "b"})  # another client's write
    again = http("PUT", kv(base, key), {"value": "a"}, headers={header: f"id-{key}"})
    assert again.status == 200 and again.json["version"] == first.json["version"], again.text
    assert http("GET", kv(base, key)).json["value"] == "b" == between.json["value"]
    check_error(http("PUT", kv(base, key), {"value": "a"}, headers={header: "x" * 129}), 400, "1 to 128 characters")


def test_a_retry_spaced_otherwise_is_the_same_write_and_another_value_under_the_id_is_another(api, request):
    """The id the nodes get covers the value (app.write_id): a reused id's answer is never a value not stored."""
    base, _ = api
    key = f"reused-{request.node.callspec.id}"
    headers = {"Idempotency-Key": f"id-{key}"}
    first = http("PUT", kv(base, key), raw=b'{"value": {"a": [1, 2]}}', headers=headers)
    retry = http("PUT", kv(base, key), raw=b'{ "value" :{"a":[1,2]} }', headers=headers)
    assert first.status == 201 and retry.status == 200 and retry.json["version"] == first.json["version"], retry.text
    other = http("PUT", kv(base, key), {"value": "second"}, headers=headers)
    assert other.status == 200 and other.json["version"]["counter"] > first.json["version"]["counter"], other.text
    assert http("GET", kv(base, key)).json == other.json



def test_put_answers_201_then_200_and_get_reads_it(api, request):
    base, _ = api
    key = f"greeting-{request.node.callspec.id}"
    created = http("PUT", kv(base, key), {"value": {"text": "hello", "n": [1, 2.5, None, True]}})
    assert created.status == 201, created.text
    assert created.headers["Content-Type"] == "application/json; charset=utf-8"
    assert created.headers["Location"] == f"{PREFIX}/kv/{quote(key, safe='')}/"
    first = created.json
    assert first["key"] == key and first["value"] == {"text": "hello", "n": [1, 2.5, None, True]}
    assert set(first["version"]) == {"counter", "node"} and first["version"]["counter"] == 1

    replaced = http("PUT", kv(base, key), {"value": "bye"})
    assert replaced.status == 200, replaced.text
    assert "Location" not in replaced.headers
    assert replaced.json["value"] == "bye"
    assert replaced.json["version"]["counter"] == first["version"]["counter"] + 1

    got = http("GET", kv(base, key))
    assert got.status == 200 and got.json == replaced.json
    for consistency in ("quorum", "one"):
        local = http("GET", kv(base, key) + f"?consistency={consistency}")
        assert local.status == 200 and local.json == replaced.json


def test_delete_answers_200_then_404(api, request):
    base, _ = api
    key = f"doomed-{request.node.callspec.id}"
    assert http("PUT", kv(base, key), {"value": 1}).status == 201
    deleted = http("DELETE", kv(base, key))
    assert deleted.status == 200, deleted.text
    assert deleted.json["key"] == key and deleted.json["version"]["counter"] == 2
    check_error(http("GET", kv(base, key)), 404, "not found")
    check_error(http("GET", kv(base, key) + "?consistency=one"), 404)
    check_error(http("DELETE", kv(base, key)), 404, "not found")
    # Written again after a delete: created again.
    assert http("PUT", kv(base, key), {"value": 2}).status == 201


def test_paths_without_the_trailing_slash_work_too(api, request):
    base, _ = api
    key = f"noslash-{request.node.callspec.id}"
    assert http("PUT", kv(base, key, slash=False), {"value": "x"}).status == 201
    assert http("GET", kv(base, key, slash=False)).json["value"] == "x"
    assert http("DELETE", kv(base, key, slash=False)).status == 200
    assert http("GET", f"{base}/health").status == 200


def test_keys_are_percent_decoded_utf8(api, cluster, request):
    base, _ = api
    key = f"dir/sub file+é?#%-{request.node.callspec.id}"
    reply = http("PUT", kv(base, key), {"value": "v"})
    assert reply.status == 201 and reply.json["key"] == key
    with Client(cluster.endpoints) as client:
        assert client.get(key) == "v"  # the same key, as the binary protocol sees it
    check_error(http("GET", f"{base}/kv/%FF/"), 400, "UTF-8")
    # A '%' that escapes nothing is refused: read literally, %ZZ and %25ZZ would name one key.
    for raw in ("%ZZ", "a%2", "%", "a%G1"):
        check_error(http("PUT", f"{base}/kv/{raw}/", {"value": "v"}), 400, "a '%' in a key is sent as %25")
        check_error(http("GET", f"{base}/kv/{raw}/"), 400, "not followed by two hex digits")
    assert http("PUT", f"{base}/kv/%25ZZ/", {"value": "v"}).json["key"] == "%ZZ"


def test_bytes_travel_as_base64_objects_both_ways(api, cluster, request):
    base, _ = api
    key = f"blob-{request.node.callspec.id}"
    raw = bytes(range(256))
    encoded = base64.b64encode(raw).decode()
    reply = http("PUT", kv(base, key), {"value": {"$bytes": encoded}})
    assert reply.status == 201 and reply.json["value"] == {"$bytes": encoded}
    with Client(cluster.endpoints) as client:
        assert client.get(key) == raw
        client.put(key, {"b": b"\x00\xff", b"k": [b""]})
    assert http("GET", kv(base, key)).json["value"] == {"b": {"$bytes": "AP8="}, "$bytes:aw==": [{"$bytes": ""}]}


def test_numbers_beyond_64_bit_integers_are_stored_as_floats(api, request):
    base, _ = api
    key = f"numbers-{request.node.callspec.id}"
    body = b'{"value": [18446744073709551615, -9223372036854775808, 18446744073709551616, 1.5e300]}'
    reply = http("PUT", kv(base, key), raw=body)
    assert reply.status == 201, reply.text
    assert reply.json["value"] == [2**64 - 1, -(2**63), 1.8446744073709552e19, 1.5e300]
    assert isinstance(reply.json["value"][2], float)


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"", "empty"),
        (b"{bad json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"just a string"', "must be a JSON object"),
        (b'{"val": 1}', 'no "value"'),
        (b'{"value": NaN}', "NaN is not JSON"),
        (b'{"value": 1e400}', "beyond the range"),
        (b'{"value": {"$bytes": "not base64!"}}', "base64"),
        (b'{"value": {"$bytes": "AAAA="}}', "base64"),
        (b'{"value": ' + b"[" * 600 + b"]" * 600 + b"}", "nested"),
        (b'{"value": {"a": 1, "a": 2}}', "names 'a' twice"),
    ],
    ids=["empty", "bad-json", "not-utf8", "array", "string", "no-value", "nan", "huge-number", "bad-base64",
         "base64-extra-padding", "too-deep", "name-twice"],
)
def test_bad_bodies_are_400(api, body, fragment):
    base, _ = api
    check_error(http("PUT", kv(base, "bad-body"), raw=body), 400, fragment)
    check_error(http("GET", kv(base, "bad-body")), 404)  # nothing was written


def test_a_value_as_deep_as_a_body_may_be_is_written_and_read_back(api, cluster, request):
    """511 levels, the most a body may nest: written, read back through REST and the client."""
    base, _ = api
    key = f"deep-{request.node.callspec.id}"
    deep = 0
    for _ in range(511):
        deep = [deep]
    reply = http("PUT", kv(base, key), raw=b'{"value": ' + json.dumps(deep).encode() + b"}")
    assert reply.status == 201, reply.text
    assert reply.json["value"] == deep
    assert http("GET", kv(base, key)).json["value"] == deep
    with Client(cluster.endpoints) as client:
        assert client.get(key) == deep


def test_a_stored_map_json_would_lose_a_key_of_is_406(api, cluster, request):
    base, _ = api
    key = f"collide-{request.node.callspec.id}"
    with Client(cluster.endpoints) as client:
        client.put(key, {b"a": 1, "$bytes:YQ==": 2})  # the bytes key b"a" is shown as "$bytes:YQ=="
    error = check_error(http("GET", kv(base, key)), 406, "lose one of them", "; read it with the Python client")
    assert "kvwire-cli" not in error["error"]  # its text output cannot show it either


def test_a_stored_map_json_would_show_as_bytes_is_406(api, cluster, request):
    base, _ = api
    key = f"lookalike-{request.node.callspec.id}"
    with Client(cluster.endpoints) as client:
        client.put(key, {"$bytes": "YWI="})  # JSON would show b"ab" so
    error = check_error(http("GET", kv(base, key)), 406, 'only key is "$bytes"', "; read it with the Python client")
    assert "kvwire-cli" not in error["error"]


def test_a_key_as_long_as_a_raised_max_key_bytes_is_reachable(tmp_path):
    limit = 8192
    nodes = LocalCluster(1, data_dir=tmp_path / "data", sync="off", node_args=["--max-key-bytes", str(limit)])
    url = with_http(nodes)["n1"]
    with nodes, BridgeProcess(nodes.endpoints, log_path=tmp_path / "bridge.log",
                              args=["--max-key-bytes", str(limit)]) as standalone:
        wait_for(lambda: answers(url), timeout=15, what="n1's bridge")
        for base in (f"{url}{PREFIX}", f"{standalone.url}{PREFIX}"):
            key = "é" * (limit // 2)  # every byte percent-encoded: 24,576 characters of path
            assert http("PUT", kv(base, key), {"value": 1}).status in (200, 201)
            assert http("GET", kv(base, key)).json["key"] == key
            check_error(http("GET", kv(base, key + "x")), 400, f"the limit is {limit}")


def test_bad_keys_and_parameters_are_400(api):
    base, _ = api
    check_error(http("GET", kv(base, "k") + "?consistency=all"), 400, "consistency must be 'one' or 'quorum'")
    check_error(http("GET", kv(base, "k") + "?consistency="), 400, "consistency")
    check_error(http("PUT", kv(base, "x" * 1025), {"value": 1}), 400, "1024")
    check_error(http("GET", kv(base, "é" * 600)), 400, "1024")  # 600 characters, 1200 bytes


def test_too_large_is_413(api, request):
    base, body_limit = api
    key = f"big-{request.node.callspec.id}"
    # Over the nodes' limit: refused by the node (standalone bridge) or by the bridge itself (in-node).
    check_error(http("PUT", kv(base, key), {"value": "x" * NODE_MAX_VALUE_BYTES}), 413, "limit")
    check_error(http("PUT", kv(base, key), raw=b'{"value": "' + b"x" * body_limit + b'"}'), 413, f"{body_limit} bytes")
    check_error(http("GET", kv(base, key)), 404)
    assert http("PUT", kv(base, key), {"value": "x" * (NODE_MAX_VALUE_BYTES - 100)}).status == 201


def test_a_value_past_what_the_nodes_take_in_a_frame_is_413_and_costs_no_one_else(cluster):
    """The standalone bridge takes values up to 1 MiB, its nodes 4 KiB, so a client frame of
    at most 6 KiB: a value past that was sent, each node dropped the bridge's connection at the
    frame's header, every request in flight on it failed, and the PUT itself answered 503
    after its third node (a REST probe's finding). The bridge refuses it before sending now."""
    base = f"{cluster.standalone.url}{PREFIX}"
    oversized = {"value": "x" * (4 * NODE_MAX_VALUE_BYTES)}  # past the nodes' 6,144-byte client frame
    with ThreadPoolExecutor(8) as pool:
        small = [pool.submit(http, "PUT", kv(base, f"beside-oversized-{index}"), {"value": index})
                 for index in range(40)]
        big = [pool.submit(http, "PUT", kv(base, "oversized"), oversized) for _ in range(6)]
        for reply in (future.result() for future in big):
            document = check_error(reply, 413, "from a client", f"max_value_bytes ({NODE_MAX_VALUE_BYTES})")
            assert document.get("maybe_applied") is False, document
        assert [future.result().status for future in small] == [201] * 40
    check_error(http("GET", kv(base, "oversized")), 404)


def test_unknown_paths_404_and_wrong_methods_405_in_json(api):
    base, _ = api
    root = base[: -len(PREFIX)]
    for url in (f"{root}/", f"{root}/nope", f"{base}/kv/", f"{base}/kv//", f"{base}/kv/a/b/", f"{base}/other/"):
        check_error(http("GET", url), 404, "no such path")
    # Named as sent: decoded, it read as /kv-store/v1/kv/zz/, a path that exists.
    check_error(http("PUT", f"{base}/kv%2Fzz/", {"value": 1}), 404, f"no such path: {PREFIX}/kv%2Fzz/")
    reply = http("POST", kv(base, "k"), {"value": 1})
    check_error(reply, 405, "POST")
    assert set(reply.headers["Allow"].split(",")) == {"GET", "HEAD", "PUT", "DELETE"}
    check_error(http("PUT", f"{base}/health/", {"value": 1}), 405)


def test_health_document_field_by_field(api, cluster):
    base, _ = api
    reply = http("GET", f"{base}/health/")
    assert reply.status == 200, reply.text
    assert reply.headers["Cache-Control"] == "no-store"
    health = reply.json
    assert health["status"] == "healthy"
    c = health["cluster"]
    assert c["replication_enabled"] is True
    assert c["total_nodes"] == 3
    assert c["healthy_nodes"] == 3
    assert c["unhealthy_nodes"] == 0
    assert c["required_for_quorum"] == 2
    assert c["has_quorum"] is True
    assert c["can_accept_writes"] is True
    assert c["automatic_failover_enabled"] is True
    assert c["retry_attempts"] == 3
    assert isinstance(c["nodes"], list) and len(c["nodes"]) == 2  # the answering node's peers
    others = set(cluster.endpoints) - {cluster[health["node_id"]].address}
    assert {node["url"] for node in c["nodes"]} == others
    assert all(node["healthy"] is True for node in c["nodes"])


def test_in_node_bridge_reports_its_own_node(cluster):
    for node_id, url in cluster.http_urls.items():
        assert http("GET", f"{url}{PREFIX}/health/").json["node_id"] == node_id


def test_openapi_document_is_served(api):
    base, _ = api
    reply = http("GET", f"{base}/openapi.json")
    assert reply.status == 200
    document = reply.json
    assert document["openapi"].startswith("3.")
    assert {"/kv-store/v1/kv/{key}/", "/kv-store/v1/health/"} <= set(document["paths"])


# --- losing quorum -----------------------------------------------------------------------


def test_without_quorum_health_and_writes_are_503_and_local_reads_work(tmp_path):
    nodes = LocalCluster(3, data_dir=tmp_path / "data", sync="off")
    urls = with_http(nodes, "n1")
    with nodes:
        wait_for(lambda: answers(urls["n1"]), timeout=15, what="n1's bridge")
        # The dead nodes first: the standalone bridge must fail over to n1.
        with BridgeProcess(nodes.endpoints_of("n2", "n3", "n1"), log_path=tmp_path / "bridge.log") as standalone:
            bases = [f"{urls['n1']}{PREFIX}", f"{standalone.url}{PREFIX}"]
            assert http("PUT", kv(bases[0], "k"), {"value": "before"}).status == 201
            # n2 stops cleanly: restarted after kill -9 it would vote again only once
            # caught up from both peers, n3 included (README, Limits).
            nodes.terminate("n2")
            nodes.kill("n3")
            nodes.wait_peers("n1", down=["n2", "n3"])
            for base in bases:
                health = http("GET", f"{base}/health/")
                assert health.status == 503, health.text
                assert health.headers["Retry-After"] == "1"
                assert health.json["status"] == "unavailable"
                cluster = health.json["cluster"]
                assert (cluster["has_quorum"], cluster["can_accept_writes"]) == (False, False)
                assert (cluster["healthy_nodes"], cluster["unhealthy_nodes"]) == (1, 2)
                assert all(node["healthy"] is False for node in cluster["nodes"])

                write = http("PUT", kv(base, "k"), {"value": "after"})
                check_error(write, 503, WRITE_NO_QUORUM)
                assert write.headers["Retry-After"] == "1"
                check_error(http("DELETE", kv(base, "k")), 503, WRITE_NO_QUORUM)
                check_error(http("GET", kv(base, "k")), 503, "consistency 'one'")

                local = http("GET", kv(base, "k") + "?consistency=one")
                assert local.status == 200, local.text
                assert local.json["value"] in ("before", "after")  # a failed write may or may not have landed

            nodes.start("n2").wait_ready("n1", "n2")
            wait_for(lambda: all(http("GET", f"{base}/health/").status == 200 for base in bases), timeout=10,
                     what="health back to 200 with a majority")
            assert http("PUT", kv(bases[1], "k"), {"value": "again"}).status == 200
        assert "Traceback" not in standalone.log()


def test_no_node_reachable_is_503_in_json(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    with BridgeProcess([dead], log_path=tmp_path / "bridge.log", args=["--timeout", "2"]) as bridge:
        base = f"{bridge.url}{PREFIX}"
        check_error(http("GET", kv(base, "k")), 503, dead)
        check_error(http("PUT", kv(base, "k"), {"value": 1}), 503)
        check_error(http("GET", f"{base}/health/"), 503)
    assert "Traceback" not in bridge.log()


# --- CONFLICT and maybe_applied, from a scripted node -------------------------------------


async def bridge_answer(answer, method, path, body=None):
    async with ScriptedNode(answer, answers_hello=False) as node:
        app = create_app(BridgeConfig(endpoints=(node.address,), retry=RetryPolicy(attempts=1)))
        async with TestClient(TestServer(app)) as client:
            response = await client.request(method, f"{PREFIX}{path}", json=body)
            return response.status, dict(response.headers), json.loads(await response.text())


async def test_a_delete_conflict_is_409_with_maybe_applied():
    def conflict(request):
        return ErrorReply(request.id, ErrorCode.CONFLICT, "DELETE raced with a concurrent write of the key")

    status, headers, document = await bridge_answer(conflict, "DELETE", "/kv/k/")
    assert status == 409
    assert document == {"error": "DELETE raced with a concurrent write of the key", "maybe_applied": True}
    assert "Retry-After" not in headers


@pytest.mark.parametrize("maybe_applied", [True, False, None])
async def test_no_quorum_says_maybe_applied_when_the_node_does(maybe_applied):
    def no_quorum(request):
        return ErrorReply(request.id, ErrorCode.NO_QUORUM, WRITE_NO_QUORUM, maybe_applied)

    status, headers, document = await bridge_answer(no_quorum, "PUT", "/kv/k/", {"value": 1})
    assert (status, headers["Retry-After"]) == (503, "1")
    expected = {"error": WRITE_NO_QUORUM}
    if maybe_applied is not None:
        expected["maybe_applied"] = maybe_applied
    assert document == expected


def test_conflict_is_mapped_to_409_and_documented():
    assert status_for(ConflictError("m")) == 409
    document = openapi_document(BridgeConfig())
    kv_path = document["paths"]["/kv-store/v1/kv/{key}/"]
    assert kv_path["delete"]["responses"]["409"] == {"$ref": "#/components/responses/Conflict"}
    assert "Conflict" in document["components"]["responses"]
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and error["properties"]["maybe_applied"]["type"] == "boolean"


# --- kvwire bridge as a command ----------------------------------------------------------


@pytest.fixture(scope="module")
def lone_node(tmp_path_factory):
    with NodeProcess("n1", data_dir=tmp_path_factory.mktemp("lone") / "n1", extra_args=["--sync", "off"]) as node:
        yield node


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_bridge_stops_cleanly_on_a_signal(tmp_path, lone_node, signum):
    bridge = BridgeProcess([lone_node.address], log_path=tmp_path / "bridge.log")
    with bridge:
        assert http("PUT", kv(f"{bridge.url}{PREFIX}", "signal"), {"value": 1}).status in (200, 201)
        assert bridge.signal(signum) == 0
    assert not answers(bridge.url)
    log = bridge.log()
    assert f"received {signal.Signals(signum).name}" in log and "stopped" in log
    assert "Traceback" not in log


def test_bridge_fails_over_to_the_next_endpoint(tmp_path, lone_node):
    dead = f"127.0.0.1:{free_port()}"
    with BridgeProcess([dead, lone_node.address], log_path=tmp_path / "bridge.log") as bridge:
        base = f"{bridge.url}{PREFIX}"
        assert http("PUT", kv(base, "failover"), {"value": "ok"}).status in (200, 201)
        assert http("GET", kv(base, "failover")).json["value"] == "ok"


def test_bridge_takes_its_options_from_the_environment(tmp_path, lone_node):
    port = free_port()
    bridge = BridgeProcess([], log_path=tmp_path / "bridge.log", port=port,
                           env={"KVWIRE_BRIDGE_LISTEN": f"127.0.0.1:{port}", "KVWIRE_ENDPOINTS": lone_node.address})
    bridge.command = [sys.executable, "-m", "kvwire", "bridge"]
    with bridge:
        assert http("GET", f"{bridge.url}{PREFIX}/health/").status == 200


def run_kvwire(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "kvwire", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_bridge_port_in_use_is_one_line_and_exit_1():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_kvwire("bridge", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "localhost"], "is not HOST:PORT"),
        (["--endpoints", "nope"], "invalid endpoint"),
        # The resolver's UnicodeError: every request answered 500 with a traceback logged, and
        # --listen a..b ended in a CRITICAL traceback with exit 1.
        (["--endpoints", "a..b:7379"], "'a..b' is not a host name"),
        (["--listen", "a..b:24230"], "'a..b' is not a host name"),
        (["--timeout", "0"], "--timeout"),
        (["--max-body-bytes", "10"], "--max-body-bytes"),
        (["--max-connections", "0"], "--max-connections"),
        (["--idle-timeout", "0"], "--idle-timeout"),
        (["--request-timeout", "-1"], "--request-timeout"),
        (["--log-level", "loud"], "--log-level"),
    ],
)
def test_bridge_bad_arguments_exit_2(args, message):
    result = run_kvwire("bridge", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bridge_help_names_every_option_and_its_variable():
    result = run_kvwire("bridge", "--help")
    assert result.returncode == 0
    for option, variable in [("--listen", "KVWIRE_BRIDGE_LISTEN"), ("--endpoints", "KVWIRE_ENDPOINTS"),
                             ("--timeout", "KVWIRE_TIMEOUT"), ("--cluster-id", "KVWIRE_CLUSTER_ID"),
                             ("--max-body-bytes", "KVWIRE_MAX_BODY_BYTES"), ("--max-key-bytes", "KVWIRE_MAX_KEY_BYTES"),
                             ("--max-value-bytes", "KVWIRE_MAX_VALUE_BYTES"), ("--fast-path", "KVWIRE_FAST_PATH"),
                             ("--max-connections", "KVWIRE_BRIDGE_MAX_CONNECTIONS"),
                             ("--idle-timeout", "KVWIRE_BRIDGE_IDLE_TIMEOUT"),
                             ("--request-timeout", "KVWIRE_BRIDGE_REQUEST_TIMEOUT"),
                             ("--allowed-hosts", "KVWIRE_BRIDGE_ALLOWED_HOSTS"),
                             ("--log-level", "KVWIRE_LOG_LEVEL")]:
        assert option in result.stdout and variable in result.stdout


# --- kvwire serve --http-listen ----------------------------------------------------------


def test_serve_with_http_listen_stops_both_cleanly(tmp_path):
    port = free_port()
    node = NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off", "--http-listen", f"127.0.0.1:{port}"])
    with node:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(url), timeout=15, what="the node's bridge")
        assert http("PUT", kv(f"{url}{PREFIX}", "k"), {"value": "v"}).status == 201
        assert node.terminate() == 0
    assert not answers(url)
    log = node.log()
    assert "HTTP bridge on 127.0.0.1" in log and "stopped" in log and "storage flushed and closed; bye" in log
    assert "Traceback" not in log


def test_serve_http_port_in_use_is_one_line_and_exit_1(tmp_path):
    node_port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_kvwire("serve", "--listen", f"127.0.0.1:{node_port}", "--data-dir", str(tmp_path / "n1"),
                            "--http-listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot start the HTTP bridge of node n1 on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "n1").exists()  # the node never opened its storage


def test_serve_bad_http_listen_is_a_usage_error(tmp_path):
    result = run_kvwire("serve", "--data-dir", str(tmp_path / "n1"), "--http-listen", "nowhere")
    assert result.returncode == 2
    assert "is not HOST:PORT" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("cluster_id", ["a b", "kv\n", ".."])
def test_a_bridge_refuses_a_cluster_id_no_node_could_have(cluster_id):
    """Accepted, it made every request fail 502 (the nodes refuse another cluster)."""
    result = run_kvwire("bridge", "--endpoints", "127.0.0.1:1", "--cluster-id", cluster_id)
    assert result.returncode == 2
    assert f"cluster id {cluster_id!r} must be" in result.stderr and "Traceback" not in result.stderr


def test_serve_help_lists_http_listen():
    result = run_kvwire("serve", "--help")
    assert "--http-listen" in result.stdout and "KVWIRE_HTTP_LISTEN" in result.stdout
    assert "--http-allowed-hosts" in result.stdout and "KVWIRE_HTTP_ALLOWED_HOSTS" in result.stdout


def test_json_values_module_is_what_the_cli_uses():
    # One convention for bytes in JSON: the CLI and the bridge share the client's helper.
    from kvwire.cli import client_io as cli_io
    from kvwire.client import json_values
    from kvwire.http_bridge import values

    assert cli_io.json_text is json_values.json_text is values.json_text
    assert cli_io.parse_json is json_values.parse_json is values.parse_json
    assert json.loads('{"$bytes": "AP8="}', object_hook=json_values.decode_bytes) == b"\x00\xff"


# --- errors: one tree, statuses read from it -------------------------------------------------



# The statuses the README's table gives error kinds of their own; the rest go by ``transient``.
OWN_STATUSES = {
    errors.KeyNotFoundError: 404,
    errors.BadRequestError: 400,
    errors.UnauthenticatedError: 401,
    errors.TooLargeError: 413,
    errors.ConflictError: 409,
    errors.KvwireTimeoutError: 504,
    errors.ServerTimeoutError: 504,
}


def expected_status(error: errors.KvwireError) -> int:
    if isinstance(error, UnrepresentableValueError):
        return 406
    own = [status for kind, status in OWN_STATUSES.items() if isinstance(error, kind)]
    if own:
        return own[0]
    return 503 if error.transient else 502


def test_the_walk_finds_the_whole_error_tree():
    classes = set(error_classes())
    assert {getattr(errors, name) for name in errors.__all__ if name.endswith("Error")} <= classes
    assert {UnrepresentableValueError, DataDirError} <= classes


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_has_the_status_its_kind_and_transient_give(cls):
    error = sample_error(cls)
    assert status_for(error) == expected_status(error)


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_the_bridge_and_kvwire_cli_agree_on_what_is_worth_retrying(cls):
    # Exit 3 ("try again later") exactly where the bridge answers 503, 504 or 409;
    # exit 1 exactly where it answers 404.
    from kvwire.cli.client import exit_code_for

    error = sample_error(cls)
    status, code = status_for(error), exit_code_for(error)
    assert (code == 3) == (status in (409, 503, 504)), (status, code)
    assert (code == 1) == (status == 404), (status, code)


def test_a_new_error_class_gets_its_status_from_transient():
    class NewlyTransient(errors.ServerError):
        transient = True

    class NewlyFatal(errors.ServerError):
        pass

    assert status_for(NewlyTransient("m")) == 503
    assert status_for(NewlyFatal("m")) == 502
    # A subclass keeps its parent's own status.
    assert status_for(type("SlowerTimeout", (errors.KvwireTimeoutError,), {})("m")) == 504


def test_bad_bodies_are_errors_of_the_tree():
    from kvwire.http_bridge.values import read_put_body, to_json_text

    with pytest.raises(errors.BadRequestError, match="no \"value\" field"):
        read_put_body(b"{}", DEFAULT_LIMITS)
    with pytest.raises(errors.TooLargeError, match="the limit is 100 bytes"):
        read_put_body(b'{"value": "%s"}' % (b"x" * 200), Limits(max_value_bytes=100, max_frame_bytes=4096))
    with pytest.raises(UnrepresentableValueError):
        to_json_text({"value": float("nan")})
    assert issubclass(UnrepresentableValueError, errors.KvwireError) and not UnrepresentableValueError.transient


@pytest.mark.parametrize("value", [[55039], {"n": 55295}, [0.5, 1234.5678]], ids=["int", "map", "floats"])
def test_a_value_whose_bytes_look_like_a_timestamp_goes_both_ways(api, cluster, request, value):
    """[55039] packs as 91 cd d6 ff: a timestamp's header, but no timestamp. The node's own
    bridge refused to read it back, and values checked before a PUT were refused too."""
    base, _ = api
    key = f"lookalike-{request.node.callspec.id}"
    assert http("PUT", kv(base, key), {"value": value}).status in (200, 201)
    assert http("GET", kv(base, key)).json["value"] == value
    with Client(cluster.endpoints) as client:
        assert client.get(key) == value
