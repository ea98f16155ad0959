"""Tombstone garbage collection on real nodes: a tombstone goes only once no replica
can need it, and a deleted key never comes back.

n3 is killed holding the key's old value; the key is deleted through n1 and n2.
While n3 is away, n1 and n2 keep the tombstone however long the grace period
has passed: only the replica that missed the delete could bring the old value
back. Once n3 returns, anti-entropy gives it the tombstone, every replica's
digests match for the grace period, the tag floor is raised, and all three
remove it. Throughout, the key reads as absent from every node; afterwards a
new write of it is above the removed tombstone's tag.
"""

from __future__ import annotations

import time

from kvwire import Client, KeyNotFoundError
from kvwire.client import RetryPolicy
from kvwire.protocol import Consistency, ErrorCode, ErrorReply, Fetch, FetchReply, Get, NO_VERSION
from kvwire.testing import LocalCluster, RawConnection, wait_for

KEY = "gc/k"
GRACE = 4.0  # the least the default 1 s write timeout allows
GC_ARGS = ["--repair-interval", "0.2", "--tombstone-grace", str(GRACE)]


def _committed(cluster, node_id):
    """``(version, deleted)`` of ``node_id``'s committed row for KEY, as a peer's FETCH sees it."""
    with RawConnection(cluster[node_id].address) as conn:
        cluster.as_peer(node_id, conn)
        reply = conn.request(Fetch(2, KEY))
    assert isinstance(reply, FetchReply), reply
    return reply.version, reply.deleted


def _assert_absent_everywhere(cluster, node_ids):
    for node_id in node_ids:
        with RawConnection(cluster[node_id].address) as conn:
            for consistency in (Consistency.ONE, None):
                reply = conn.request(Get(1, KEY, consistency))
                assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.NOT_FOUND, (node_id, reply)


def test_a_tombstone_waits_for_the_replica_that_missed_it_and_the_key_stays_deleted(tmp_path):
    # --sync normal: not a durability test; a shared disk's fsync stall must not fail a write.
    with LocalCluster(3, data_dir=tmp_path, node_args=GC_ARGS, sync="normal") as cluster:
        with Client(cluster.endpoints) as client:
            old = client.put(KEY, b"old value")
        wait_for(lambda: _committed(cluster, "n3")[0] == old, timeout=5, what="n3 holding the old value")
        cluster.kill("n3")
        cluster.wait_peers("n1", down=["n3"])
        cluster.wait_peers("n2", down=["n3"])
        with Client(cluster.endpoints_of("n1", "n2"), retry=RetryPolicy(attempts=1)) as client:
            tombstone = client.delete(KEY)

        # Well past the grace period, n1 and n2 still hold it: n3 has given no evidence.
        waited_until = time.monotonic() + GRACE + 2.0
        while time.monotonic() < waited_until:
            assert _committed(cluster, "n1") == (tombstone, True)
            assert _committed(cluster, "n2") == (tombstone, True)
            time.sleep(0.2)
        assert cluster.health("n1")["tombstones"]["collected"] == 0

        cluster.start("n3")
        cluster.wait_ready("n3")
        # n3 comes back with the old value; it must never be readable again.
        deadline = time.monotonic() + 60

        def removed_everywhere() -> bool:
            _assert_absent_everywhere(cluster, ("n1", "n2", "n3"))
            return all(_committed(cluster, node_id) == (NO_VERSION, False) for node_id in ("n1", "n2", "n3"))

        wait_for(removed_everywhere, timeout=deadline - time.monotonic(), interval=0.1,
                 what="the tombstone removed from all three nodes")
        for node_id in ("n1", "n2", "n3"):
            tombstones = cluster.health(node_id)["tombstones"]
            assert tombstones["collected"] == 1 and tombstones["held"] == 0
            assert tombstones["tag_floor"] >= tombstone.counter

        # The key stays deleted, through restarts too (the rows are gone from disk).
        cluster.restart("n3")
        _assert_absent_everywhere(cluster, ("n1", "n2", "n3"))
        # A new write is above the removed tombstone, so no copy of it could hide the write.
        with Client(cluster.endpoints) as client:
            new = client.put(KEY, b"new value")
            assert new.counter > tombstone.counter
            assert client.get(KEY) == b"new value"


def test_a_tombstone_on_a_lone_node_is_removed_after_the_grace_period(tmp_path):
    from kvwire.testing import NodeProcess

    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--tombstone-grace", "4"]) as node:
        with Client([node.address]) as client:
            client.put(KEY, 1)
            client.put("other", 1)
            tombstone = client.delete(KEY)
            # HEALTH's ``keys`` counts the tombstone, ``live_keys`` does not.
            health = client.health()
            assert (health["keys"], health["live_keys"], health["tombstones"]["held"]) == (2, 1, 1)

            def collected():
                with RawConnection(node.address) as conn:
                    from kvwire.protocol import Health
                    return conn.request(Health(1)).health["tombstones"]["collected"] == 1

            wait_for(collected, timeout=20, what="the lone node removing its tombstone")
            try:
                client.get(KEY)
                raise AssertionError("a deleted key came back")
            except KeyNotFoundError:
                pass
            assert client.put(KEY, 2).counter > tombstone.counter
            health = client.health()
            assert (health["keys"], health["live_keys"], health["tombstones"]["held"]) == (2, 2, 0)
