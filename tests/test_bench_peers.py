"""The suite's runners for the reference servers and for HTTP load, each once for real and
briefly: redis-server with redis-benchmark, a 3-member etcd through its JSON gateway, and the
kvwire REST bridge under wrk (Debian packages, installed by the test command)."""

import pytest

from kvwire.bench import peers, wrk
from kvwire.testing import NodeProcess
from kvwire.testing.bridge import BridgeProcess


def assert_sane(result, tool):
    assert result["tool"] == tool
    assert result["requests"] > 0 and result["ops_per_s"] > 0
    assert result["errors"] == 0, result
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert result["server_cpu_us_per_op"] > 0


def test_every_peer_program_is_installed():
    assert peers.available_peers() == {"redis": None, "etcd": None, "wrk": None}


@pytest.mark.parametrize("persistence", ["none", "everysec"])
def test_redis_benchmark_against_a_real_redis_server(tmp_path, persistence):
    with peers.RedisServer(tmp_path, persistence) as server:
        for op in ("set", "get"):
            result = peers.run_redis_benchmark(server, op, connections=4, pipeline=4, requests=50_000, keys=200)
            assert_sane(result, "redis-benchmark")
            assert f"-t {op}" in result["command"] and "-P 4" in result["command"]


def test_a_three_member_etcd_through_its_gateway(tmp_path):
    with peers.EtcdCluster(tmp_path) as etcd:
        assert len(etcd.pids) == 3
        for op in ("put", "range"):
            assert_sane(peers.run_etcd(etcd, op, connections=4, duration=1, keys=200), "wrk")


def test_wrk_against_the_rest_bridge(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1") as node:
        with BridgeProcess([node.address], log_path=tmp_path / "bridge.log") as bridge:
            bridge.wait_ready()
            for op in ("put", "get"):
                result = wrk.run_kvwire_rest(bridge.url, op, connections=4, duration=1, keys=200,
                                             server_pids=(node.pid, bridge.pid))
                assert_sane(result, "wrk")


def test_wrk_against_a_closed_port_says_so():
    with pytest.raises(RuntimeError, match="wrk"):
        wrk.run_kvwire_rest("http://127.0.0.1:1", "put", connections=1, duration=1, keys=10)
