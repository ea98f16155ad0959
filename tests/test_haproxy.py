"""haproxy/kvwire.cfg with a real haproxy in front of real nodes.

Every address comes from the config's environment variables, set here to
free loopback ports. Figures (detection time, failed requests, longest
stall) are printed (`pytest -s`) and, when KVWIRE_FIGURES names a file,
added to it as JSON lines.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
from rest_helpers import PREFIX, http, with_http
from test_up import free_port_runs

from kvwire import Client, NoQuorumError
from kvwire.protocol import HealthReply, encode
from kvwire.protocol.messages import Health, Ping, Pong
from kvwire.testing import LocalCluster, RawConnection, free_port_run, stop_gracefully, wait_for
from kvwire.testing.balancer import HAProxyProcess, LoadReport, free_address, kill_under_load, report_figures

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "haproxy" / "kvwire.cfg"
# HAProxy's own answer when no bridge can take a request (http-error 503 in the config).
NO_NODE_503 = {"error": "No node available; a PUT retried after its node failed may have been applied",
               "status": 503, "balancer": "haproxy"}
QUORUM_PATTERN = msgpack.packb("has_quorum") + msgpack.packb(True)
WRITE_NO_QUORUM = "Failed to replicate to quorum of nodes"


@pytest.fixture(scope="module")
def haproxy_binary() -> str:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.fail("haproxy is not installed: apt-get install -y haproxy (see README)")
    return binary


def config_lines(backend: str | None = None) -> list[str]:
    """The config's directives (comments dropped), those of one section if ``backend`` is given."""
    lines, section = [], None
    for raw in CONFIG.read_text().splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith("presetenv") else raw.strip()
        if not line:
            continue
        if not raw.startswith((" ", "\t")):
            section = line
        if backend is None or section == f"backend {backend}":
            lines.append(line)
    return lines


def presets() -> dict[str, str]:
    found = {}
    for line in config_lines():
        match = re.fullmatch(r'presetenv (\S+) (?:"([^"]*)"|(\S+))', line)
        if match:
            found[match[1]] = match[2] if match[2] is not None else match[3]
    return found


def check_steps(backend: str) -> tuple[bytes, int, bytes]:
    """(bytes sent, min-recv, bytes expected) of a backend's tcp-check."""
    lines = config_lines(backend)
    [send] = [line.split()[-1] for line in lines if line.startswith("tcp-check send-binary")]
    [expect] = [line for line in lines if line.startswith("tcp-check expect")]
    match = re.fullmatch(r"tcp-check expect min-recv (\d+) binary ([0-9a-f]+)", expect)
    assert match, expect
    return bytes.fromhex(send), int(match[1]), bytes.fromhex(match[2])


# --- the config itself ----------------------------------------------------------------------


def test_the_config_validates_as_is_and_with_production_addresses(haproxy_binary, tmp_path):
    as_is = subprocess.run([haproxy_binary, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30)
    assert as_is.returncode == 0, as_is.stderr
    env = {
        **os.environ,
        **{f"KVWIRE_NODE{i}": f"10.0.0.{i}:7379" for i in (1, 2, 3)},
        **{f"KVWIRE_HTTP{i}": f"10.0.0.{i}:8000" for i in (1, 2, 3)},
        "KVWIRE_LB_TCP": "127.0.0.1:17000",
        "KVWIRE_LB_SOCKET": str(tmp_path / "admin.sock"),
        # The conservative preset of README "Deployment".
        "KVWIRE_LB_CHECK": "inter 2s fastinter 1s downinter 5s rise 3 fall 3 observe layer4 error-limit 10 on-error fail-check",
        "KVWIRE_LB_CHECK_TIMEOUT": "1s",
    }
    production = subprocess.run([haproxy_binary, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30, env=env)
    assert production.returncode == 0, production.stderr
    env["KVWIRE_LB_CHECK"] = "inter nonsense"
    broken = subprocess.run([haproxy_binary, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30, env=env)
    assert broken.returncode != 0  # so the variable really reaches the server lines


def test_a_soft_reload_hands_over_and_the_old_process_exits_cleanly(haproxy_binary, tmp_path):
    """`haproxy -sf OLD`, as init scripts reload: the old process stops cleanly (HAProxy
    2.6 crashed, exit 139, pausing an abstract socket a version of this config bound),
    and the new one answers, here its own JSON 503 as no bridge runs."""
    env = {
        **os.environ,
        **{f"KVWIRE_NODE{i}": free_address() for i in (1, 2, 3)},
        **{f"KVWIRE_HTTP{i}": free_address() for i in (1, 2, 3)},
        "KVWIRE_LB_TCP": free_address(), "KVWIRE_LB_HTTP": free_address(), "KVWIRE_LB_STATS": free_address(),
        "KVWIRE_LB_SOCKET": str(tmp_path / "admin.sock"),
    }

    def start(*args: str) -> subprocess.Popen:
        log = open(tmp_path / f"haproxy-{len(list(tmp_path.glob('haproxy-*')))}.log", "wb")
        with log:
            return subprocess.Popen([haproxy_binary, "-db", "-f", str(CONFIG), *args], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)

    def json_503() -> bool:
        try:
            reply = http("GET", f"http://{env['KVWIRE_LB_HTTP']}{PREFIX}/kv/any/", timeout=2)
        except OSError:
            return False  # not listening yet
        return reply.status == 503 and reply.json == NO_NODE_503

    old = start()
    new = None
    try:
        wait_for(lambda: old.poll() is None and json_503(), timeout=10,
                 what="the first haproxy answering")
        new = start("-sf", str(old.pid))
        assert old.wait(timeout=10) == 0, (tmp_path / "haproxy-0.log").read_text()
        assert new.poll() is None and json_503(), (tmp_path / "haproxy-1.log").read_text()
    finally:
        for process in (old, new):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=10)


def test_defaults_match_kvwire_up_and_the_fast_preset():
    values = presets()
    assert values["KVWIRE_NODE1"] == "127.0.0.1:7379"
    assert values["KVWIRE_NODE2"] == "127.0.0.1:7380"
    assert values["KVWIRE_NODE3"] == "127.0.0.1:7381"
    assert [values[f"KVWIRE_HTTP{i}"] for i in (1, 2, 3)] == ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"]
    # Loopback unless told otherwise (issue 11): a balancer must not open a store to the network by default.
    assert (values["KVWIRE_LB_TCP"], values["KVWIRE_LB_HTTP"], values["KVWIRE_LB_STATS"]) == (
        "127.0.0.1:7000", "127.0.0.1:8088", "127.0.0.1:8080")
    check = values["KVWIRE_LB_CHECK"].split()
    timing = dict(zip(check[0::2], check[1::2]))
    assert {k: timing[k] for k in ("inter", "fastinter", "downinter", "rise", "fall")} == {
        "inter": "200ms", "fastinter": "100ms", "downinter": "500ms", "rise": "2", "fall": "2",
    }
    assert "observe layer4 error-limit 1 on-error mark-down" in values["KVWIRE_LB_CHECK"]
    assert values["KVWIRE_LB_CHECK_TIMEOUT"] == "300ms"
    for backend in ("kvwire_nodes", "kvwire_nodes_minority", "kvwire_bridges", "kvwire_bridges_minority"):
        lines = config_lines(backend)
        # TCP sessions of a dead node are cut so clients reconnect; cutting HTTP
        # ones left clients with an empty reply (issue 11).
        expected = 'default-server "${KVWIRE_LB_CHECK[*]}"' + (" on-marked-down shutdown-sessions" if "nodes" in backend else "")
        assert expected in lines, backend
        assert not any(line.startswith("balance leastconn") for line in lines), backend
        assert sum(line.startswith("server ") and line.endswith(" check") for line in lines) == 3, backend
    text = CONFIG.read_text()
    assert "\n    retries 3\n" in text and "\n    option redispatch 1\n" in text
    # 503 too: a bridge whose node has no quorum says so until the checks take it out.
    assert "\n    retry-on conn-failure empty-response response-timeout 503\n" in text
    # PUTs are retried too (their request id makes a repeat apply once), DELETEs are not.
    assert "\n    http-request disable-l7-retry unless METH_GET || { method PUT }\n" in text
    assert "\n    http-request set-header X-Kvwire-Request-Id %[unique-id]\n" in text
    assert "\n    option http-buffer-request\n" in text
    assert "http-check send meth GET uri /kv-store/v1/health/" in text
    assert "http-check expect status 200" in text
    assert "http-request use-service prometheus-exporter if { path /metrics }" in text


def test_the_checks_send_and_expect_exactly_what_the_codec_produces():
    sent, min_recv, expected = check_steps("kvwire_nodes")
    assert sent == encode(Health(1))
    assert expected == QUORUM_PATTERN
    sent, min_recv_ping, expected = check_steps("kvwire_nodes_minority")
    assert sent == encode(Ping(1))
    assert expected == encode(Pong(1)) and min_recv_ping == len(expected)
    # min-recv: the pattern must end within the first min-recv bytes of the
    # smallest HEALTH reply a node can send (one-letter ids, sync "off",
    # counters at 0); a real node's reply is checked in the next test.
    smallest = {
        "status": "healthy", "node_id": "a", "cluster_id": "a", "uptime_s": 0.0, "protocol_version": 1,
        "connections": 0, "keys": 0, "cached_values": 0, "pending_writes": 0, "commits": 0,
        "committed_rows": 0, "sync": "off", "no_quorum_writes": 0, "read_write_backs": 0, "hedged_requests": 0,
        "cluster": {
            "replication_enabled": True, "total_nodes": 3, "healthy_nodes": 3, "unhealthy_nodes": 0,
            "required_for_quorum": 2, "has_quorum": True, "can_accept_writes": True,
            "automatic_failover_enabled": True, "retry_attempts": 0, "heartbeat_interval_ms": 0,
            "failure_timeout_ms": 0, "nodes": [],
        },
    }
    reply = encode(HealthReply(1, smallest))
    assert reply.index(QUORUM_PATTERN) + len(QUORUM_PATTERN) == min_recv


# --- through a running haproxy --------------------------------------------------------------


def cluster_with_bridges(data_dir: Path, **options) -> tuple[LocalCluster, list[str]]:
    """A cluster whose nodes each serve REST in-process (``--http-listen``), and those addresses."""
    cluster = LocalCluster(3, data_dir=data_dir, **options)
    urls = with_http(cluster)
    return cluster, [urls[node_id].removeprefix("http://") for node_id in cluster.node_ids]


def haproxy_for(cluster: LocalCluster, bridges: list[str], workdir: Path) -> HAProxyProcess:
    return HAProxyProcess.for_cluster(CONFIG, cluster, workdir=workdir, bridges=bridges)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, haproxy_binary):
    """A cluster with its bridges and HAProxy in front, shared by the tests that break nothing."""
    workdir = tmp_path_factory.mktemp("haproxy-healthy")
    cluster, bridges = cluster_with_bridges(workdir / "data", sync="normal")
    with cluster:
        with haproxy_for(cluster, bridges, workdir) as lb:
            lb.wait_all("kvwire_nodes", "UP")
            lb.wait_all("kvwire_bridges", "UP", timeout=15)
            yield cluster, lb


def test_a_real_health_reply_passes_the_check_and_fits_min_recv(healthy):
    cluster, _ = healthy
    _, min_recv, expected = check_steps("kvwire_nodes")
    for node_id in cluster.node_ids:
        with RawConnection(cluster[node_id].address, timeout=2) as connection:
            connection.send(Health(1))
            raw = b""
            while len(raw) < 4 or len(raw) < 4 + int.from_bytes(raw[:4], "big"):
                raw += connection.sock.recv(65536)
        end = raw.index(expected) + len(expected)
        assert min_recv <= end <= len(raw), (min_recv, end, len(raw))


def test_put_get_delete_through_the_tcp_frontend(healthy):
    _, lb = healthy
    seen_nodes = set()
    with Client([lb.tcp_address], timeout=3) as kv:
        version = kv.put("greeting", {"hello": "world"})
        assert kv.get("greeting") == {"hello": "world"}
        assert kv.get_with_version("greeting").version == version
        kv.delete("greeting")
        with pytest.raises(KeyError):
            kv.get("greeting")
    # roundrobin: new connections reach every node.
    for _ in range(6):
        with Client([lb.tcp_address], timeout=3) as kv:
            seen_nodes.add(kv.health()["node_id"])
    assert seen_nodes == {"n1", "n2", "n3"}


def test_put_get_delete_through_the_http_frontend(healthy):
    _, lb = healthy
    base = f"http://{lb.http_address}{PREFIX}"
    created = http("PUT", f"{base}/kv/greeting/", {"value": {"hello": ["world", 1]}})
    assert created.status == 201, created.text
    assert created.json["key"] == "greeting" and created.json["value"] == {"hello": ["world", 1]}
    replaced = http("PUT", f"{base}/kv/greeting", {"value": "again"})  # no trailing slash
    assert replaced.status == 200, replaced.text
    read = http("GET", f"{base}/kv/greeting/")
    assert read.status == 200 and read.json["value"] == "again"
    assert read.json["version"] == replaced.json["version"]
    assert http("GET", f"{base}/kv/greeting/?consistency=one").status == 200
    assert http("DELETE", f"{base}/kv/greeting/").status == 200
    missing = http("GET", f"{base}/kv/greeting/")
    assert missing.status == 404 and "error" in missing.json
    # The same store as the TCP frontend.
    with Client([lb.tcp_address], timeout=3) as kv:
        kv.put("from-tcp", [1, 2])
    assert http("GET", f"{base}/kv/from-tcp/").json["value"] == [1, 2]


def test_health_json_through_the_http_frontend_field_by_field(healthy):
    cluster, lb = healthy
    reply = http("GET", f"http://{lb.http_address}{PREFIX}/health/")
    assert reply.status == 200, reply.text
    health = reply.json
    assert health["status"] == "healthy"
    c = health["cluster"]
    assert c["replication_enabled"] is True
    assert (c["total_nodes"], c["healthy_nodes"], c["unhealthy_nodes"], c["required_for_quorum"]) == (3, 3, 0, 2)
    assert c["has_quorum"] is True and c["can_accept_writes"] is True
    assert c["automatic_failover_enabled"] is True
    assert c["retry_attempts"] == 3
    assert len(c["nodes"]) == 2
    for node in c["nodes"]:
        assert isinstance(node["url"], str) and node["url"] in cluster.endpoints
        assert node["healthy"] is True


def test_stats_csv_and_prometheus_metrics(healthy):
    _, lb = healthy
    assert lb.statuses("kvwire_nodes") == {"n1": "UP", "n2": "UP", "n3": "UP"}
    assert lb.statuses("kvwire_bridges") == {"n1": "UP", "n2": "UP", "n3": "UP"}
    status, page = lb.fetch("/stats")
    assert status == 200 and "kvwire_nodes" in page
    status, metrics = lb.fetch("/metrics")
    assert status == 200
    assert re.search(r'^haproxy_server_status\{proxy="kvwire_nodes",server="n1",state="UP"\} 1$', metrics, re.MULTILINE), metrics[:2000]
    assert re.search(r'^haproxy_backend_active_servers\{proxy="kvwire_nodes"\} 3$', metrics, re.MULTILINE)


# --- failures ---------------------------------------------------------------------------------


def kill_the_node_under_load(cluster: LocalCluster, lb: HAProxyProcess, **client_options) -> tuple[str, float, LoadReport]:
    """kill_under_load through ``lb``, timing the kill until HAProxy has the node DOWN (at most 1 s)."""
    return kill_under_load(cluster, lb.tcp_address, client_options=client_options,
                           after_kill=lambda victim: lb.wait_status("kvwire_nodes", victim, "DOWN", timeout=1.0))


def test_a_node_killed_under_load_is_out_within_a_second_and_no_acknowledged_write_is_lost(tmp_path, haproxy_binary):
    # --sync normal, as the other balancer tests: a kill -9 loses nothing acknowledged
    # with it, and this machine's disk stalls an fsync now and then (505-639 ms seen,
    # event=slow_commit), which the longest-stall bound below would count.
    with LocalCluster(3, data_dir=tmp_path / "data", sync="normal") as cluster:
        with HAProxyProcess.for_cluster(CONFIG, cluster, workdir=tmp_path) as lb:
            lb.wait_all("kvwire_nodes", "UP")
            victim, detection, report = kill_the_node_under_load(cluster, lb)
            figures = {"detection_ms": round(detection * 1000, 1), **report.as_dict()}

            # Recovery: back in rotation within 2 s of its restart.
            restarted_at = time.monotonic()
            cluster.start(victim)
            lb.wait_status("kvwire_nodes", victim, "UP", timeout=2.0)
            figures["back_up_ms"] = round((time.monotonic() - restarted_at) * 1000, 1)
            report_figures("haproxy_kill_one_node", figures)

            assert detection < 1.0
            assert len(report.failures) <= 2, figures
            assert report.longest_stall_s < 1.0, figures
            with Client([lb.tcp_address], timeout=5) as kv:
                for key, value in report.acknowledged.items():
                    assert kv.get(key) == value, key


def test_a_hung_node_is_out_within_two_seconds_and_back_once_it_runs(tmp_path, haproxy_binary):
    # SIGSTOP: the connect still succeeds (the kernel accepts), so only the check's
    # timeout takes the node out, slower than a kill's refused connect (the README's figure).
    with LocalCluster(3, data_dir=tmp_path / "data", sync="normal") as cluster:
        with HAProxyProcess.for_cluster(CONFIG, cluster, workdir=tmp_path) as lb:
            lb.wait_all("kvwire_nodes", "UP")
            cluster.pause("n3")
            try:
                out_after = lb.wait_status("kvwire_nodes", "n3", "DOWN", timeout=2.0)
                with Client([lb.tcp_address], timeout=5) as kv:
                    kv.put("while-n3-hangs", 1)  # the others take the traffic
            finally:
                cluster.resume("n3")
            back_after = lb.wait_status("kvwire_nodes", "n3", "UP", timeout=3.0)
            report_figures("haproxy_hung_node", {"out_ms": round(out_after * 1000, 1), "back_ms": round(back_after * 1000, 1)})
            assert out_after < 2.0


def test_without_a_majority_writes_fail_with_no_quorum_and_local_reads_work(tmp_path, haproxy_binary):
    cluster, bridges = cluster_with_bridges(tmp_path / "data", sync="normal")
    with cluster:
        with haproxy_for(cluster, bridges, tmp_path) as lb:
            lb.wait_all("kvwire_nodes", "UP")
            lb.wait_all("kvwire_bridges", "UP", timeout=15)
            with Client([lb.tcp_address], timeout=3) as kv:
                kv.put("before", "written with a majority")

            # Check-only detection, no traffic: the README's figure.
            killed_at = time.monotonic()
            cluster.kill("n3")
            lb.wait_status("kvwire_nodes", "n3", "DOWN", timeout=1.0)
            detection = time.monotonic() - killed_at

            # n1 alone: it loses quorum, fails the HEALTH check, and only the
            # minority backend (nodes answering PING) is left.
            stopped_at = time.monotonic()
            cluster.terminate("n2")
            lb.wait_status("kvwire_nodes", "n1", "DOWN", timeout=3.0)
            quorum_lost = time.monotonic() - stopped_at
            assert lb.statuses("kvwire_nodes_minority")["n1"] == "UP"

            with Client([lb.tcp_address], timeout=5) as kv:
                with pytest.raises(NoQuorumError, match="Failed to replicate to quorum of nodes"):
                    kv.put("during", "no majority")
                with pytest.raises(NoQuorumError):
                    kv.get("before")
                assert kv.get("before", consistency="one") == "written with a majority"
                assert kv.health()["cluster"]["has_quorum"] is False

            # REST: n1's bridge answers 503 to its check, the minority backend serves.
            lb.wait_status("kvwire_bridges", "n1", "DOWN", timeout=2.0)
            base = f"http://{lb.http_address}{PREFIX}"
            write = http("PUT", f"{base}/kv/during/", {"value": "no majority"})
            assert write.status == 503 and WRITE_NO_QUORUM in write.json["error"], write.text
            assert http("GET", f"{base}/health/").json["cluster"]["has_quorum"] is False
            local = http("GET", f"{base}/kv/before/?consistency=one")
            assert local.status == 200 and local.json["value"] == "written with a majority", local.text

            # Recovery: both restarted; once they answer and see each other,
            # all three are back in rotation within 2 s (n1 with its quorum).
            cluster.start("n2", "n3")
            cluster.wait_ready("n2", "n3")
            ready_at = time.monotonic()
            for node_id in ("n1", "n2", "n3"):
                lb.wait_status("kvwire_nodes", node_id, "UP", timeout=max(0.1, ready_at + 2.0 - time.monotonic()))
            back_up = time.monotonic() - ready_at
            with Client([lb.tcp_address], timeout=5) as kv:
                kv.put("after", "majority again")
                assert kv.get("after") == "majority again"
            report_figures(
                "haproxy_checks_only",
                {"detection_ms": round(detection * 1000, 1), "quorum_loss_out_ms": round(quorum_lost * 1000, 1), "all_up_after_ready_ms": round(back_up * 1000, 1)},
            )
            assert detection < 1.0


# --- kvwire up --haproxy ----------------------------------------------------------------------


def test_up_with_haproxy_runs_it_in_front_of_nodes_and_bridges(tmp_path, haproxy_binary):
    env = {
        **os.environ,
        "KVWIRE_LB_TCP": free_address(),
        "KVWIRE_LB_HTTP": free_address(),
        "KVWIRE_LB_STATS": free_address(),
    }
    base, http_base = free_port_runs(3)  # two runs that may not overlap
    command = [sys.executable, "-m", "kvwire", "up", "--haproxy", "--base-port", str(base), "--http-base-port", str(http_base),
               "--data-dir", str(tmp_path / "data"), "--sync", "off"]
    with open(tmp_path / "up.out", "wb") as out, open(tmp_path / "up.err", "wb") as err:
        up = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=tmp_path)
    output = lambda: (tmp_path / "up.out").read_text() + (tmp_path / "up.err").read_text()
    try:
        wait_for(lambda: "every node answers" in output() or up.poll() is not None, timeout=30, what="kvwire up ready")
        assert up.poll() is None, output()
        assert f"binary protocol on {env['KVWIRE_LB_TCP']}" in output()
        lb = HAProxyProcess(CONFIG, env=env, log_path=tmp_path / "unused.log")  # only to read its stats
        wait_for(lambda: set(lb.statuses("kvwire_nodes").values()) == {"UP"}, timeout=10, what="nodes UP in haproxy")
        wait_for(lambda: set(lb.statuses("kvwire_bridges").values()) == {"UP"}, timeout=10, what="bridges UP in haproxy")
        assert (tmp_path / "data" / "haproxy.sock").exists()
        with Client([env["KVWIRE_LB_TCP"]], timeout=3) as kv:
            kv.put("greeting", "hello")
        reply = http("GET", f"http://{env['KVWIRE_LB_HTTP']}{PREFIX}/kv/greeting/")
        assert reply.status == 200 and reply.json["value"] == "hello", reply.text

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0, output()
        assert "every node stopped cleanly" in output()
        # Started once the nodes answer: no "Server ... is DOWN" WARNING or "no server available" ALERT.
        assert not re.search(r"^haproxy \| .*\[(ALERT|WARNING)\]", output(), re.MULTILINE), output()
        assert not (tmp_path / "data" / "haproxy.sock").exists() and not (tmp_path / "data" / "up.sock").exists()
        assert "Traceback" not in output()
        host, port = env["KVWIRE_LB_STATS"].rsplit(":", 1)
        with pytest.raises(OSError):  # haproxy stopped with the nodes
            socket.create_connection((host, int(port)), timeout=1).close()
    finally:
        stop_gracefully(up)


def test_up_with_haproxy_in_a_deep_directory_says_the_socket_path_is_too_long(tmp_path, haproxy_binary):
    """haproxy refuses an admin socket path over 97 characters: from a deep directory, up
    restarted it for 30 s and then said only "haproxy not answering" (a deploy probe)."""
    deep = tmp_path / ("d" * (110 - len(str(tmp_path))))
    deep.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "kvwire", "up", "--haproxy", "--base-port", str(free_port_run(3))],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, cwd=deep,
        env={**os.environ, "KVWIRE_LB_TCP": free_address(), "KVWIRE_LB_HTTP": free_address(),
             "KVWIRE_LB_STATS": free_address()},
    )
    assert result.returncode == 1, result.stderr
    assert "haproxy takes at most 97" in result.stderr and "KVWIRE_LB_SOCKET" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_up_with_haproxy_but_no_binary_says_how_to_install_it(tmp_path):
    # A PATH with python but without haproxy.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "kvwire", "up", "--haproxy", "--base-port", str(free_port_run(3)), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "apt-get install haproxy" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started
