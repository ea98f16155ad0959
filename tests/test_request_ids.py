"""A PUT sent again with its request id is applied once (docs/protocol.md 6.4, "Retrying a PUT").

Real nodes: the retry goes to another node than the first attempt, as a client
library or HAProxy would send it after a lost reply, with another write of
the key in between; the retry must answer the first attempt's version and
leave that newer write in place.
"""

from __future__ import annotations

from kvwire import Client
from kvwire.client import RetryPolicy
from kvwire.protocol import ErrorCode, Get, GetReply, Put, PutReply, Version
from kvwire.testing import LocalCluster, RawConnection, wait_for
from kvwire.testing.disk import NodeOnItsOwnDisk

# Each PUT here has one attempt and --write-timeout (1 s) for its commits; a
# shared disk's fsync stall must not fail it. A kill -9 (the restart test) loses
# nothing committed under --sync normal: the records' durability is the same
# commit as the row's, which is what is under test.
SYNC = "normal"


def _put(cluster, node_id, key, value, request, retry=None):
    with RawConnection(cluster[node_id].address) as conn:
        return conn.request(Put(1, key, value, request, retry))


def _silent_for(cluster, node_id, peer):
    """How long ``node_id`` has heard nothing from ``peer``, in seconds (its HEALTH)."""
    nodes = cluster.health(node_id)["cluster"]["nodes"]
    return next(entry["last_heard_ms"] for entry in nodes if entry["node_id"] == peer) / 1000


def _get(cluster, node_id, key):
    with RawConnection(cluster[node_id].address) as conn:
        reply = conn.request(Get(1, key))
    assert isinstance(reply, GetReply), reply
    return reply.value, reply.version


def test_a_put_sent_again_with_its_request_id_is_applied_once_on_another_node(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, sync=SYNC) as cluster:
        first = _put(cluster, "n1", "k", "a", "req-1")
        assert isinstance(first, PutReply)
        other = _put(cluster, "n2", "k", "b", "req-2")  # another client's write, after it
        assert other.version > first.version
        # The "retry" of req-1, through n3, which coordinated neither: it must
        # find req-1 applied (its own log, or its LOOKUP majority's) and answer
        # that write, not write "a" over "b".
        again = _put(cluster, "n3", "k", "a", "req-1", retry=True)
        assert isinstance(again, PutReply) and again.version == first.version
        for node_id in cluster.node_ids:
            assert _get(cluster, node_id, "k") == ("b", other.version)


def test_a_request_id_names_a_write_of_one_key_and_with_another_key_is_another_write(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, sync=SYNC) as cluster:
        first = _put(cluster, "n1", "k", "a", "req-x")
        again = _put(cluster, "n2", "k", "a", "req-x", retry=True)
        other = _put(cluster, "n1", "other-key", "z", "req-x")
        assert isinstance(other, PutReply) and again.version == first.version
        assert _get(cluster, "n3", "other-key") == ("z", other.version)


def test_the_client_library_sends_a_request_id_with_every_put(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, sync=SYNC) as cluster, Client(cluster.endpoints) as client:
        version = client.put("k", "v", request_id="mine")
        # The same id again, as the library's own retry would send it: the same write.
        assert client.put("k", "v", request_id="mine") == version
        assert client.put("k", "v") > version  # a new PUT gets a new id, so a new version
        wait_for(lambda: _get(cluster, "n3", "k")[0] == "v", timeout=5, what="n3 holding the value")


def test_a_callers_request_id_reused_for_another_value_is_another_write_in_both_clients(tmp_path):
    """The nodes remember an id's version, not its value: a caller reusing its id for each
    update of a key (a client probe, 2026-12-07) had every update after the first answered
    as a retry of it, with its version, and never stored. The library folds the value
    into the id it sends, as the HTTP bridge does; the same value again is still a retry."""
    import asyncio

    from kvwire import AsyncClient

    with LocalCluster(3, data_dir=tmp_path, sync=SYNC) as cluster, Client(cluster.endpoints) as client:
        first = client.put("k", 1, request_id="order-7")
        second = client.put("k", 3, request_id="order-7")
        assert second > first and client.get("k") == 3
        assert client.put("k", 3, request_id="order-7") == second  # a retry of the second

        async def from_the_async_client() -> tuple[Version, Version, int]:
            async with AsyncClient(cluster.endpoints) as async_client:
                # Its ids are made as the blocking client's: this is that retry too.
                again = await async_client.put("k", 3, request_id="order-7")
                fourth = await async_client.put("k", 4, request_id="order-7")
                return again, fourth, await async_client.get("k")

        again, fourth, now = asyncio.run(from_the_async_client())
        assert again == second and fourth > second and now == 4


def test_a_callers_request_id_is_the_id_the_bridge_made_before_the_library_did():
    """A REST PUT that HAProxy retries on another bridge during a rolling upgrade must reach the
    nodes under one id: the library's digest is the bridge's of before 2026-12-07 (its write_id,
    copied here), 'rest-' prefix included (a review caught a 'put-' one)."""
    import base64
    import hashlib

    import msgpack

    from kvwire.client.arguments import put_request_id

    def bridge_write_id(caller_id: str, packed: bytes) -> str:
        caller = caller_id.encode()
        digest = hashlib.sha256(len(caller).to_bytes(2, "big") + caller)
        digest.update(packed)
        return "rest-" + base64.urlsafe_b64encode(digest.digest()[:24]).decode("ascii")

    for caller_id, value in [("order-7", 1), ("Idempotency-Key-\u00e9", {"a": [1, "b"]}), ("x" * 128, "v" * 1000)]:
        packed = msgpack.packb(value)
        assert put_request_id(caller_id, packed) == bridge_write_id(caller_id, packed)


def test_a_blocking_client_checks_a_value_in_its_callers_thread(tmp_path):
    """Checking a large value takes a while (0.1-0.3 s for a million numbers): on the loop
    thread all of a Client's calls share, one thread's large put held the others' calls
    past their timeouts (a client probe). A list subclass shows where it is walked."""
    import threading

    walked_in: list[int] = []

    class Watched(list):
        def __iter__(self):
            walked_in.append(threading.get_ident())
            return super().__iter__()

    with LocalCluster(1, data_dir=tmp_path, sync=SYNC) as cluster, Client(cluster.endpoints) as client:
        client.put("k", Watched([1, [2, 3]]))
        assert client.get("k") == [1, [2, 3]]
    assert walked_in and set(walked_in) == {threading.get_ident()}  # checked and packed here


def test_request_ids_are_kept_on_disk_so_a_retry_after_a_restart_is_still_applied_once(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, sync=SYNC) as cluster:
        first = _put(cluster, "n1", "k", "a", "req-1")
        assert isinstance(first, PutReply)
        wait_for(lambda: all(_get(cluster, node_id, "k")[1] == first.version for node_id in cluster.node_ids),
                 timeout=5, what="every node holding the first write")
        other = _put(cluster, "n2", "k", "b", "req-2")
        # Every node crashes, so whatever they remembered in memory is gone.
        for node_id in cluster.node_ids:
            cluster.kill(node_id)
        cluster.start().wait_ready()
        again = _put(cluster, "n3", "k", "a", "req-1", retry=True)
        assert isinstance(again, PutReply) and again.version == first.version
        assert _get(cluster, "n1", "k") == ("b", other.version)


def test_a_first_attempt_that_waited_on_a_stopped_node_is_not_applied_again(tmp_path):
    """A client sends a PUT to n1, which is stopped (SIGSTOP): the request waits
    unread in n1's socket. The client gives up on n1 (silent for its attempt
    timeout, as the client library's) and sends the PUT again, with
    its request id, to n2, which applies it; another client's write follows. When
    n1 runs again it reads the first attempt: applying it now would put "a" back
    above "b". It must finish the retry's write, or fail, and "b" must stay.

    The node's rule for this is the LOOKUP round after a stall (docs/protocol.md
    6.10). Under uvloop the overdue failure-detector timer also runs before the
    socket is read, so the peers are DOWN and the PUT cannot go out in one round
    trip either way; tests/test_core.py and the simulator (tests/test_sim.py,
    ``one-trip-after-stall``) test the rule itself."""
    with LocalCluster(3, data_dir=tmp_path, sync=SYNC) as cluster:
        for node_id in cluster.node_ids:
            cluster.wait_peers(node_id, up=[other for other in cluster.node_ids if other != node_id], timeout=10.0)
        cluster.pause("n1")
        try:
            with RawConnection(cluster["n1"].address, timeout=20.0) as first_attempt:
                first_attempt.send(Put(1, "k", "a", "req-1"))
                wait_for(lambda: cluster["n1"].unread_bytes() > 0, timeout=5.0, what="the PUT waiting in n1's socket")
                cluster.wait_peers("n2", down=["n1"], timeout=5.0)
                cluster.wait_peers("n3", down=["n1"], timeout=5.0)
                # A client gives up after its attempt timeout, not the moment the
                # peers mark n1 DOWN: that can be less than failure_timeout after
                # n1's own last event, too short for n1 to see its stall (CI saw it).
                for peer in ("n2", "n3"):
                    wait_for(lambda: _silent_for(cluster, peer, "n1") >= RetryPolicy().attempt_timeout, timeout=5.0,
                             what=f"{peer} hearing nothing from n1 for a client's attempt timeout")
                retried = _put(cluster, "n2", "k", "a", "req-1", retry=True)
                assert isinstance(retried, PutReply), retried
                later = _put(cluster, "n3", "k", "b", "req-2")
                assert isinstance(later, PutReply) and later.version > retried.version, later
                cluster.resume("n1")
                (answer,) = first_attempt.receive()
        finally:
            cluster.resume("n1")
        if isinstance(answer, PutReply):
            assert answer.version == retried.version, answer
        else:
            assert answer.code == ErrorCode.NO_QUORUM and answer.maybe_applied is not True, answer
        for node_id in cluster.node_ids:
            cluster.wait_peers(node_id, up=[other for other in cluster.node_ids if other != node_id], timeout=10.0)
            assert _get(cluster, node_id, "k") == ("b", later.version)


def test_a_retry_finishes_the_tag_an_earlier_attempt_sent_to_its_full_disk(tmp_path):
    """A PUT's second attempt, through n3, mints a tag and sends it to n1, whose disk
    is full, and to nowhere else (n2 is stopped): it fails, the tag on n3 alone. n3
    then stops too, n1's disk is emptied and n2 resumes, and the client's next
    attempt goes through n1. Its majority, n1 and n2, holds nothing of the PUT, but
    n1 saw n3's tag: it must finish that tag, the PUT's newest, not mint another
    beside it. A second tag of one PUT, left on n3, could surface above a later
    write minted at its counter (docs/design.md 1.2, step 6, "Several retries")."""
    cluster = LocalCluster(3, data_dir=tmp_path, sync=SYNC)
    n1 = cluster.nodes["n1"] = NodeOnItsOwnDisk.like(cluster["n1"])
    value = b"x" * 1_000_000  # more than n1's write-ahead log has room for once its disk is full
    with cluster:
        n1.fill_disk()
        cluster.pause("n2")
        try:
            cluster.wait_peers("n3", up=["n1"], down=["n2"], timeout=5.0)
            failed = _put(cluster, "n3", "k", value, "req-1", retry=True)
            assert failed.code == ErrorCode.NO_QUORUM and failed.maybe_applied is True, failed
            cluster.pause("n3")
            try:
                n1.free_disk()
                wait_for(lambda: cluster.health("n1")["storage"]["writable"], timeout=5.0,
                         what="n1 seeing its disk writable again")
                cluster.resume("n2")
                cluster.wait_peers("n1", up=["n2"], down=["n3"], timeout=5.0)
                finished = _put(cluster, "n1", "k", value, "req-1", retry=True)
            finally:
                cluster.resume("n3")
        finally:
            cluster.resume("n2")
        assert isinstance(finished, PutReply) and finished.version == Version(1, "n3"), finished
        for node_id in cluster.node_ids:
            cluster.wait_peers(node_id, up=[other for other in cluster.node_ids if other != node_id], timeout=10.0)
            wait_for(lambda node_id=node_id: _get(cluster, node_id, "k")[1] == Version(1, "n3"), timeout=10.0,
                     what=f"{node_id} holding the PUT at (1, n3)")


def test_a_node_that_lost_its_disk_copies_its_peers_request_records_when_it_joins(tmp_path):
    """The simulator's seed 3194 with real nodes (docs/design.md 1.9, "Request records
    join too"). req-1 is applied on n1 and n2 (n3 is down) and then overwritten, so
    only their request logs remember it. n1 loses its disk and joins; n2 stops. The
    retry's majority is n1 and n3: n3 never saw req-1, and n1 knows it only if its
    join copied n2's records. Without them the retry would write "a" over "b"."""
    with LocalCluster(3, data_dir=tmp_path, sync=SYNC) as cluster:
        cluster.terminate("n3")
        for node_id in ("n1", "n2"):
            cluster.wait_peers(node_id, down=["n3"], timeout=10.0)
        first = _put(cluster, "n1", "k", "a", "req-1")
        assert isinstance(first, PutReply), first
        other = _put(cluster, "n2", "k", "b", "req-2")
        assert isinstance(other, PutReply) and other.version > first.version, other
        cluster.wipe("n1")
        cluster["n1"].extra_args.append("--join")
        cluster.start("n1", "n3")
        cluster.wait_ready(timeout=30.0)  # n1 caught up (joined) from n2 and n3
        assert cluster.terminate("n2") == 0
        for node_id in ("n1", "n3"):
            cluster.wait_peers(node_id, down=["n2"], timeout=10.0)
        again = _put(cluster, "n3", "k", "a", "req-1", retry=True)
        assert isinstance(again, PutReply) and again.version == first.version, again
        assert _get(cluster, "n1", "k") == ("b", other.version)
        assert _get(cluster, "n3", "k") == ("b", other.version)
