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
