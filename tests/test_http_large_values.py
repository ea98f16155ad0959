"""Large values through a node's own bridge do not hold the node's event loop.

A value of half a million small items (about 500 kB as msgpack, 1.5 MB of
JSON) took the bridge about 0.7 s of CPU to read, check and write back; on a
node's own bridge (``--http-listen``) that ran on the node's event loop, which
then answered nothing, not even its peers' heartbeats. Real nodes, real HTTP.
"""

from __future__ import annotations

import json

import pytest

from kvwire.http_bridge.values import OFF_LOOP_BYTES, parse_put_body, prepare_put, to_json_text
from kvwire.protocol import DEFAULT_LIMITS
from kvwire.testing import LocalCluster, wait_for
from rest_helpers import PREFIX, answers, http, with_http

ITEMS = 500_000
# The node's own check of such a value still takes about 0.1 s on its loop, and the
# stall warning fires at 0.25 s: run alone, not beside other tests' load.
pytestmark = pytest.mark.serial


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = LocalCluster(3, data_dir=tmp_path_factory.mktemp("large") / "data", sync="off")
    nodes.http_urls = with_http(nodes, "n1")
    with nodes:
        wait_for(lambda: answers(nodes.http_urls["n1"]), timeout=15, what="n1's bridge")
        nodes.wait_ready(timeout=15)
        yield nodes


def test_a_large_value_put_and_read_through_a_node_s_bridge_leaves_its_loop_free(cluster):
    url = f"{cluster.http_urls['n1']}{PREFIX}/kv/many-items/"
    body = json.dumps({"value": [{}] * ITEMS}).encode()
    reply = http("PUT", url, raw=body, timeout=60)
    assert reply.status == 201, reply.text
    assert reply.text == '{"key":"many-items","value":' + "[{}" + ",{}" * (ITEMS - 1) + '],"version":{"counter":1,"node":"n1"}}'
    read = http("GET", url, timeout=60)
    assert read.status == 200 and read.text == reply.text
    for node in cluster:
        log = node.log()
        assert "event loop stalled" not in log, f"{node.node_id}: {log}"
        assert "peer n1 DOWN" not in log, f"{node.node_id}: {log}"


@pytest.mark.parametrize("value", [
    [{}] * 30_000,
    {"bytes": b"\x00\xff" * 40_000, "text": "é" * 40_000, "nested": [[1, 2.5, None, True]] * 5_000},
])
def test_a_large_body_prepared_off_the_loop_reads_as_a_small_one_does(value):
    from kvwire.client.json_values import json_text

    body = json_text({"value": value}).encode()
    assert len(body) > OFF_LOOP_BYTES
    prepared = prepare_put(body, DEFAULT_LIMITS)
    assert prepared.value_text == to_json_text(parse_put_body(body, DEFAULT_LIMITS))
    assert json.loads(prepared.value_text) == json.loads(body)["value"]
