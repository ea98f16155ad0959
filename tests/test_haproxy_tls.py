"""haproxy/kvwire.cfg in its TLS mode (KVWIRE_LB_TLS_CA, KVWIRE_LB_TLS_CERT), with a real haproxy
in front of real TLS nodes and their HTTPS bridges.

The TCP frontend passes TLS through: a client's handshake is with the node
itself, whose certificate names 127.0.0.1, the balancer's address here. The
checks are HAProxy's own TLS connections, speaking the protocol. The HTTP
frontend terminates TLS with haproxy.pem and re-encrypts to the bridges.
"""

from __future__ import annotations

import os
import ssl
import subprocess

import pytest
from rest_helpers import PREFIX, http, with_http
from test_haproxy import CONFIG, haproxy_binary, kill_the_node_under_load  # noqa: F401 - haproxy_binary is a fixture

from kvwire import Client, KvwireConnectionError
from kvwire.testing import DevCerts, LocalCluster, wait_for
from kvwire.testing.balancer import HAProxyProcess, report_figures

BACKENDS = ("kvwire_nodes", "kvwire_nodes_minority", "kvwire_bridges", "kvwire_bridges_minority")


def tls_env(certs: DevCerts) -> dict[str, str]:
    return {"KVWIRE_LB_TLS_CA": str(certs.ca), "KVWIRE_LB_TLS_CERT": str(certs.haproxy)}


def tls_haproxy(cluster: LocalCluster, workdir, bridges=(), certs: DevCerts | None = None) -> HAProxyProcess:
    return HAProxyProcess.for_cluster(CONFIG, cluster, workdir=workdir, bridges=list(bridges),
                                      extra_env=tls_env(certs or cluster.tls))


def test_the_tls_mode_validates_and_needs_its_files(haproxy_binary, tmp_path):  # noqa: F811
    certs = DevCerts.create(tmp_path / "certs")
    env = {**os.environ, **tls_env(certs), "KVWIRE_LB_SOCKET": str(tmp_path / "admin.sock")}
    valid = subprocess.run([haproxy_binary, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30, env=env)
    assert valid.returncode == 0, valid.stderr
    env["KVWIRE_LB_TLS_CERT"] = str(tmp_path / "missing.pem")
    broken = subprocess.run([haproxy_binary, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30, env=env)
    assert broken.returncode != 0 and "missing.pem" in broken.stderr  # so the TLS lines are really in effect


@pytest.fixture(scope="module")
def tls_setup(tmp_path_factory, haproxy_binary):  # noqa: F811
    workdir = tmp_path_factory.mktemp("haproxy-tls")
    cluster = LocalCluster(3, data_dir=workdir / "data", tls=True, sync="normal")
    urls = with_http(cluster)  # TLS nodes serve their bridges over HTTPS
    bridges = [urls[node_id].removeprefix("http://") for node_id in cluster.node_ids]
    with cluster:
        with tls_haproxy(cluster, workdir, bridges) as lb:
            for backend in BACKENDS:
                lb.wait_all(backend, "UP", timeout=15)
            yield cluster, lb


def test_tls_passes_through_the_tcp_frontend(tls_setup):
    cluster, lb = tls_setup
    seen = set()
    for _ in range(6):  # roundrobin: new connections reach every node, each over its own TLS
        with Client([lb.tcp_address], timeout=3, **cluster.client_options) as kv:
            kv.put("through haproxy", "encrypted")
            assert kv.get("through haproxy") == "encrypted"
            seen.add(kv.health()["node_id"])
    assert seen == {"n1", "n2", "n3"}
    with pytest.raises(KvwireConnectionError, match="this node serves TLS on this port, and the connection is plaintext"):
        with Client([lb.tcp_address], timeout=2) as plain:
            plain.get("through haproxy")


def test_checks_speak_the_protocol_over_tls(tls_setup):
    _, lb = tls_setup
    # L7OK: the check's TLS handshake (with HAProxy's client certificate) and
    # then its HEALTH request and quorum pattern all passed; a plain check is
    # refused by every node. The bytes sent and expected are those that
    # test_haproxy.py checks against the codec.
    rows = [row for row in lb.stats() if row["pxname"] in BACKENDS and row["svname"] not in ("FRONTEND", "BACKEND")]
    checked = [row for row in rows if row["bck"] == "0"]
    assert len(checked) == 12
    for row in checked:
        # "* L7OK": the last check passed and the next one is under way.
        assert row["check_status"].removeprefix("* ") == "L7OK" and row["chkfail"] == "0", row
    # kvwire_bridges' backups: three that follow kvwire_bridges_minority's checks.
    assert {row["svname"]: row["status"] for row in rows if row["bck"] == "1"} == {
        "n1-minority": "UP", "n2-minority": "UP", "n3-minority": "UP"}


def test_the_http_frontend_terminates_tls(tls_setup):
    _, lb = tls_setup
    context = ssl.create_default_context(cafile=str(tls_setup[0].tls.ca))
    base = f"https://{lb.http_address}{PREFIX}"
    created = http("PUT", f"{base}/kv/over-https/", {"value": [1, 2]}, ssl_context=context)
    assert created.status == 201, created.text
    assert http("GET", f"{base}/kv/over-https/", ssl_context=context).json["value"] == [1, 2]
    assert http("GET", f"{base}/health/", ssl_context=context).json["cluster"]["has_quorum"] is True
    with pytest.raises(OSError):  # no plain HTTP on the TLS frontend
        http("GET", f"http://{lb.http_address}{PREFIX}/health/", timeout=3)


def test_haproxy_with_a_certificate_of_another_ca_is_refused_by_the_nodes(tmp_path, haproxy_binary):  # noqa: F811
    other = DevCerts.create(tmp_path / "other")
    with LocalCluster(3, data_dir=tmp_path / "data", tls=True, sync="off") as cluster:
        # HAProxy trusts the nodes (their CA) but presents a certificate they do not trust.
        env = {"KVWIRE_LB_TLS_CA": str(cluster.tls.ca), "KVWIRE_LB_TLS_CERT": str(other.haproxy)}
        with HAProxyProcess.for_cluster(CONFIG, cluster, workdir=tmp_path, extra_env=env) as lb:
            lb.wait_all("kvwire_nodes", "DOWN", timeout=5)
            wait_for(lambda: "certificate verify failed" in cluster["n1"].log(), timeout=5,
                     what="n1 logging the refused check")


def test_a_node_killed_under_load_over_tls_is_out_within_a_second(tmp_path, haproxy_binary):  # noqa: F811
    # --sync normal, as the other balancer kill tests: the stall bound is about
    # detection, not a shared disk's fsync, and a kill -9 loses nothing acknowledged.
    with LocalCluster(3, data_dir=tmp_path / "data", tls=True, sync="normal") as cluster:
        with tls_haproxy(cluster, tmp_path) as lb:
            lb.wait_all("kvwire_nodes", "UP")
            _, detection, report = kill_the_node_under_load(cluster, lb, **cluster.client_options)
            figures = {"detection_ms": round(detection * 1000, 1), **report.as_dict()}
            report_figures("haproxy_tls_kill_one_node", figures)
            assert detection < 1.0
            assert len(report.failures) <= 2, figures
            assert report.longest_stall_s < 1.0, figures
            with Client([lb.tcp_address], timeout=5, **cluster.client_options) as kv:
                for key, value in report.acknowledged.items():
                    assert kv.get(key) == value, key
