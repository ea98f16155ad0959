"""/metrics on real nodes and bridges: the Prometheus exposition counts what really happened."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvwire import Client, KeyNotFoundError, NoQuorumError, RetryPolicy
from kvwire.server.tally import LATENCY_BOUNDS, Buckets, RequestMetrics, _quantile
from kvwire.testing import LocalCluster, NodeProcess, free_port, wait_for
from kvwire.testing.bridge import BridgeProcess
from kvwire.testing.metrics import scrape, value


@pytest.fixture()
def node_with_bridge(tmp_path):
    http = f"127.0.0.1:{free_port()}"
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--http-listen", http]) as node:
        node.http = http
        yield node


def test_requests_are_counted_by_op_consistency_and_code(node_with_bridge):
    node = node_with_bridge
    with Client(node.address) as client:
        for i in range(7):
            client.put(f"k{i}", i)
        for i in range(5):
            assert client.get(f"k{i}") == i
        assert client.get("k0", consistency="one") == 0
        with pytest.raises(KeyNotFoundError):
            client.get("missing")
        client.delete("k6")
    samples = scrape(node.http)
    assert value(samples, "kvwire_requests_total", op="put", consistency="", code="ok") == 7
    assert value(samples, "kvwire_requests_total", op="get", consistency="quorum", code="ok") == 5
    assert value(samples, "kvwire_requests_total", op="get", consistency="one", code="ok") == 1
    assert value(samples, "kvwire_requests_total", op="get", consistency="quorum", code="not_found") == 1
    assert value(samples, "kvwire_requests_total", op="delete", consistency="", code="ok") == 1
    # Every answered PUT is in the latency histogram, in some bucket no later than +Inf.
    assert value(samples, "kvwire_request_duration_seconds_count", op="put") == 7
    assert value(samples, "kvwire_request_duration_seconds_bucket", op="put", le="+Inf") == 7
    assert value(samples, "kvwire_keys") == 7
    assert value(samples, "kvwire_tombstones") == 1
    assert value(samples, "kvwire_group_commit_rows_sum") >= 8  # 7 values and a tombstone, however batched
    assert value(samples, "kvwire_group_commit_duration_seconds_count") >= 1
    assert value(samples, "kvwire_database_bytes") > 0
    assert value(samples, "kvwire_has_quorum") == 1
    assert value(samples, "kvwire_node_info", node_id="n1", cluster_id="kvwire", sync="full") == 1


def test_the_bridge_counts_its_own_requests_by_route(node_with_bridge):
    node = node_with_bridge
    base = f"http://{node.http}/kv-store/v1"
    request = urllib.request.Request(f"{base}/kv/a%2Fb/", data=b'{"value": 1}', method="PUT",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
    for path in ("/kv/a%2Fb/", "/kv/nope/", "/no-such-path"):
        try:
            urllib.request.urlopen(f"{base}{path}", timeout=5).close()
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    samples = scrape(node.http)
    route = "/kv-store/v1/kv/{key}/"
    assert value(samples, "kvwire_http_requests_total", method="PUT", route=route, status="201") == 1
    assert value(samples, "kvwire_http_requests_total", method="GET", route=route, status="200") == 1
    assert value(samples, "kvwire_http_requests_total", method="GET", route=route, status="404") == 1
    # Unmatched paths share one label value, so probes can't grow the series without bound.
    assert value(samples, "kvwire_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(samples, "kvwire_http_request_duration_seconds_count", method="PUT", route=route) == 1


def test_answers_given_at_expect_are_counted_too(node_with_bridge):
    """A PUT refused at its Expect header (413 before 100 Continue, 417 for an unknown
    one) is answered before aiohttp's middlewares, and counted all the same."""
    host, port = node_with_bridge.http.rsplit(":", 1)
    route = "/kv-store/v1/kv/{key}/"
    before = scrape(node_with_bridge.http)
    for headers, status in (("Expect: 100-continue\r\nContent-Length: 1000000000", 413),
                            ("Expect: tea\r\nContent-Length: 12", 417)):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"PUT /kv-store/v1/kv/expect/ HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n\r\n".encode())
            assert sock.recv(64).startswith(f"HTTP/1.1 {status} ".encode())
    after = scrape(node_with_bridge.http)
    for status in (413, 417):
        labels = tuple(sorted({"method": "PUT", "route": route, "status": str(status)}.items()))
        counted = [samples.get(("kvwire_http_requests_total", labels), 0.0) for samples in (before, after)]
        assert counted[1] - counted[0] == 1, (status, counted)


@pytest.mark.parametrize("fast_path", [True, False], ids=["node-bridge", "standalone-no-fast-path"])
def test_requests_refused_before_the_middlewares_are_counted(node_with_bridge, tmp_path, fast_path):
    """Requests aiohttp's parser refuses, and an Expect it refuses on a route without a
    body, are answered before the middlewares: counted all the same, so that a scanner
    or a broken client shows in the metrics."""
    with contextlib.ExitStack() as stack:
        if fast_path:
            http = node_with_bridge.http
        else:
            bridge = stack.enter_context(BridgeProcess([node_with_bridge.address], log_path=tmp_path / "bridge.log",
                                                       args=["--no-fast-path"]))
            http = bridge.url.removeprefix("http://")
        host, port = http.rsplit(":", 1)
        before = scrape(http)
        refused = [
            ("PUT /kv-store/v1/kv/k/ HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            ("PUT /kv-store/v1/kv/k/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n", 400),
            ("FOOBAR /kv-store/v1/health/ HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
            ("GET /kv-store/v1/health/ HTTP/1.1\r\nHost: localhost\r\nExpect: bogus\r\n\r\n", 417),
        ]
        for raw, status in refused:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(raw.encode())
                assert re.match(rb"HTTP/1\.[01] %d " % status, sock.recv(64)), raw
        after = scrape(http)

    def counted(samples, status):
        return sum(v for (name, labels), v in samples.items()
                   if name == "kvwire_http_requests_total" and ("status", str(status)) in labels)

    assert counted(after, 400) - counted(before, 400) == 3
    assert counted(after, 417) - counted(before, 417) == 1
    health = tuple(sorted({"method": "GET", "route": "/kv-store/v1/health/", "status": "417"}.items()))
    assert after.get(("kvwire_http_requests_total", health)) == 1
    malformed = tuple(sorted({"method": "UNKNOWN", "route": "unmatched", "status": "400"}.items()))
    assert after.get(("kvwire_http_requests_total", malformed)) == 3


def test_names_follow_prometheus_conventions(node_with_bridge):
    with urllib.request.urlopen(f"http://{node_with_bridge.http}/metrics", timeout=5) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    assert len(families) > 20
    for family in families:
        assert family.name.startswith("kvwire_"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        assert not family.name.endswith(("_ms", "_milliseconds", "_bytes_total")), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        # No *_created series: the node's own families have none, nor do the bridge's.
        assert not any(s.name.endswith("_created") for s in family.samples), family.name


def test_peers_hints_and_transitions_on_a_three_node_cluster(tmp_path):
    cluster = LocalCluster(3, data_dir=tmp_path, heartbeat_interval=0.05, failure_timeout=0.3)
    metrics = f"127.0.0.1:{free_port()}"
    cluster["n1"].extra_args += ["--metrics-listen", metrics]
    with cluster:
        samples = scrape(metrics)
        assert value(samples, "kvwire_peer_up", peer="n2") == 1
        assert value(samples, "kvwire_peer_up", peer="n3") == 1
        assert value(samples, "kvwire_cluster_nodes") == 3
        cluster.kill("n3")
        wait_for(lambda: value(scrape(metrics), "kvwire_peer_up", peer="n3") == 0, timeout=5, what="n3 DOWN in n1's metrics")
        with Client(cluster["n1"].address) as client:
            for i in range(10):
                client.put(f"h{i}", i)
        samples = scrape(metrics)
        assert value(samples, "kvwire_peer_transitions_total", peer="n3", state="down") == 1
        assert value(samples, "kvwire_peer_pending_hints", peer="n3") == 10
        assert value(samples, "kvwire_peer_hints_stored_total", peer="n3") == 10
        assert value(samples, "kvwire_peer_last_heard_seconds", peer="n3") >= 0.3
        assert value(samples, "kvwire_quorum_rounds_total") >= 10  # one LOOKUP round per PUT
        cluster.start("n3")
        cluster.wait_ready("n3")
        wait_for(lambda: value(scrape(metrics), "kvwire_peer_pending_hints", peer="n3") == 0, timeout=10,
                 what="n3's hints delivered")
        samples = scrape(metrics)
        assert value(samples, "kvwire_peer_up", peer="n3") == 1
        assert value(samples, "kvwire_peer_hints_delivered_total", peer="n3") == 10
        assert value(samples, "kvwire_peer_transitions_total", peer="n3", state="up") == 2  # start, then return
        assert value(samples, "kvwire_no_quorum_total") == 0
        # A DELETE through n2 runs on n1, which coordinates DELETEs: n1 counts it as forwarded,
        # not as a second client DELETE. After the hints' count: its tombstone, still on its way
        # to n3 when n3 was killed, was an eleventh hint (a CI run's flake).
        with Client(cluster["n2"].address) as client:
            client.put("forwarded", 1)
            client.delete("forwarded")
        samples = scrape(metrics)
        assert value(samples, "kvwire_requests_total", op="delete_forwarded", consistency="", code="ok") == 1
        assert ("kvwire_requests_total", (("code", "ok"), ("consistency", ""), ("op", "delete"))) not in samples
        cluster.kill("n2")
        cluster.kill("n3")
        wait_for(lambda: value(scrape(metrics), "kvwire_has_quorum") == 0, timeout=5, what="n1 without quorum")
        # One attempt each: the client would retry NO_QUORUM, and each try counts.
        with Client(cluster["n1"].address, timeout=3, retry=RetryPolicy(attempts=1)) as client:
            with pytest.raises(NoQuorumError):
                client.get("h1")
            with pytest.raises(NoQuorumError):
                client.put("h1", "lost")
        samples = scrape(metrics)
        assert value(samples, "kvwire_no_quorum_total") == 2
        assert value(samples, "kvwire_requests_total", op="get", consistency="quorum", code="no_quorum") == 1
        assert value(samples, "kvwire_requests_total", op="put", consistency="", code="no_quorum") == 1


def test_a_forwarded_deletes_no_quorum_is_counted_only_where_its_client_was_told(tmp_path):
    """n1 coordinates DELETEs. It answered those n2 forwarded NO_QUORUM (its writes time
    out at once here), and kvwire_no_quorum_total counted each on n1 as well as on n2, or
    on n1 alone where n2 then ran the DELETE itself: the alert on it fired on a node that
    had refused no client (a probe's finding)."""
    cluster = LocalCluster(3, data_dir=tmp_path, heartbeat_interval=0.05, failure_timeout=0.3)
    coordinator, forwarder = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cluster["n1"].extra_args += ["--metrics-listen", coordinator, "--write-timeout", "0.0002"]
    cluster["n2"].extra_args += ["--metrics-listen", forwarder]
    refused = 0
    with cluster:
        with Client(cluster["n2"].address, timeout=5, retry=RetryPolicy(attempts=1)) as client:
            for i in range(5):
                client.put(f"d{i}", i)
                try:
                    client.delete(f"d{i}")
                except NoQuorumError:
                    refused += 1
        at_coordinator, at_forwarder = scrape(coordinator), scrape(forwarder)
    assert value(at_coordinator, "kvwire_requests_total", op="delete_forwarded", consistency="",
                 code="no_quorum") == 5
    assert value(at_coordinator, "kvwire_no_quorum_total") == 0
    assert value(at_forwarder, "kvwire_no_quorum_total") == refused


def test_health_reports_the_recent_request_rate_and_p99(node_with_bridge):
    with Client(node_with_bridge.address) as client:
        for i in range(20):
            client.put(f"r{i}", i)

        def recent():
            return client.health()["requests"]

        # Snapshots are taken every second; the window covers the PUTs once two have passed them.
        wait_for(lambda: recent()["per_s"] > 0 and recent()["p99_ms"] is not None, timeout=5, what="a recent rate")
        report = recent()
    assert 0 < report["window_s"] <= 10.5
    assert report["p99_ms"] > 0


def test_a_busy_metrics_port_fails_the_start_in_one_line(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--http-listen", f"127.0.0.1:{free_port()}"]) as other:
        busy = other.extra_args[-1]
        result = subprocess.run(
            [sys.executable, "-m", "kvwire", "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir",
             str(tmp_path / "n2"), "--node-id", "n2", "--metrics-listen", busy],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot start the metrics listener of node n2 on {busy}" in result.stderr
    assert "Traceback" not in result.stderr


# --- the counts themselves -------------------------------------------------------------------


def test_buckets_put_a_value_on_a_bound_into_that_bound():
    buckets = Buckets((0.1, 1.0))
    for observed in (0.05, 0.1, 0.5, 1.0, 3.0):
        buckets.observe(observed)
    assert buckets.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert buckets.count == 5 and buckets.total == pytest.approx(4.65)


def test_quantile_interpolates_within_its_bucket_like_histogram_quantile():
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    index = LATENCY_BOUNDS.index(0.01)
    counts[index] = 100  # 100 observations in (0.005, 0.01]
    assert _quantile(0.99, counts) == pytest.approx(0.005 + 0.005 * 0.99)
    assert _quantile(0.99, [0] * len(counts)) is None


def test_recent_compares_the_oldest_and_newest_snapshots():
    metrics = RequestMetrics()
    metrics.take_snapshot(100.0)
    for _ in range(50):
        metrics.get_quorum.answer_ok(0.0002)
    metrics.take_snapshot(102.0)
    report = metrics.recent()
    assert report["window_s"] == 2.0
    assert report["per_s"] == 25.0
    assert 0.1 < report["p99_ms"] <= 0.25
