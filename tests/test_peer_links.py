"""Peer links come back by themselves: after a refused HELLO, after the peer is
found silent, and at once when a peer that was down dials in.

n1 is a real node process; its peer n2 is scripted in this process, so the
test decides exactly what n1's link meets. The dial-back tests run a link in
this process against a real node, and a real cluster.
"""

import asyncio
import contextlib
import logging
import time

import pytest

from kvwire import Client
from kvwire.protocol import ErrorReply, Health, Hello, HelloReply, Ping, Pong, Role
from kvwire.protocol.peer_auth import new_nonce
from kvwire.protocol.messages import Digests, DigestsReply, Requests
from kvwire.protocol.errors import ErrorCode
from kvwire.secret_file import read_secret_file
from kvwire.server import peers
from kvwire.server.config import ServerConfig, parse_cluster
from kvwire.server.peers import PeerLink
from kvwire.testing import LocalCluster, NodeProcess, RawConnection, ScriptedNode, started_together, wait_for
from kvwire.testing.cluster import new_secret_file


def refusing_first_hellos(count):
    """Answers: the first ``count`` HELLOs get BAD_REQUEST, later ones are accepted; PINGs get PONG."""
    hellos = 0

    def answer(request):
        nonlocal hellos
        if isinstance(request, Hello):
            hellos += 1
            if hellos <= count:
                return ErrorReply(request.id, ErrorCode.BAD_REQUEST, "protocol version 1 is not supported")
            return None  # ScriptedNode's own HELLO_REPLY
        return Pong(request.id) if isinstance(request, Ping) else None

    return answer


def peer_state(node, peer):
    with RawConnection(node.address) as conn:
        health = conn.request(Health(1)).health
    return next(p for p in health["cluster"]["nodes"] if p["node_id"] == peer)


async def poll(condition, timeout, what):
    """wait_for in a thread: the scripted peer lives on this event loop and must keep answering."""
    await asyncio.to_thread(wait_for, condition, timeout=timeout, interval=0.05, what=what)


async def test_a_peer_that_refused_our_hello_is_linked_once_it_accepts(tmp_path):
    """Before, a BAD_REQUEST answer to HELLO ended the link task for good, silently."""
    secret_file = new_secret_file(tmp_path)
    async with ScriptedNode(refusing_first_hellos(2), node_id="n2", secret=read_secret_file(secret_file)) as n2:
        node = NodeProcess("n1", data_dir=tmp_path / "n1")
        node.extra_args += ["--cluster", f"n1={node.address},n2={n2.address}", "--cluster-secret-file", secret_file]
        await asyncio.to_thread(node.start)
        try:
            await asyncio.to_thread(node.wait_ready)
            await poll(lambda: peer_state(node, "n2")["state"] == "UP", 10, "n2 UP after two refused HELLOs")
            assert sum(isinstance(request, Hello) for request in n2.received) >= 3
        finally:
            await asyncio.to_thread(node.stop)
        assert "peer n2: handshake failed: protocol version 1 is not supported" in node.log()
        [line] = [line for line in node.log().splitlines() if "handshake failed" in line][:1]
        assert "event=peer_handshake_failed" in line and "peer=n2" in line


async def test_a_silent_peer_link_is_closed_and_dialled_again(tmp_path):
    """A peer that keeps its connection open but answers nothing is marked DOWN, and the
    link is closed and reopened, rather than waiting on the silent TCP connection."""
    silent = asyncio.Event()

    def answer(request):
        if silent.is_set():
            return ScriptedNode.SILENT  # reads everything, answers nothing, keeps the connection
        return Pong(request.id) if isinstance(request, Ping) else None

    secret_file = new_secret_file(tmp_path)
    async with ScriptedNode(answer, node_id="n2", secret=read_secret_file(secret_file)) as n2:
        node = NodeProcess("n1", data_dir=tmp_path / "n1")
        node.extra_args += ["--cluster", f"n1={node.address},n2={n2.address}", "--cluster-secret-file", secret_file]
        await asyncio.to_thread(node.start)
        try:
            await asyncio.to_thread(node.wait_ready)
            await poll(lambda: peer_state(node, "n2")["state"] == "UP", 10, "n2 UP")
            assert n2.connections == 1
            silent.set()
            await poll(lambda: peer_state(node, "n2")["state"] == "DOWN", 5, "n2 DOWN once silent")
            await poll(lambda: n2.connections >= 2, 5, "n1 to dial n2 again")
            silent.clear()
            await poll(lambda: peer_state(node, "n2")["state"] == "UP", 5, "n2 UP on the new link")
        finally:
            await asyncio.to_thread(node.stop)
        [line] = [line for line in node.log().splitlines() if "dropping the silent link to peer n2" in line][:1]
        assert "event=peer_link_dropped" in line and "peer=n2" in line


async def test_a_joining_node_beside_a_peer_without_requests_joins_and_says_what_it_lost(tmp_path):
    """A peer built before REQUESTS answers it UNKNOWN_OP. The joining node must
    not stay out for ever beside it, nor go on in silence: it joins, and warns
    that it has none of that peer's records of recent PUT request ids."""
    asked_requests = []

    def answer(request):
        if isinstance(request, Ping):
            return Pong(request.id)
        if isinstance(request, Digests):  # every bucket the same: nothing to copy
            return DigestsReply(request.id, [], 0, True)
        if isinstance(request, Requests):
            asked_requests.append(request.cursor)
            return ErrorReply(request.id, ErrorCode.UNKNOWN_OP, "unknown op 0x0c")
        return None

    secret_file = new_secret_file(tmp_path)
    async with ScriptedNode(answer, node_id="n2", secret=read_secret_file(secret_file)) as n2:
        node = NodeProcess("n1", data_dir=tmp_path / "n1")
        node.extra_args += ["--cluster", f"n1={node.address},n2={n2.address}", "--cluster-secret-file", secret_file,
                            "--join"]
        await asyncio.to_thread(node.start)
        try:
            await poll(lambda: "event=joined" in node.log(), 15, "n1 joined beside n2")
            assert asked_requests == [0]
            (warning,) = [line for line in node.log().splitlines() if "event=requests_unsupported" in line]
            assert " WARNING " in warning and "peer=n2" in warning
            assert "peer n2 does not know REQUESTS" in warning and "may be applied a second time" in warning
        finally:
            await asyncio.to_thread(node.stop)


class Events:
    """What a link reports, recorded (the node's side of ``LinkEvents``)."""

    def __init__(self) -> None:
        self.linked: list[str] = []
        self.instance = bytes(16)

    def peer_heard(self, peer: str) -> None:
        pass

    def peer_linked(self, peer: str, *, joining: bool = False, instance: bytes | None = None) -> None:
        self.linked.append(peer)

    def peer_unlinked(self, peer: str) -> None:
        pass

    def peer_answered(self, peer, request_id, reply) -> None:
        pass

    def peer_send_failed(self, peer, request_id) -> None:
        pass


async def test_a_link_waiting_out_its_backoff_dials_at_once_when_its_peer_is_up(tmp_path, monkeypatch, caplog):
    # A backoff far longer than the test: only dial_now can bring the link up in time.
    monkeypatch.setattr(peers, "RECONNECT_BASE_DELAY", 120.0)
    monkeypatch.setattr(peers, "RECONNECT_MAX_DELAY", 120.0)
    caplog.set_level(logging.DEBUG, logger="kvwire.peers")
    cluster = LocalCluster(3, data_dir=tmp_path)  # nothing started yet
    members = parse_cluster(cluster.members)
    config = ServerConfig(node_id="n2", members=members, data_dir=tmp_path / "n2-unused", cluster_secret=cluster.secret)
    events = Events()
    link = PeerLink(next(member for member in members if member.node_id == "n1"), config, events)
    link.start()
    try:
        await poll(lambda: "peer n1 unreachable" in caplog.text, 10, "the first dial to n1 refused")
        cluster.start("n1")
        await asyncio.to_thread(cluster.wait_ready, "n1", peers=False)
        assert link.connection is None and events.linked == []  # still backing off: 60 s at least
        link.dial_now()
        await poll(lambda: events.linked == ["n1"], 10, "the link to n1 up")
        assert link.connection is not None and link.connection.node_id == "n1"
        link.dial_now()  # linked already: nothing to cut short, so no dial is asked for
        assert not link._dial_now.is_set() and events.linked == ["n1"]
    finally:
        try:
            await link.close()
        finally:
            cluster.stop()  # even if the link's task failed: no node may outlive the test


@contextlib.asynccontextmanager
async def link_backing_off_after_a_refused_hello(tmp_path, monkeypatch, caplog):
    """(n1, link, events): a link from n2 to a scripted n1 that refused its first HELLO,
    the link now waiting out a 120 s backoff, far longer than any test."""
    monkeypatch.setattr(peers, "RECONNECT_MAX_DELAY", 120.0)
    caplog.set_level(logging.DEBUG, logger="kvwire.peers")
    secret = read_secret_file(new_secret_file(tmp_path))
    async with ScriptedNode(refusing_first_hellos(1), node_id="n1", secret=secret) as n1:
        members = parse_cluster(f"n1={n1.address},n2=127.0.0.1:1")
        config = ServerConfig(node_id="n2", members=members, data_dir=tmp_path / "n2-unused", cluster_secret=secret)
        events = Events()
        link = PeerLink(members[0], config, events)
        link.start()
        try:
            await poll(lambda: "peer n1: handshake failed" in caplog.text, 10, "the first HELLO to n1 refused")
            yield n1, link, events
        finally:
            await link.close()  # a second close does nothing


async def test_a_link_waiting_after_a_refused_handshake_dials_at_once_when_its_peer_is_up(tmp_path, monkeypatch, caplog):
    """The wait after a refused handshake (or certificate) is cut short by
    dial_now too: the peer's proof, just accepted, shows it has been fixed."""
    async with link_backing_off_after_a_refused_hello(tmp_path, monkeypatch, caplog) as (n1, link, events):
        assert link.connection is None and events.linked == []  # waiting: 120 s
        link.dial_now()
        await poll(lambda: events.linked == ["n1"], 10, "the link to n1 up")
        assert "dialling it back now" in caplog.text
        assert sum(isinstance(request, Hello) for request in n1.received) >= 2


def test_nodes_whose_cluster_swaps_two_addresses_redial_each_once_a_second_not_in_a_loop(tmp_path):
    """Each node reaches another node than the one it names, which accepts its
    HELLO and so would cut that node's own wait short, and so on round the
    ring: the wait after a wrong node id must not be one dial_now cuts."""
    secret_file = new_secret_file(tmp_path)
    nodes = [NodeProcess(f"n{number}", data_dir=tmp_path / f"n{number}") for number in (1, 2, 3)]
    addresses = [node.address for node in nodes]
    for me, node in enumerate(nodes):
        others = [index for index in range(3) if index != me]
        swapped = {others[0]: addresses[others[1]], others[1]: addresses[others[0]]}
        members = ",".join(f"n{index + 1}={addresses[index] if index == me else swapped[index]}" for index in range(3))
        node.extra_args += ["--cluster", members, "--cluster-secret-file", secret_file]
    with started_together(nodes):

        def wrong_ids():
            return min(node.log().count("check --cluster") for node in nodes)

        first = wait_for(wrong_ids, timeout=10, what="every node finding a wrong node id")
        started = time.monotonic()
        wait_for(lambda: wrong_ids() >= first + 6, timeout=15, what="six more wrong-id dials on every node")
        # Each of a node's two links waits a second between dials: six more take
        # two seconds at least. In a loop they took milliseconds (hundreds of
        # dials a second).
        assert time.monotonic() - started > 1.5
        assert max(node.log().count("check --cluster") for node in nodes) < 50


def test_a_node_dials_back_a_peer_that_dials_it(tmp_path):
    """n1 and n2 back off from n3 while it is down; n3, restarted, dials them
    first thing (it listens before it dials), and they dial it back at once.
    Either could have dialled n3 on its own in the few milliseconds between
    n3 listening and dialling, but not both (the odds are about 1 in 10,000)."""
    with LocalCluster(3, data_dir=tmp_path) as cluster:
        cluster.kill("n3")
        for node_id in ("n1", "n2"):
            cluster.wait_peers(node_id, down=["n3"], timeout=10.0)
        cluster.start("n3")
        cluster.wait_ready(timeout=30.0)
        said = [node_id for node_id in ("n1", "n2") if "event=peer_dial_back" in cluster[node_id].log()
                or "dialling it back now" in cluster[node_id].log()]
        assert said, "neither n1 nor n2 dialled n3 back"


def test_a_peer_with_other_limits_is_named_once_with_each_difference(tmp_path):
    """n2 takes values up to 500,000 bytes, its peers up to 1 MiB: a value between
    the two is taken by n1 and refused by n2, so a write of it can miss its majority
    for no reason a client could see. Each side warns, naming the peer and the
    limit, once however often the link comes back; n1 and n3, alike, say nothing
    of each other."""
    cluster = LocalCluster(3, data_dir=tmp_path)
    cluster["n2"].extra_args += ["--max-value-bytes", "500000"]
    with cluster:
        n1, n2, n3 = cluster["n1"], cluster["n2"], cluster["n3"]
        warning = "peer n2 has other limits than this node (max_value_bytes 500000 there, 1048576 here)"
        wait_for(lambda: warning in n1.log(), timeout=10, what="n1 warning about n2's limits")
        assert "peer n1 has other limits than this node (max_value_bytes 1048576 there, 500000 here)" in n2.log()
        assert "peer n3 has other limits" in n2.log()
        assert "peer n1 has other limits" not in n3.log() and "peer n3 has other limits" not in n1.log()
        [line] = [line for line in n1.log().splitlines() if warning in line]
        assert "event=peer_limits_differ" in line and "peer=n2" in line
        cluster.restart("n2")
        cluster.wait_ready()
        assert n1.log().count("peer n2 has other limits") == 1


@pytest.mark.parametrize("turns", range(6))
async def test_a_link_closed_as_its_peer_dials_in_stops_and_does_not_dial(tmp_path, monkeypatch, caplog, turns):
    """A node stopping (SIGTERM) as a peer dials in: the link's backoff ends and it is
    cancelled within a few loop turns of each other. Python 3.11's wait_for returns the
    wait's result when the cancellation comes once that wait has ended, so the link
    went on to dial, linked, and waited on the new connection for ever: the node's
    shutdown hung (a CI run saw it). Each number of turns between the two is tried."""
    async with link_backing_off_after_a_refused_hello(tmp_path, monkeypatch, caplog) as (_, link, events):
        link.dial_now()
        for _ in range(turns):
            await asyncio.sleep(0)
        await asyncio.wait_for(link.close(), 5)
        assert link.connection is None
        assert events.linked == []  # it did not go on to link once closed


async def test_closing_a_link_that_is_up_drops_its_connection(tmp_path):
    """The node stopping: the link's connection is aborted, not left open until the process exits."""
    secret = read_secret_file(new_secret_file(tmp_path))
    async with ScriptedNode(node_id="n1", secret=secret) as n1:
        members = parse_cluster(f"n1={n1.address},n2=127.0.0.1:1")
        config = ServerConfig(node_id="n2", members=members, data_dir=tmp_path / "n2-unused", cluster_secret=secret)
        events = Events()
        link = PeerLink(members[0], config, events)
        link.start()
        await poll(lambda: events.linked == ["n1"], 10, "the link to n1 up")
        held = link.connection
        await asyncio.wait_for(link.close(), 5)
        assert held is not None and not held.is_open


def test_a_peer_link_comes_back_to_a_node_whose_clients_hold_every_connection(tmp_path):
    """Peer links count in --max-connections. A peer restarted while clients held
    every connection n1 allows was refused for as long as they did: n2 saw n1 DOWN,
    and sent it nothing. Past the limit there is room for one link per peer, kept
    once it proves the peer role; a client there is still refused and closed."""
    with LocalCluster(3, data_dir=tmp_path, node_args=["--max-connections", "4", "--hello-timeout", "1"]) as cluster:
        cluster.terminate("n2")  # its link to n1 goes: n3's is the one left
        held: list[RawConnection] = []
        try:
            def refused_when_full() -> ErrorReply | None:
                """Open a client connection to n1 and PING: keep it while it answers PONG."""
                connection = RawConnection(cluster["n1"].address, timeout=5)
                reply = connection.request(Ping(1))
                if isinstance(reply, Pong):
                    held.append(connection)
                    return None
                connection.close()
                return reply

            # n2's link gone on n1's side too: n3's, and the connection asking.
            wait_for(lambda: cluster.health("n1")["connections"] == 2, timeout=10, what="n1 without n2's link")
            refusal = wait_for(refused_when_full, timeout=10, interval=0, what="n1 full of clients")
            assert refusal.code == ErrorCode.UNAVAILABLE and "too many connections" in refusal.message
            assert len(held) == 3  # with n3's link, the 4 of --max-connections

            cluster.start("n2")
            cluster["n2"].wait_ready()
            cluster.wait_peers("n2", up=["n1", "n3"], timeout=10)
            n1_sees = {node["node_id"]: node for node in held[0].request(Health(2)).health["cluster"]["nodes"]}
            assert n1_sees["n2"]["healthy"] and n1_sees["n3"]["healthy"], n1_sees

            # The room left is n3's: a client's PING or HELLO there meets what it meets at
            # the limit, the connection's refusal (id nil), and the close.
            for request in (Ping(1), Hello(1)):
                with RawConnection(cluster["n1"].address, timeout=5) as late:
                    reply = late.request(request)
                    assert isinstance(reply, ErrorReply) and reply.id is None, reply
                    assert reply.code == ErrorCode.UNAVAILABLE and "too many connections" in reply.message
                    assert late.closed_by_peer(timeout=5)
            with Client(cluster.endpoints_of("n1", "n3")) as client:  # and a client moves on
                client.put("k", "v")
            # The first of a peer's two HELLOs, then silence: the room is held no longer
            # than --hello-timeout, though the connection has sent a request.
            with RawConnection(cluster["n1"].address, timeout=5) as stalled:
                first = stalled.request(Hello(1, role=Role.PEER, cluster=cluster.cluster_id, node="n2", nonce=new_nonce()))
                assert isinstance(first, HelloReply) and first.nonce is not None, first
                assert stalled.closed_by_peer(timeout=5)
            assert all(isinstance(connection.request(Ping(3)), Pong) for connection in held)  # untouched
        finally:
            for connection in held:
                connection.close()
