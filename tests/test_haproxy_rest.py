"""REST failover through haproxy/kvwire.cfg's HTTP frontend: real haproxy, real nodes, kill -9.

Figures (failed requests per kill, HAProxy's own retries) are printed (`pytest -s`) and added to KVWIRE_FIGURES, as in
tests/test_haproxy.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from rest_helpers import PREFIX, http
from test_haproxy import CONFIG, NO_NODE_503, cluster_with_bridges, haproxy_binary, haproxy_for  # noqa: F401 - fixture

from kvwire.chaos.firewall import Firewall
from kvwire.chaos.nodes import node_groups
from kvwire.chaos.partitions import make_partition
from kvwire.testing.balancer import HAProxyProcess, kill_during, report_figures
from kvwire.testing.rest_load import RestLoad, get_on_each, keep_alive_connections


def retries(lb: HAProxyProcess) -> dict[str, int]:
    """HAProxy's count of retried and redispatched requests in kvwire_bridges."""
    [row] = [row for row in lb.stats() if row["pxname"] == "kvwire_bridges" and row["svname"] == "BACKEND"]
    return {"retried": int(row["wretr"] or 0), "redispatched": int(row["wredis"] or 0)}


def test_each_node_killed_under_rest_load_fails_no_request(tmp_path, haproxy_binary):
    """PUT+GET back to back through the REST frontend; kill -9 of n1, then n2, then n3
    (each restarted before the next). In HTTP mode every request is balanced
    on its own, so each victim is serving the load when it dies.

    A GET in flight on the killed node is retried on another. So is a PUT: it
    carries HAProxy's X-Kvwire-Request-Id, which the bridge sends as the PUT's
    request id, and the nodes apply a PUT sent again with its id once
    (docs/protocol.md 6.4). Every PUT acknowledged reads back as written."""
    cluster, bridges = cluster_with_bridges(tmp_path / "data", sync="normal")
    with cluster, haproxy_for(cluster, bridges, tmp_path) as lb:
        lb.wait_all("kvwire_bridges", "UP", timeout=15)
        for victim in cluster.node_ids:
            before = retries(lb)
            load = RestLoad(lb.http_address, prefix=f"rest-{victim}", max_duration=10.0)
            _, detection, report = kill_during(
                load, cluster, lambda: victim,
                after_kill=lambda node: lb.wait_status("kvwire_bridges", node, "DOWN", timeout=1.0))
            after = retries(lb)
            figures = {"victim": victim, "detection_ms": round(detection * 1000, 1), **report.as_dict(),
                       **{key: after[key] - before[key] for key in after}}
            report_figures("haproxy_rest_kill_one_node", figures)

            assert report.failures == [], figures
            assert report.longest_stall_s < 1.0, figures
            for key, value in list(report.acknowledged.items())[-50:]:  # the writes around the kill
                read = http("GET", f"http://{lb.http_address}{PREFIX}/kv/{key}/")
                assert read.status == 200 and read.json["value"] == value, (key, read.text)

            cluster.start(victim)
            cluster.wait_ready(victim)
            lb.wait_status("kvwire_bridges", victim, "UP", timeout=5.0)


def test_a_hung_node_under_rest_load_fails_no_request(tmp_path, haproxy_binary):
    """SIGSTOP of a node (its bridge is in the same process): HAProxy marks it DOWN, and a GET or PUT
    in flight on it is retried elsewhere once KVWIRE_LB_HTTP_TIMEOUT (6 s) passes; the PUT applied
    once, by its request id, even if the hung node took it and wakes up later."""
    cluster, bridges = cluster_with_bridges(tmp_path / "data", sync="normal")
    with cluster, haproxy_for(cluster, bridges, tmp_path) as lb:
        lb.wait_all("kvwire_bridges", "UP", timeout=15)
        load = RestLoad(lb.http_address, prefix="rest-hung", max_duration=20.0, timeout=15.0).start()
        try:
            load.wait_acknowledged(200)
            paused_at = time.monotonic()
            cluster.pause("n2")
            lb.wait_status("kvwire_bridges", "n2", "DOWN", timeout=2.0)
            load.run_until(paused_at + 8.0)  # past the 6 s a request in flight on n2 may wait
        finally:
            report = load.stop()
            cluster.resume("n2")
        report_figures("haproxy_rest_hang_one_node", report.as_dict())
        assert report.failures == [], report.failures
        assert report.longest_stall_s < 7.5, report.as_dict()
        assert len(report.acknowledged) > 400  # the load went on around the hung node


def test_a_node_cut_off_from_its_peers_under_rest_load_fails_no_request(tmp_path, haproxy_binary):
    """n3 cut off from n1 and n2 (its peer links only, by iptables; HAProxy still reaches it):
    until HAProxy's check sees n3's bridge answer 503, requests keep going to it, and
    n3 answers them 503 (no quorum). Each is retried on another node (``retry-on`` has
    503): a GET at once, a PUT by its request id, which a retry applies once."""
    groups = node_groups(["n1", "n2", "n3"])
    cluster, bridges = cluster_with_bridges(tmp_path / "data", sync="normal", groups=groups)
    firewall = Firewall()
    with cluster, haproxy_for(cluster, bridges, tmp_path) as lb:
        lb.wait_all("kvwire_bridges", "UP", timeout=15)
        before = retries(lb)
        load = RestLoad(lb.http_address, prefix="rest-cut", max_duration=20.0, timeout=10.0).start()
        try:
            firewall.install()
            load.wait_acknowledged(200)
            addresses = {node.node_id: (node.host, node.port) for node in cluster}
            firewall.drop(make_partition("isolate", cluster.node_ids, "n3").rules(groups, addresses))
            cut_at = time.monotonic()
            lb.wait_status("kvwire_bridges", "n3", "DOWN", timeout=5.0)
            down_after = time.monotonic() - cut_at
            load.run_until(time.monotonic() + 1.0)
        finally:
            report = load.stop()
            firewall.remove()
        after = retries(lb)
        figures = {**report.as_dict(), "down_after_s": round(down_after, 2),
                   **{key: after[key] - before[key] for key in after}}
        report_figures("haproxy_rest_cut_off_node", figures)
        assert report.failures == [], figures
        assert after["retried"] > before["retried"], figures  # n3 did answer some of them 503
        for key, value in list(report.acknowledged.items())[-50:]:
            read = http("GET", f"http://{lb.http_address}{PREFIX}/kv/{key}/")
            assert read.status == 200 and read.json["value"] == value, (key, read.text)


def gets_in_flight_on_hung_nodes(cluster, lb: HAProxyProcess, hung: tuple[str, ...], path: str) -> list:
    """Six keep-alive clients, each past its first request, send a GET of ``path`` right after
    ``hung`` are SIGSTOPped: roundrobin puts some on a hung bridge, where each waits out
    KVWIRE_LB_HTTP_TIMEOUT (6 s) and is retried. By then none of the bridges left has quorum,
    so kvwire_bridges has no server in rotation. The replies, as get_on_each gives them."""
    connections = keep_alive_connections(lb.http_address, 6, path=path, timeout=20.0)
    before = retries(lb)["retried"]
    for node_id in hung:
        cluster.pause(node_id)
    try:
        replies = get_on_each(connections, path)
    finally:
        for node_id in hung:
            cluster.resume(node_id)
    assert retries(lb)["retried"] > before, replies  # some GETs were in flight on a hung bridge
    return replies


def test_a_get_retried_when_no_bridge_has_quorum_is_served_by_the_one_left(tmp_path, haproxy_binary):
    """Two of three nodes hung with GETs in flight on them: each GET is retried on the third
    node's bridge (a backup of kvwire_bridges), which serves ?consistency=one without quorum.
    With no backup, the retry found no server, and HAProxy 2.6 closed the connection of a
    keep-alive client without a response."""
    cluster, bridges = cluster_with_bridges(tmp_path / "data", sync="normal")
    with cluster, haproxy_for(cluster, bridges, tmp_path) as lb:
        lb.wait_all("kvwire_bridges", "UP", timeout=15)
        base = f"http://{lb.http_address}{PREFIX}"
        assert http("PUT", f"{base}/kv/greeting/", {"value": "hello"}).status == 201
        replies = gets_in_flight_on_hung_nodes(cluster, lb, ("n2", "n3"), f"{PREFIX}/kv/greeting/?consistency=one")
        assert [reply if isinstance(reply, str) else (reply[0], reply[1].get("value")) for reply in replies] == [(200, "hello")] * 6


def test_with_every_node_down_haproxy_answers_json_errors(tmp_path, haproxy_binary):
    cluster, bridges = cluster_with_bridges(tmp_path / "data", sync="off")
    with cluster, haproxy_for(cluster, bridges, tmp_path) as lb:
        lb.wait_all("kvwire_bridges", "UP", timeout=15)
        for node_id in cluster.node_ids:
            cluster.kill(node_id)
        lb.wait_all("kvwire_bridges", "DOWN", timeout=5.0)
        lb.wait_all("kvwire_bridges_minority", "DOWN", timeout=5.0)
        base = f"http://{lb.http_address}{PREFIX}"
        for method, body in (("GET", None), ("PUT", {"value": 1}), ("DELETE", None)):
            reply = http(method, f"{base}/kv/anything/", body, timeout=5.0)
            assert reply.status == 503, (method, reply.status, reply.text)
            assert reply.headers["Content-Type"] == "application/json"
            assert reply.json == NO_NODE_503



def test_every_error_haproxy_can_generate_has_a_json_body():
    """The config's http-error lines: each a JSON object naming its own status."""
    lines = [line.strip() for line in Path(CONFIG).read_text().splitlines() if line.strip().startswith("http-error ")]
    statuses = set()
    for line in lines:
        prefix, _, rest = line.partition(" content-type application/json string ")
        status = int(prefix.split()[-1])
        body = json.loads(rest.strip("'"))
        assert body["status"] == status and body["balancer"] == "haproxy" and body["error"], line
        statuses.add(status)
    assert {400, 403, 408, 500, 502, 503, 504} <= statuses
