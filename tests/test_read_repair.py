"""A quorum read writes the newest version back to a member of its majority that is behind (ABD).

The state is built so that the read's majority is exactly {behind, ahead}:

1. ``k`` is written through n1 and reaches all three nodes;
2. n3 is killed (``kill -9``); a newer write of ``k`` (a PUT, or a DELETE) is
   acknowledged by n1 and n2. n1, its coordinator, keeps a hint for n3;
3. n1 is killed, taking that hint with it, and n3 is started again.

Now only n2 (ahead) and n3 (behind) run, so any quorum read's majority is
those two, and n3's own copy (``consistency=one``) is the old one.

Why hint replay cannot be what brings n3 up to date: a hint is kept only by
the coordinator of the write that missed a peer (peers.py ``Peers.hint``,
called from ``Coordinator._replicate``), and n1 coordinated the write n3
missed; a REPLICATE received by n2 never creates a hint. The test checks that
n1 held a hint for n3 and n2 none, and n1 stays dead from before n3 restarts
until the end, so no replay to n3 can happen. Nor is there background
anti-entropy: the nodes run with a repair interval of an hour (``NO_ANTI_ENTROPY``), and the test watches n3's own copy
stay old for a while before the read. So the only way n3 can hold the new
version afterwards is the quorum read's write-back, which the HEALTH counter
``read_write_backs`` of the read's coordinator must also show.
"""

from __future__ import annotations

import time

import pytest

from kvwire import Client, KeyNotFoundError
from kvwire.client import RetryPolicy
from kvwire.protocol import Consistency, ErrorCode, ErrorReply, Fetch, FetchReply, Get, GetReply, Hello, Role
from kvwire.testing import LocalCluster, RawConnection, wait_for

KEY = "repair/k"
# Anti-entropy would also bring n3 up to date (tests/test_anti_entropy.py); an
# hour between rounds keeps it out of this test.
NO_ANTI_ENTROPY = ["--repair-interval", "3600"]
# How long n3's copy is watched staying old before the read: several heartbeat
# intervals (100 ms) and longer than a hint replay takes once a peer is UP.
QUIET_PERIOD = 1.0


def _client(cluster, node_id):
    return Client(cluster.endpoints_of(node_id), timeout=5.0, retry=RetryPolicy(attempts=1))


def _local(cluster, node_id):
    """``(value, version)`` of ``node_id``'s own copy of KEY, or None if it has none (or a tombstone)."""
    with RawConnection(cluster[node_id].address) as conn:
        reply = conn.request(Get(1, KEY, Consistency.ONE))
    if isinstance(reply, ErrorReply):
        assert reply.code == ErrorCode.NOT_FOUND, reply
        return None
    assert isinstance(reply, GetReply), reply
    return reply.value, reply.version


def _committed(cluster, node_id):
    """``(version, deleted)`` of ``node_id``'s committed row for KEY, as a peer's FETCH sees it
    (a consistency=one GET can't tell a tombstone from no row at all)."""
    with RawConnection(cluster[node_id].address) as conn:
        cluster.as_peer(node_id, conn)
        # As anti-entropy asks (``repair``): answered even by a node joining after a kill -9.
        reply = conn.request(Fetch(2, KEY, repair=True))
    assert isinstance(reply, FetchReply), reply
    return reply.version, reply.deleted


def _pending_hints(cluster, holder, peer):
    nodes = cluster.health(holder)["cluster"]["nodes"]
    return next(entry["pending_hints"] for entry in nodes if entry["node_id"] == peer)


@pytest.mark.parametrize("missed", ["put", "delete"])
@pytest.mark.parametrize("coordinator", ["n2", "n3"], ids=["read-via-ahead-n2", "read-via-behind-n3"])
def test_quorum_read_brings_the_behind_member_of_its_majority_up_to_date(tmp_path, coordinator, missed):
    # --sync normal: not a durability test; a shared disk's fsync stall must not fail a write.
    with LocalCluster(3, data_dir=tmp_path, node_args=NO_ANTI_ENTROPY, sync="normal") as cluster:
        with _client(cluster, "n1") as kv:
            old_version = kv.put(KEY, "old")
        # Acknowledged by a majority; wait until n3 has it too.
        wait_for(lambda: _local(cluster, "n3") == ("old", old_version), timeout=5.0, what="n3 receiving the first write")

        # A clean stop: after a kill -9, n3 would catch up from every peer before
        # voting (docs/design.md 1.2), and n1 is down when it comes back.
        cluster.terminate("n3")
        cluster.wait_peers("n1", down=["n3"])
        cluster.wait_peers("n2", down=["n3"])
        with _client(cluster, "n1") as kv:
            new_version = kv.put(KEY, "new") if missed == "put" else kv.delete(KEY)
        assert new_version > old_version
        expected = ("new", new_version) if missed == "put" else None
        assert _local(cluster, "n2") == expected  # n2 acknowledged it, so holds it
        assert _committed(cluster, "n2") == (new_version, missed == "delete")
        # The hint for n3 is n1's alone.
        assert _pending_hints(cluster, "n1", "n3") >= 1
        assert _pending_hints(cluster, "n2", "n3") == 0

        cluster.kill("n1")
        cluster.start("n3")
        cluster["n3"].wait_ready()
        cluster.wait_peers("n3", up=["n2"], down=["n1"], timeout=10.0)
        cluster.wait_peers("n2", up=["n3"], down=["n1"], timeout=10.0)
        assert _pending_hints(cluster, "n2", "n3") == 0

        # n3 is behind, and stays behind while nothing reads the key.
        quiet_until = time.monotonic() + QUIET_PERIOD
        while time.monotonic() < quiet_until:
            assert _local(cluster, "n3") == ("old", old_version)
            time.sleep(0.05)

        write_backs = {node_id: cluster.health(node_id)["read_write_backs"] for node_id in ("n2", "n3")}
        with _client(cluster, coordinator) as kv:
            if missed == "put":
                assert tuple(kv.get_with_version(KEY)) == ("new", new_version)
            else:
                with pytest.raises(KeyNotFoundError):
                    kv.get(KEY)
        # The write-back completed before the reply: no waiting needed.
        assert _local(cluster, "n3") == expected
        assert _committed(cluster, "n3") == (new_version, missed == "delete")
        after = {node_id: cluster.health(node_id)["read_write_backs"] for node_id in ("n2", "n3")}
        assert after[coordinator] == write_backs[coordinator] + 1, (write_backs, after)

        # Now the majority agrees: another quorum read, through either node, writes nothing back.
        for reader in ("n2", "n3"):
            with _client(cluster, reader) as kv:
                if missed == "put":
                    assert tuple(kv.get_with_version(KEY)) == ("new", new_version)
                else:
                    with pytest.raises(KeyNotFoundError):
                        kv.get(KEY)
        assert {node_id: cluster.health(node_id)["read_write_backs"] for node_id in ("n2", "n3")} == after

        # And n3's copy is durable, not just in memory: it survives kill -9.
        cluster.kill("n3")
        cluster.start("n3")
        cluster["n3"].wait_ready()
        assert _local(cluster, "n3") == expected
        assert _committed(cluster, "n3") == (new_version, missed == "delete")
