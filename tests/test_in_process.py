"""A node's own HTTP bridge (``kvwire serve --http-listen``) hands its requests to
the node in the process (kvwire.server.in_process), not through loopback TCP.

The first test runs real node processes. The others run the node in this
process (``kvwire.server.app.serve``) beside scripted nodes on the same event
loop, so that a peer can be silent, or absent, exactly as each test needs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import asynccontextmanager

import pytest

from kvwire.client import AsyncClient, Client, RetryPolicy
from kvwire.client.arguments import put_request_id
from kvwire.protocol import ErrorCode, ErrorReply, Lookup, LookupReply, Ping, Pong, Put, PutReply, Replicate, Version
from kvwire.protocol.messages import NO_VERSION
from kvwire.protocol.errors import InternalServerError, KvwireTimeoutError, NoQuorumError
from kvwire.server.app import serve
from kvwire.server.config import ServerConfig, parse_cluster
from kvwire.server.in_process import InProcessClient, NodeSlot
from kvwire.testing import LocalCluster, ScriptedNode, free_port, wait_for, wait_for_async
from rest_helpers import PREFIX, http, rest_answers, with_http
from test_metrics import scrape, value


@pytest.fixture(autouse=True)
def garbage_collector_as_it_was():
    """``serve`` tunes the collector for a node process; this process runs other tests after."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_the_nodes_own_bridge_opens_no_connection_to_it_and_the_node_counts_its_requests(tmp_path):
    cluster = LocalCluster(3, data_dir=tmp_path / "data", sync="off")
    url = with_http(cluster, "n1")["n1"]
    address = url.removeprefix("http://")
    with cluster:
        cluster.wait_ready()
        wait_for(lambda: rest_answers(url), timeout=15, what="n1's bridge")
        # n1's only connections are its two peers' links into it, once both have dialled.
        connections = 2
        wait_for(lambda: value(scrape(address), "kvwire_open_connections") == connections, timeout=10,
                 what="both peers' links into n1")
        base = f"{url}{PREFIX}"
        for i in range(5):
            assert http("PUT", f"{base}/kv/k{i}/", {"value": i}).status == 201
        for i in range(3):
            reply = http("GET", f"{base}/kv/k{i}/")
            assert reply.status == 200 and reply.json["value"] == i
        assert http("GET", f"{base}/kv/k0/?consistency=one").json["value"] == 0
        assert http("GET", f"{base}/kv/missing/").status == 404
        assert http("DELETE", f"{base}/kv/k4/").status == 200
        samples = scrape(address)
        # Through the client library, the bridge would hold a connection to its own node.
        assert value(samples, "kvwire_open_connections") == connections
        assert value(samples, "kvwire_requests_total", op="put", consistency="", code="ok") == 5
        assert value(samples, "kvwire_requests_total", op="get", consistency="quorum", code="ok") == 3
        assert value(samples, "kvwire_requests_total", op="get", consistency="one", code="ok") == 1
        assert value(samples, "kvwire_requests_total", op="get", consistency="quorum", code="not_found") == 1
        assert value(samples, "kvwire_requests_total", op="delete", consistency="", code="ok") == 1
        # The writes went through n1 to a majority: n2 holds them too.
        with Client(cluster["n2"].address) as n2:
            assert n2.get("k3", consistency="one") == 3
    for node in cluster:
        assert "Traceback" not in node.log()


# --- the node in this process ----------------------------------------------------------------

SECRET = b"in-process-test-secret-0123456789abcdef"  # the cluster secret n1 and the scripted n2 share


@asynccontextmanager
async def n1_here(tmp_path, caplog, *, n2: str, fallback: str, ready: str, timeout: float = 5, **settings):
    """Node n1 served on this event loop, its peer n2 at ``n2``, and an InProcessClient of it
    whose fallback asks ``fallback``, once n1's log says ``ready``: (the client, n1's slot)."""
    caplog.set_level(logging.INFO)
    port = free_port("127.0.0.1")
    config = ServerConfig(node_id="n1", port=port, data_dir=tmp_path / "n1", cluster_secret=SECRET,
                          members=parse_cluster(f"n1=127.0.0.1:{port},n2={n2}"), shutdown_timeout=0.5, **settings)
    slot, stop = NodeSlot(), asyncio.Event()
    task = asyncio.create_task(serve(config, stop=stop, slot=slot))
    client = InProcessClient(slot, None, fallback=AsyncClient([fallback], timeout=timeout,
                                                              retry=RetryPolicy(attempts=1)))
    try:
        await wait_for_async(lambda: ready in caplog.text and slot.node is not None, timeout=10,
                             what=f"n1's log saying {ready!r}")
        yield client, slot
    finally:
        await client.close()
        stop.set()
        await asyncio.wait_for(task, timeout=20)


def scripted_n2(answer) -> ScriptedNode:
    return ScriptedNode(answer, answers_hello=False, node_id="n2", secret=SECRET)


def only_pings(request):
    return Pong(request.id) if isinstance(request, Ping) else ScriptedNode.SILENT


def put_answered_with(version: Version, created: bool):
    """A scripted node's answer: every PUT applied at ``version``."""
    def answer(request):
        return PutReply(request.id, version, created) if isinstance(request, Put) else None
    return answer


def puts_received(node: ScriptedNode) -> list[Put]:
    return [request for request in node.received if isinstance(request, Put)]


async def test_a_call_past_its_timeout_fails_at_once_and_is_not_sent_to_the_peers(tmp_path, caplog):
    """n2 stays UP (it answers PING) but never answers the write: the node keeps it
    pending for its write timeout (30 s), and the call ends at its own (0.5 s)."""
    async with scripted_n2(only_pings) as n2, ScriptedNode() as elsewhere:
        async with n1_here(tmp_path, caplog, n2=n2.address, fallback=elsewhere.address, ready="quorum available",
                           timeout=0.5, write_timeout=30.0) as (client, slot):
            started = time.monotonic()
            with pytest.raises(KvwireTimeoutError, match="PUT got no reply within 0.5 s"):
                await client.put_with_result("k", 1)
            assert time.monotonic() - started < 5
            assert elsewhere.connections == 0  # a timed-out call ends; it is not tried again elsewhere
            tally = slot.node.metrics.tally("put")
            assert tally.errors["timeout"] == 1 and tally.ok == 0


def pings_only_and_refuses_the_rest(request):
    """UP (it answers PING), and refuses every write n1 sends it, unread."""
    if isinstance(request, Ping):
        return Pong(request.id)
    return ErrorReply(request.id, ErrorCode.UNAVAILABLE, "refusing for this test", False)


async def test_what_the_node_cannot_answer_goes_to_the_peers_with_the_same_request_id(tmp_path, caplog):
    """n1's only peer is UP but refuses what n1 sends it, so n1 answers NO_QUORUM; the
    call goes on to the fallback, which answers, and carries the PUT's id, marked as a retry."""
    answered = Version(7, "n9")
    async with scripted_n2(pings_only_and_refuses_the_rest) as n2, \
            ScriptedNode(put_answered_with(answered, True), answers_hello=False) as elsewhere:
        async with n1_here(tmp_path, caplog, n2=n2.address, fallback=elsewhere.address,
                           ready="quorum available") as (client, slot):
            result = await client.put_with_result("k", 1, request_id="caller-id-1")
            assert (result.version, result.created) == (answered, True)
            # The id the node got, as AsyncClient makes it: the fallback finishes the same write.
            assert [(put.key, put.request, put.retry) for put in puts_received(elsewhere)] == [
                ("k", put_request_id("caller-id-1", b"\x01"), True)]
            assert slot.node.metrics.tally("put").errors["no_quorum"] == 1


async def test_a_node_that_reaches_no_peer_is_not_second_guessed_by_its_bridge(tmp_path, caplog):
    """n1's only peer is DOWN: its bridge, in its process, would not reach it either,
    and dialled it for a second before answering n1's NO_QUORUM (three, with three
    nodes, on every request to a node cut off from its peers)."""
    async with ScriptedNode(put_answered_with(Version(7, "n9"), True), answers_hello=False) as elsewhere:
        async with n1_here(tmp_path, caplog, n2=f"127.0.0.1:{free_port()}", fallback=elsewhere.address,
                           ready="listening on") as (client, _):
            with pytest.raises(NoQuorumError):
                await client.put_with_result("k", 1, request_id="caller-id-2")
            assert elsewhere.connections == 0


async def test_with_no_peer_answering_the_nodes_own_error_is_raised(tmp_path, caplog):
    async with n1_here(tmp_path, caplog, n2=f"127.0.0.1:{free_port()}", fallback=f"127.0.0.1:{free_port()}",
                       ready="listening on") as (client, _):
        with pytest.raises(NoQuorumError, match="consistency 'one'"):
            await client.get_with_version("k")


async def test_a_write_no_peer_could_be_sent_keeps_the_nodes_nothing_was_written(tmp_path, caplog):
    """n1 alone: its NO_QUORUM says nothing was written, and the peers it then
    tries refuse the connection, so nothing was sent to them either."""
    async with n1_here(tmp_path, caplog, n2=f"127.0.0.1:{free_port()}", fallback=f"127.0.0.1:{free_port()}",
                       ready="listening on") as (client, _):
        with pytest.raises(NoQuorumError) as raised:
            await client.put_with_result("k", 1, request_id="caller-id-5")
        assert raised.value.maybe_applied is False
        assert "may have been applied" not in str(raised.value)
        with pytest.raises(NoQuorumError) as raised:
            await client.delete("k")
        assert raised.value.maybe_applied is False


def looks_up_only(request):
    """n2 answers PING and a LOOKUP, never a REPLICATE: a write through n1 is left undecided."""
    if isinstance(request, Lookup):
        return LookupReply(request.id, NO_VERSION, False)
    return only_pings(request)


async def test_a_put_the_node_may_have_applied_goes_on_only_with_an_id_and_its_error_still_says_so(tmp_path, caplog):
    """n1's attempt may have been applied (NO_QUORUM, maybe_applied). Without a request id
    the PUT is not sent again: a second attempt would be a second write. With the caller's
    id it goes on, marked as a retry; the peer's "nothing was written" would then be a
    promise the call cannot keep, so the error says the first attempt may have been."""
    def nothing_written(request):
        if isinstance(request, Put):
            return ErrorReply(request.id, ErrorCode.NO_QUORUM, "no majority UP; nothing was written", False)
        return None

    async with (scripted_n2(looks_up_only) as n2,
                ScriptedNode(nothing_written, answers_hello=False) as elsewhere):
        async with n1_here(tmp_path, caplog, n2=n2.address, fallback=elsewhere.address, ready="quorum available",
                           write_timeout=0.3) as (client, _):
            with pytest.raises(NoQuorumError) as raised:
                await client.put_with_result("k", 1)
            assert raised.value.maybe_applied is True and elsewhere.connections == 0
            # n1 reached its peer before it gave up: its attempt may have been applied.
            assert any(isinstance(request, (Lookup, Replicate)) for request in n2.received)
            with pytest.raises(NoQuorumError, match="its first attempt, on this node, may have been applied") as raised:
                await client.put_with_result("k2", 2, request_id="caller-id-3")
            assert raised.value.maybe_applied is True
            assert [(put.request, put.retry) for put in puts_received(elsewhere)] == [
                (put_request_id("caller-id-3", b"\x02"), True)]


async def test_the_peers_get_what_is_left_of_the_calls_timeout_not_a_new_one(tmp_path, caplog):
    """n1 gives up on the write at its write timeout (1 s) and the peer asked next never
    answers: the call ends at its own 2 s, with n1's error, not at 1 + 2 s."""
    async with scripted_n2(looks_up_only) as n2, ScriptedNode(only_pings, answers_hello=False) as elsewhere:
        async with n1_here(tmp_path, caplog, n2=n2.address, fallback=elsewhere.address, ready="quorum available",
                           timeout=2.0, write_timeout=1.0) as (client, _):
            started = time.monotonic()
            with pytest.raises(NoQuorumError) as raised:
                await client.put_with_result("k", 1, request_id="caller-id-4")
            assert time.monotonic() - started < 2.8
            assert raised.value.maybe_applied is True and puts_received(elsewhere)


async def test_before_the_node_serves_the_peers_answer():
    """The bridge listens before the node has loaded its storage: until the slot
    holds the node, every call goes to the fallback."""
    answered = Version(3, "n2")
    async with ScriptedNode(put_answered_with(answered, False), answers_hello=False) as n2:
        client = InProcessClient(NodeSlot(), None, fallback=AsyncClient([n2.address], timeout=5))
        try:
            result = await client.put_with_result("k", {"a": [1, 2]})
            assert result.version == answered
            sent = puts_received(n2)
            assert len(sent) == 1 and sent[0].value == {"a": [1, 2]}
            # No node was asked: a first attempt, in one round trip (docs/protocol.md 6.10).
            assert sent[0].request and sent[0].retry is None
        finally:
            await client.close()


async def test_an_internal_error_is_answered_as_a_connection_answers_it(tmp_path, caplog, monkeypatch):
    """A bug in the node (here, Node.handle made to raise) is logged with its traceback,
    counted as ``internal``, and raised as INTERNAL, not let through as it came."""
    async with n1_here(tmp_path, caplog, n2=f"127.0.0.1:{free_port()}", fallback=f"127.0.0.1:{free_port()}",
                       ready="listening on") as (client, slot):
        await client.health()  # the session's HELLO, said before handle breaks

        def broken(request, session):
            raise RuntimeError("a bug")

        monkeypatch.setattr(slot.node, "handle", broken)
        with pytest.raises(InternalServerError, match="see the node's log"):
            await client.get_with_version("k", consistency="one")
        assert "internal error handling the HTTP bridge's GET" in caplog.text and "a bug" in caplog.text
        assert slot.node.metrics.get_one.errors["internal"] == 1


def test_a_bridge_whose_node_reaches_no_peer_answers_no_quorum_at_once(tmp_path):
    """n3 cut off from its peers by iptables (its bridge, in its process, with it). Its
    bridge tried each peer after the node's NO_QUORUM, a second's dial each, and
    answered every REST request 503 after about 3 s; it now answers at once."""
    from kvwire.chaos.firewall import Firewall
    from kvwire.chaos.nodes import node_groups
    from kvwire.chaos.partitions import make_partition

    groups = node_groups(["n1", "n2", "n3"])
    cluster = LocalCluster(3, data_dir=tmp_path, sync="off", groups=groups)
    urls = with_http(cluster)
    firewall = Firewall()
    with cluster:
        base = f"{urls['n3']}{PREFIX}"
        assert http("PUT", f"{base}/kv/k/", {"value": 1}).status == 201
        try:
            firewall.install()
            addresses = {node.node_id: (node.host, node.port) for node in cluster}
            firewall.drop(make_partition("isolate", cluster.node_ids, "n3").rules(groups, addresses))
            wait_for(lambda: http("GET", f"{base}/health/").status == 503, timeout=10, what="n3 without quorum")
            for method, body in (("PUT", {"value": 2}), ("GET", None)):
                started = time.monotonic()
                reply = http(method, f"{base}/kv/k/", body, timeout=10)
                took = time.monotonic() - started
                assert reply.status == 503 and "quorum" in reply.text, (method, reply.status, reply.text)
                assert took < 0.5, (method, took)
            assert http("GET", f"{base}/kv/k/?consistency=one").json["value"] == 1  # its own copy still reads
        finally:
            firewall.remove()


def test_a_bridge_whose_node_is_refused_by_its_peers_sends_its_requests_to_them(tmp_path):
    """n1 holds another cluster secret: its peers refuse its handshake, so it sees no peer
    UP, but a client's connection to them gets through. Its bridge answered every REST
    request 503 at once, taking n1's NO_QUORUM for a node cut off (a reviewer's finding);
    before that change, and again now, it sends them to the peers, which answer."""
    from kvwire.testing.cluster import new_secret_file

    cluster = LocalCluster(3, data_dir=tmp_path, sync="off")
    urls = with_http(cluster)
    n1 = cluster["n1"]
    n1.extra_args = list(n1.extra_args)
    other = tmp_path / "other-secret"
    other.mkdir()
    n1.extra_args[n1.extra_args.index("--cluster-secret-file") + 1] = new_secret_file(str(other))
    try:
        cluster.start()
        cluster.wait_ready("n2", "n3", peers=False)
        cluster.wait_peers("n2", up=["n3"], down=["n1"], timeout=10)
        n1.wait_ready()
        wait_for(lambda: "handshake failed" in n1.log(), timeout=10, what="n1 refused by its peers")
        base = f"{urls['n1']}{PREFIX}"
        reply = http("PUT", f"{base}/kv/k/", {"value": 1}, timeout=10)
        assert reply.status == 201, (reply.status, reply.text)
        assert http("GET", f"{base}/kv/k/", timeout=10).json["value"] == 1
    finally:
        cluster.stop()
