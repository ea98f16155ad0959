"""Every acknowledged write survives kill -9 of the node."""

import pytest

from kvwire.protocol import Get, GetReply, Health, Put, PutReply
from kvwire.testing import NodeProcess, RawConnection


@pytest.mark.parametrize("sync", ["full", "normal", "off"])
def test_acknowledged_puts_survive_kill_9(tmp_path, sync):
    node = NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", sync]).start().wait_ready()
    acknowledged: dict[str, int] = {}
    try:
        with RawConnection(node.address, timeout=20) as conn:
            # Acknowledged in full before the kill.
            for batch in range(4):
                conn.send(*[Put(i, f"key-{i}", i * 10 + batch) for i in range(250)])
                for reply in conn.receive(250):
                    assert isinstance(reply, PutReply)
                    acknowledged[f"key-{reply.id}"] = reply.id * 10 + batch
            # And a burst still in flight when the node dies: whatever of it was
            # acknowledged must be there afterwards too.
            conn.send(*[Put(10_000 + i, f"late-{i}", i) for i in range(500)])
            for reply in conn.receive(50):
                acknowledged[f"late-{reply.id - 10_000}"] = reply.id - 10_000
            node.kill()
        node.start().wait_ready()
        with RawConnection(node.address, timeout=20) as conn:
            keys = sorted(acknowledged)
            conn.send(*[Get(n, key) for n, key in enumerate(keys)])
            replies = {reply.id: reply for reply in conn.receive(len(keys))}
        lost = [key for n, key in enumerate(keys) if not isinstance(replies[n], GetReply) or replies[n].value != acknowledged[key]]
        assert len(acknowledged) == 300  # 250 keys written 4 times, 50 late ones
        assert lost == []
    finally:
        node.stop()


def test_values_beyond_the_cache_are_read_back_from_disk(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--cache-entries", "10"]) as node:
        with RawConnection(node.address, timeout=20) as conn:
            conn.send(*[Put(i, f"k{i}", {"n": i, "pad": "x" * 50}) for i in range(200)])
            assert all(isinstance(r, PutReply) for r in conn.receive(200))
            conn.send(*[Get(i, f"k{i}") for i in range(200)])
            replies = {r.id: r for r in conn.receive(200)}
        assert all(replies[i].value == {"n": i, "pad": "x" * 50} for i in range(200))
        with RawConnection(node.address) as conn:
            health = conn.request(Health(1)).health
        assert health["cached_values"] <= 10 and health["keys"] == 200


@pytest.mark.parametrize("loss", ["wal deleted", "wal truncated"])
def test_a_node_whose_wal_was_lost_while_it_was_down_does_not_mint_its_tags_again(tmp_path, loss):
    """n3's WAL is lost after a kill -9 (deleted, or cut to nothing), taking its
    database back to its last checkpoint: that must not read as the clean stop before
    it. It did: n3 started under its old name, minted again the tag of a PUT its peers
    held, and the PUT acknowledged under it lost to the older value (found by an
    independent check). Now its start is an unclean one: a new name, and catching up."""
    from kvwire import Client
    from kvwire.server.storage import DATABASE_FILE_NAME
    from kvwire.testing import LocalCluster, wait_for

    cluster = LocalCluster(3, data_dir=tmp_path)
    with cluster:
        n3 = cluster["n3"]
        with Client(n3.address, timeout=5) as client:
            client.put("k", "A")
        cluster.restart("n3")  # a clean stop: its WAL checkpointed, 'running' gone from the file
        cluster.wait_peers("n3", up=["n1", "n2"], timeout=10.0)
        with Client(n3.address, timeout=5) as client:
            first = client.put("k", "B")
        cluster.kill("n3")
        wal = n3.data_dir / f"{DATABASE_FILE_NAME}-wal"
        if loss == "wal deleted":
            wal.unlink()
            (n3.data_dir / f"{DATABASE_FILE_NAME}-shm").unlink(missing_ok=True)
        else:
            wal.write_bytes(b"")
        cluster.start("n3")
        cluster.wait_ready("n3")
        wait_for(lambda: "starts after an unclean stop" in n3.log(), timeout=10, what="n3 taking its start for unclean")
        cluster.wait_caught_up("n3", timeout=20.0)
        with Client(n3.address, timeout=5) as client:
            second = client.put("k", "C")
            assert second != first and second > first, (first, second)
        with Client(cluster.endpoints, timeout=5) as client:
            assert client.get("k") == "C"
