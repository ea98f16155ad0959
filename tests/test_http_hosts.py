"""The bridge's guard against DNS rebinding (http_bridge/hosts.py): which Host it answers for.

The rules alone, then real ``kvwire bridge`` and ``kvwire serve --http-listen``
processes over TCP, on the fast path and on aiohttp's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvwire.http_bridge import BridgeConfig, openapi_document
from kvwire.http_bridge.hosts import MAX_LOGGED_REFUSALS, HostCheck, host_of, normalize_allowed_host
from kvwire.testing import NodeProcess, free_port, wait_for
from kvwire.tls import TlsFiles
from rest_helpers import PREFIX, BridgeProcess, answers, http, raw_exchange

ATTACKER = "attacker.example"


# --- the rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("header, host", [
    ("kv.example", "kv.example"),
    ("KV.Example.:8000", "kv.example"),
    ("127.0.0.1:8000", "127.0.0.1"),
    ("[::1]:8000", "::1"),
    ("[::1]", "::1"),
    ("localhost:", "localhost"),
    ("[::1", None),
    ("::1", None),
    ("[kv.example]:80", None),
    ("a b", None),
    ("kv.example:http", None),
    ("kv.example:80:80", None),
    ("kv.example/x", None),
])
def test_host_of_a_header(header, host):
    assert host_of(header) == host


@pytest.mark.parametrize("header, allowed", [
    (None, True),
    ("", True),
    ("127.0.0.1:8000", True),
    ("10.1.2.3", True),
    ("[::1]:8000", True),
    ("localhost:8000", True),
    ("LOCALHOST.", True),
    ("kv.example:8088", True),
    ("Kv.Example", True),
    (ATTACKER, False),
    ("sub.kv.example", False),
    ("kv.example.attacker.example", False),
    ("127.0.0.1.attacker.example", False),
    ("localhost.attacker.example", False),
    ("a b", False),
])
def test_which_hosts_a_bridge_answers_for(header, allowed):
    assert HostCheck(("kv.example",)).allows(header) is allowed


def test_a_star_allows_every_host_even_a_malformed_one():
    check = HostCheck(("*",))
    assert check.allows(ATTACKER) and check.allows("a b")


def test_refusals_are_400_for_a_malformed_host_and_421_for_a_name_not_allowed(caplog):
    check = HostCheck(())
    status, message = check.refusal("a b")
    assert status == 400 and "malformed Host header 'a b'" in message
    with caplog.at_level("WARNING", logger="kvwire.http"):
        for _ in range(3):
            status, message = check.refusal(f"{ATTACKER}:8000")
    assert status == 421
    assert f"does not answer for host '{ATTACKER}'" in message and "--allowed-hosts" in message
    assert [record.getMessage().count(ATTACKER) > 0 for record in caplog.records] == [True]  # once per name


@pytest.mark.parametrize("host, advised", [
    # Both options: kvwire serve has --http-allowed-hosts, no --allowed-hosts.
    ("kv.internal", "or the bridge needs --allowed-hosts kv.internal (kvwire serve: --http-allowed-hosts kv.internal)"),
    ("*", "and no allowed host name is it"),  # '*' as a name would turn the check off
    ("a)b", "and no allowed host name is it"),  # a reg-name the option refuses
])
def test_the_log_advises_only_an_allowed_host_the_option_takes(caplog, host, advised):
    with caplog.at_level("WARNING", logger="kvwire.http"):
        assert HostCheck(()).refusal(host)[0] == 421
    [record] = caplog.records
    assert advised in record.getMessage()
    if "needs" in advised:
        assert normalize_allowed_host(host) == host


def test_refused_names_are_logged_up_to_a_bound(caplog):
    check = HostCheck(())
    with caplog.at_level("WARNING", logger="kvwire.http"):
        for index in range(MAX_LOGGED_REFUSALS + 10):
            check.refusal(f"n{index}.attacker.example")
    assert len(caplog.records) == MAX_LOGGED_REFUSALS


@pytest.mark.parametrize("given, kept", [
    ("KV.Example.", "kv.example"), ("*", "*"), ("10.0.0.1", "10.0.0.1"), ("[::1]", "::1"), ("my_host", "my_host"),
])
def test_allowed_host_names_are_normalized(given, kept):
    assert normalize_allowed_host(given) == kept
    assert BridgeConfig(allowed_hosts=(given, given.upper())).allowed_hosts == (kept,)


@pytest.mark.parametrize("given, fragment", [
    ("kv.example:8088", "has a port"),
    ("a b", "is not a host name"),
    ("", "is not a host name"),
    ("kv/example", "is not a host name"),
    ("-kv", "is not a host name"),
])
def test_bad_allowed_hosts_are_refused_by_name(given, fragment):
    with pytest.raises(ValueError, match=fragment):
        BridgeConfig(allowed_hosts=(given,))


def test_allowed_hosts_must_be_a_sequence_not_a_string():
    with pytest.raises(ValueError, match="not the string"):
        BridgeConfig(allowed_hosts="kv.example")


def test_only_plain_http_checks_hosts(tmp_path):
    for name in ("node.pem", "node.key"):
        (tmp_path / name).write_text("")
    assert BridgeConfig().checks_hosts
    assert not BridgeConfig(allowed_hosts=("*",)).checks_hosts
    assert not BridgeConfig(tls=TlsFiles(cert=tmp_path / "node.pem", key=tmp_path / "node.key")).checks_hosts


def test_the_openapi_document_lists_421_where_hosts_are_checked():
    def operations_with_421(config: BridgeConfig) -> set[tuple[str, str]]:
        return {(path, method) for path, operations in openapi_document(config)["paths"].items()
                for method, operation in operations.items()
                if method != "parameters" and "421" in operation["responses"]}

    kv = "/kv-store/v1/kv/{key}/"
    assert operations_with_421(BridgeConfig()) == {
        (kv, "get"), (kv, "head"), (kv, "put"), (kv, "delete"), ("/kv-store/v1/openapi.json", "get")}
    assert operations_with_421(BridgeConfig(allowed_hosts=("*",))) == set()


# --- real processes ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["fast-path", "aiohttp"])
def bridge(request, shared_node, tmp_path_factory):
    """A standalone bridge allowing kv.example, on the fast path or with aiohttp serving everything."""
    args = ["--allowed-hosts", "kv.example, other.example"]
    if request.param == "aiohttp":
        args.append("--no-fast-path")
    process = BridgeProcess([shared_node.address], log_path=tmp_path_factory.mktemp("bridge") / "bridge.log", args=args)
    with process:
        yield process
    assert "Traceback" not in process.log()


def key_url(bridge, key: str) -> str:
    return f"{bridge.url}{PREFIX}/kv/{key}/"


def with_host(host: str) -> dict:
    return {"Host": host}


@pytest.mark.parametrize("method, body", [("PUT", {"value": "rebound"}), ("GET", None), ("DELETE", None)])
def test_a_request_for_another_host_is_421_and_changes_nothing(bridge, request, method, body):
    key = f"hosts-{request.node.callspec.id}"
    assert http("PUT", key_url(bridge, key), {"value": "mine"}).status == 201
    reply = http(method, key_url(bridge, key), body, headers=with_host(f"{ATTACKER}:{bridge.port}"))
    assert reply.status == 421, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert f"does not answer for host '{ATTACKER}'" in reply.json["error"]
    assert http("GET", key_url(bridge, key)).json["value"] == "mine"


@pytest.mark.parametrize("host", ["kv.example", "KV.EXAMPLE.:{port}", "other.example:{port}", "localhost:{port}",
                                  "127.0.0.1:{port}", "[::1]:{port}"])
def test_ip_addresses_localhost_and_the_allowed_names_are_answered(bridge, request, host):
    key = f"allowed-{abs(hash(request.node.callspec.id))}"
    headers = with_host(host.format(port=bridge.port))
    assert http("PUT", key_url(bridge, key), {"value": host}, headers=headers).status in (200, 201)
    assert http("GET", key_url(bridge, key), headers=headers).json["value"] == host
    assert http("DELETE", key_url(bridge, key), headers=headers).status == 200


def test_a_malformed_host_is_400(bridge):
    reply = http("GET", key_url(bridge, "any"), headers=with_host("kv.example:http"))
    assert reply.status == 400 and "malformed Host header" in reply.json["error"]


@pytest.mark.parametrize("path", [f"{PREFIX}/health/", f"{PREFIX}/health", "/metrics"])
def test_health_and_metrics_answer_whatever_the_host(bridge, path):
    assert http("GET", f"{bridge.url}{path}", headers=with_host(ATTACKER)).status == 200


@pytest.mark.parametrize("path", [f"{PREFIX}/ui/", f"{PREFIX}/openapi.json", f"{PREFIX}/nowhere"])
def test_every_other_route_refuses_another_host(bridge, path):
    reply = http("GET", f"{bridge.url}{path}", headers=with_host(ATTACKER))
    assert reply.status == 421 and ATTACKER in reply.json["error"]


def test_pipelined_requests_are_each_judged_by_their_own_host(bridge):
    """A refused request in the middle of a connection: the ones around it are still answered, in order."""
    def put(key: str, host: str) -> bytes:
        body = json.dumps({"value": host}).encode()
        return (f"PUT {PREFIX}/kv/{key}/ HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    data = put("pipe-1", "127.0.0.1") + put("pipe-2", ATTACKER) + put("pipe-3", "kv.example")
    statuses = [response.status for response in raw_exchange(bridge.port, data, heads=(False,) * 3)]
    assert statuses[0] in (200, 201) and statuses[1] == 421 and statuses[2] in (200, 201)
    assert http("GET", key_url(bridge, "pipe-2")).status == 404
    assert http("GET", key_url(bridge, "pipe-3")).json["value"] == "kv.example"


def test_a_refused_name_is_logged_once_with_its_remedy(bridge):
    for _ in range(3):
        assert http("GET", key_url(bridge, "logged"), headers=with_host("once.attacker.example")).status == 421
    wait_for(lambda: "'once.attacker.example'" in bridge.log(), timeout=10, what="the refusal's log line")
    lines = [line for line in bridge.log().splitlines() if "'once.attacker.example'" in line]
    assert len(lines) == 1 and "--allowed-hosts once.attacker.example" in lines[0]


def test_a_node_s_own_bridge_checks_hosts_and_takes_http_allowed_hosts(tmp_path):
    port = free_port()
    node = NodeProcess("n1", data_dir=tmp_path / "n1",
                       extra_args=["--sync", "off", "--http-listen", f"127.0.0.1:{port}"],
                       env={"KVWIRE_HTTP_ALLOWED_HOSTS": "kv.example"})
    with node:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(url), timeout=15, what="the node's bridge")
        key = f"{url}{PREFIX}/kv/own/"
        assert http("PUT", key, {"value": 1}, headers=with_host(ATTACKER)).status == 421
        assert http("PUT", key, {"value": 2}, headers=with_host(f"kv.example:{port}")).status == 201
        assert http("GET", key).json["value"] == 2
    assert "Traceback" not in node.log()


def test_any_host_with_a_star(shared_node, tmp_path):
    with BridgeProcess([shared_node.address], log_path=tmp_path / "bridge.log", args=["--allowed-hosts", "*"]) as bridge:
        assert http("PUT", key_url(bridge, "star"), {"value": 1}, headers=with_host(ATTACKER)).status in (200, 201)


def run_kvwire(*args):
    return subprocess.run([sys.executable, "-m", "kvwire", *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", [
    ["bridge", "--allowed-hosts", "kv.example:8088"],
    ["serve", "--http-listen", "127.0.0.1:1", "--http-allowed-hosts", "kv.example:8088"],
])
def test_an_allowed_host_with_a_port_is_a_usage_error(command, tmp_path):
    result = run_kvwire(*command, *(["--data-dir", str(tmp_path / "n1")] if command[0] == "serve" else []))
    assert result.returncode == 2, result.stderr
    assert "allowed host 'kv.example:8088' has a port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "n1").exists()


def test_http_allowed_hosts_without_http_listen_is_a_usage_error(tmp_path):
    result = run_kvwire("serve", "--data-dir", str(tmp_path / "n1"), "--http-allowed-hosts", "kv.example")
    assert result.returncode == 2 and "--http-allowed-hosts is for the REST API of --http-listen" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "n1").exists()


def test_http_allowed_hosts_from_the_environment_of_a_node_without_rest_is_moot(tmp_path):
    """KVWIRE_HTTP_ALLOWED_HOSTS in an environment shared by nodes (kvwire up --no-http, an env file)."""
    node = NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"],
                       env={"KVWIRE_HTTP_ALLOWED_HOSTS": "kv.example"})
    with node:
        assert node.running
    assert "Traceback" not in node.log()
