"""deploy/nginx/ with a real nginx in front of real nodes.

The configs name the addresses of `kvwire up`; each test copies them with the
addresses replaced by free loopback ports, and runs nginx in the foreground
with its pid file and logs in the test's directory (never the system
nginx's). Figures are printed (`pytest -s`) and, when KVWIRE_FIGURES names
a file, added to it as JSON lines.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from rest_helpers import PREFIX, http, with_http

from kvwire import Client
from kvwire.testing import LocalCluster, wait_for
from kvwire.testing.balancer import NginxProcess, free_address, kill_under_load, report_figures

ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "deploy" / "nginx"
NODES = ["127.0.0.1:7379", "127.0.0.1:7380", "127.0.0.1:7381"]
BRIDGES = ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"]


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        pytest.fail("nginx is not installed: apt-get install -y nginx libnginx-mod-stream (see README)")
    return binary


def copy_config(workdir: Path, *, nodes: list[str], bridges: list[str], tcp: str, http: str) -> Path:
    """deploy/nginx/ copied to ``workdir/conf`` with every address replaced."""
    target = workdir / "conf"
    shutil.copytree(NGINX_DIR, target)
    replacements = {
        "kvwire-stream.conf": [*zip(NODES, nodes), ("listen 127.0.0.1:7000;", f"listen {tcp};")],
        "kvwire-http.conf": [*zip(BRIDGES, bridges), ("listen 127.0.0.1:8088;", f"listen {http};")],
    }
    for name, pairs in replacements.items():
        path = target / name
        text = path.read_text()
        for old, new in pairs:
            assert text.count(old) == 1, f"{name} should name {old} once"
            text = text.replace(old, new)
        path.write_text(text)
    return target / "nginx.conf"


@contextmanager
def nginx_before_a_cluster(nginx_binary: str, tmp_path: Path, *, sync: str = "normal",
                           edits: dict[str, tuple[str, str]] | None = None) -> Iterator[tuple[LocalCluster, str, str]]:
    """Three nodes serving REST in-process, and nginx in front of them with deploy/nginx/'s
    configs (``edits``: a file's one ``(old, new)`` replacement); yields the cluster, the
    stream proxy's address and the REST base URL through nginx."""
    cluster = LocalCluster(3, data_dir=tmp_path / "data", sync=sync)
    urls = with_http(cluster)
    with cluster:
        tcp, rest = free_address(), free_address()
        bridges = [urls[node_id].removeprefix("http://") for node_id in cluster.node_ids]
        config = copy_config(tmp_path, nodes=cluster.endpoints, bridges=bridges, tcp=tcp, http=rest)
        for name, (old, new) in (edits or {}).items():
            text = config.with_name(name).read_text()
            assert text.count(old) == 1, f"{name} should hold {old!r} once"
            config.with_name(name).write_text(text.replace(old, new))
        nginx = NginxProcess(config, workdir=tmp_path, binary=nginx_binary)
        nginx.start()
        try:
            nginx.wait_ready(addresses=[tcp, rest])
            yield cluster, tcp, f"http://{rest}{PREFIX}"
        finally:
            nginx.stop()


def test_the_config_validates_as_is(nginx_binary, tmp_path):
    result = NginxProcess(NGINX_DIR / "nginx.conf", workdir=tmp_path, binary=nginx_binary).validate()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_passive_checks_are_set_for_fast_failover():
    stream = (NGINX_DIR / "kvwire-stream.conf").read_text()
    http = (NGINX_DIR / "kvwire-http.conf").read_text()
    for text in (stream, http):
        servers = re.findall(r"^\s*server (127\.0\.0\.1:\d+) (.*);$", text, re.MULTILINE)
        assert len(servers) == 3
        assert all(options == "max_fails=1 fail_timeout=2s" for _, options in servers)
        assert "proxy_connect_timeout 500ms;" in text
        assert "proxy_next_upstream_tries 3;" in text
        assert re.search(r"^\s*zone kvwire_\w+ 64k;$", text, re.MULTILINE)  # failures shared by the workers
    assert [address for address, _ in re.findall(r"^\s*server (\S+) (.*);$", stream, re.MULTILINE)] == NODES
    assert "proxy_next_upstream on;" in stream
    assert "proxy_next_upstream error timeout http_502 http_503;" in http
    assert "libnginx-mod-stream" in (NGINX_DIR / "nginx.conf").read_text()


def test_a_node_killed_under_load_through_the_stream_proxy(nginx_binary, tmp_path):
    # --sync normal, as the other balancer tests: a kill -9 loses nothing acknowledged
    # with it, and this machine's disk stalls an fsync now and then (505-639 ms seen,
    # event=slow_commit), which the longest-stall bound below would count.
    cluster = LocalCluster(3, data_dir=tmp_path / "data", sync="normal")
    urls = with_http(cluster)  # each node serves REST in-process too
    with cluster:
        tcp, rest = free_address(), free_address()
        bridges = [urls[node_id].removeprefix("http://") for node_id in cluster.node_ids]
        config = copy_config(tmp_path, nodes=cluster.endpoints, bridges=bridges, tcp=tcp, http=rest)
        nginx = NginxProcess(config, workdir=tmp_path, binary=nginx_binary)
        validated = nginx.validate()
        assert validated.returncode == 0, validated.stderr
        nginx.start()
        try:
            nginx.wait_ready(addresses=[tcp, rest])
            base = f"http://{rest}{PREFIX}"
            wait_for(lambda: http("GET", f"{base}/health/").status == 200, timeout=15, what="REST through nginx")
            assert http("PUT", f"{base}/kv/rest/", {"value": "over http"}).status == 201
            assert http("GET", f"{base}/kv/rest/").json["value"] == "over http"
            assert http("DELETE", f"{base}/kv/rest/").status == 200
            assert http("GET", f"{base}/kv/rest/").status == 404
            with Client([tcp], timeout=3) as kv:
                kv.put("greeting", "hello")
                assert kv.get("greeting") == "hello"
                kv.delete("greeting")
                with pytest.raises(KeyError):
                    kv.get("greeting")

            victim, _, report = kill_under_load(cluster, tcp)
            report_figures("nginx_kill_one_node", report.as_dict())
            assert len(report.failures) <= 2, report.as_dict()
            assert report.longest_stall_s < 1.0, report.as_dict()
            # REST too: the dead node's bridge is skipped (proxy_next_upstream error).
            for i in range(6):
                assert http("PUT", f"{base}/kv/after-{i}/", {"value": i}).status == 201

            # n2 comes back: after fail_timeout (2 s) nginx tries it again.
            cluster.start(victim)
            cluster.wait_ready(victim)
            with Client([tcp], timeout=5) as kv:
                for key, value in report.acknowledged.items():
                    assert kv.get(key) == value, key
        finally:
            nginx.stop()


def test_a_delete_is_never_sent_to_a_second_bridge(nginx_binary, tmp_path):
    """A DELETE that reached a bridge which then went silent is not sent to another:
    the hung node, resumed, may still apply it, and a copy acknowledged elsewhere
    meanwhile, followed by a PUT of the key, lost that PUT. PUTs and GETs still move on."""
    edit = {"kvwire-http.conf": ("proxy_read_timeout 6s;", "proxy_read_timeout 2s;")}
    with nginx_before_a_cluster(nginx_binary, tmp_path, edits=edit) as (cluster, _tcp, base):
        with Client(cluster.endpoints, timeout=5) as client:
            for number in range(3):
                client.put(f"doomed-{number}", number)
        cluster.pause("n1")  # its bridge runs in its process: hung too
        try:
            # Until its peers see n1 DOWN they would forward their DELETEs to it (it
            # coordinates DELETEs) and wait on it too.
            for node_id in ("n2", "n3"):
                cluster.wait_peers(node_id, up=[other for other in ("n2", "n3") if other != node_id],
                                   down=["n1"], timeout=10.0)
            # Each nginx worker picks bridges round robin, n1's first: three DELETEs reach it.
            answers = []
            for number in range(3):
                started = time.monotonic()
                answers.append((http("DELETE", f"{base}/kv/doomed-{number}/").status, time.monotonic() - started))
            # One that waited out the read timeout on n1's bridge was not sent on: 504, not a 200 from another.
            waited = [status for status, seconds in answers if seconds >= 1.5]
            assert waited and set(waited) == {504}, answers
            assert {status for status, seconds in answers if seconds < 1.5} <= {200}, answers
            assert http("PUT", f"{base}/kv/after/", {"value": 1}).status == 201
        finally:
            cluster.resume("n1")


def test_a_dead_bridge_fails_one_delete_not_one_a_worker(nginx_binary, tmp_path):
    """A DELETE is not sent on (above), so the one that finds a bridge dead fails (502), and
    the bridge is skipped for fail_timeout. Without a zone each worker process learned that
    on its own: with two workers, 2 of 12 DELETEs in a second failed (a REST probe's finding)."""
    four_workers = {"nginx.conf": ("worker_processes auto;", "worker_processes 4;")}  # as on a 4-core machine
    with nginx_before_a_cluster(nginx_binary, tmp_path, sync="off", edits=four_workers) as (cluster, _tcp, base):
        with Client(cluster.endpoints, timeout=5) as client:
            for number in range(12):
                client.put(f"gone-{number}", number)
        cluster.kill("n1")  # its bridge runs in its process: refused connections
        for node_id in ("n2", "n3"):
            cluster.wait_peers(node_id, up=[other for other in ("n2", "n3") if other != node_id],
                               down=["n1"], timeout=10.0)
        answers = []
        for number in range(12):
            answers.append((time.monotonic(), http("DELETE", f"{base}/kv/gone-{number}/").status))
        failed = [at for at, status in answers if status == 502]
        assert {status for _, status in answers} <= {200, 502}, answers
        # fail_timeout is 2 s: the dead bridge is tried again only after it.
        assert failed and (len(failed) == 1 or failed[1] - failed[0] >= 2.0), answers


def seconds_of(config_text: str, directive: str) -> float:
    [value] = re.findall(rf"^\s*{directive} (\d+)s;", config_text, re.MULTILINE)
    return float(value)


def test_a_retry_can_still_start_after_a_hung_bridges_read_timeout():
    """nginx starts no retry once proxy_next_upstream_timeout has passed since the first
    try: at 6 s against a read timeout of 10 s, a GET or PUT sent to a hung bridge got
    nginx's 504 after 10 s and was never tried on another."""
    text = (NGINX_DIR / "kvwire-http.conf").read_text()
    read, window = seconds_of(text, "proxy_read_timeout"), seconds_of(text, "proxy_next_upstream_timeout")
    assert read > 5  # the bridge's own --timeout: its answers come before nginx gives up on it
    assert window > 2 * read  # a retry after a hung bridge, and after a second one


def test_a_request_that_stops_coming_is_cut_off_when_the_bridge_would():
    """nginx's own default is 60 s: a load balancer probe's half-sent body was held that
    long and closed with no answer, where HAProxy and the bridge answer 408 at 10 s."""
    from http_bridge.config import BridgeConfig

    text = (NGINX_DIR / "kvwire-http.conf").read_text()
    for directive in ("client_header_timeout", "client_body_timeout"):
        assert seconds_of(text, directive) == BridgeConfig().request_timeout


def test_gets_and_puts_sent_to_a_hung_bridge_are_answered_by_another(nginx_binary, tmp_path):
    """The shipped timeouts, end to end: n1 (and the bridge in its process) stopped."""
    with nginx_before_a_cluster(nginx_binary, tmp_path) as (cluster, _tcp, base):
        assert http("PUT", f"{base}/kv/k/", {"value": "before"}).status == 201
        cluster.pause("n1")
        try:
            for node_id in ("n2", "n3"):
                cluster.wait_peers(node_id, down=["n1"], timeout=10.0)
            answers = []
            for method, body in (("GET", None), ("PUT", {"value": "during"}), ("GET", None), ("PUT", {"value": 2})):
                started = time.monotonic()
                reply = http(method, f"{base}/kv/k/", body, timeout=30)
                answers.append((method, reply.status, round(time.monotonic() - started, 1)))
            assert all(status in (200, 201) for _, status, _ in answers), answers
            # Round robin, n1's bridge first: some of them waited out its read timeout, then moved on.
            assert any(seconds >= 5 for *_, seconds in answers), answers
        finally:
            cluster.resume("n1")
