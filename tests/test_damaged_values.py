"""A value whose bytes changed on a node's disk is refused, not served.

Values carry no checksum, but every value was checked when it was written, so
one that fails the same check when read back was changed on disk. The node
answered such a read with the bytes as they were, which no client could
decode: its own reads of the key failed with "the node sent an invalid reply",
its bridge answered 500, and a peer's FETCH reply broke the quorum read of
the node that asked. It now answers UNAVAILABLE, and clients read another
node's copy.
"""

from __future__ import annotations

import random
import re
import sqlite3

import pytest

from kvwire import Client, UnavailableError
from msgspec import Raw

from kvwire.protocol import Consistency, ErrorCode, Get, GetReply, Put, PutReply
from kvwire.testing import LocalCluster, NodeProcess, RawConnection, wait_for
from kvwire.testing.data import damage_value

# These tests are of what a read does when it meets the damage: no scrub finds it first
# (test_scrub.py has the scrub's).
READS_ONLY = ["--scrub-rate", "0"]


def test_a_damaged_value_is_refused_as_unavailable_and_a_put_replaces_it(tmp_path):
    node = NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=READS_ONLY)
    with node, Client([node.address]) as client:
        client.put("whole", "kept")
        client.put("hit", {"a": [1, 2]})
    damage_value(node.data_dir, "hit")
    with node, Client([node.address]) as client:
        for consistency in ("one", "quorum"):
            with pytest.raises(UnavailableError, match="copy of 'hit' is damaged on its disk"):
                client.get("hit", consistency=consistency)
        assert client.get("whole") == "kept"  # the other keys, and the node, serve on
        client.put("hit", "new")
        assert client.get("hit") == "new"
    log = node.log()
    # Once for the key, however often it is read; a lone node has no peer to mend it from, and says so once.
    assert len(re.findall(r"event=damaged_value(?!_)", log)) == 1, log
    assert log.count("event=damaged_value_unmended") == 1 and "no peer gave the value of 'hit'" in log, log
    assert "Traceback" not in log


def test_a_client_reads_another_nodes_copy_of_a_value_damaged_on_one(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, node_args=READS_ONLY) as cluster:
        with Client(cluster.endpoints) as client:
            client.put("hit", b"\x00value")
        cluster.terminate("n3")
        damage_value(cluster["n3"].data_dir, "hit")
        cluster.start("n3").wait_ready()
        # n3 first: it refuses, and the client asks the next node.
        with Client(cluster.endpoints_of("n3", "n1", "n2")) as client:
            assert client.get("hit") == b"\x00value"
            assert client.get("hit", consistency="one") == b"\x00value"
        # n1 coordinating, asking n3 among its peers: n3's refusal is one peer that
        # failed, not a reply n1 cannot read, and n2 answers in its place.
        with Client(cluster.endpoints_of("n1")) as client:
            for _ in range(4):  # the peer asked first rotates
                assert client.get("hit") == b"\x00value"


# Whole values whose bytes hold what a timestamp's header looks like (0xd6 0xff, 0xd7 0xff):
# a check of the value whole, as at a PUT, but without the codec's second look, refused
# them read back from disk (a review found it), on every replica at once.
LOOKALIKES = {
    "int": [55039, 55295],  # 0xcd 0xd6 0xff, 0xcd 0xd7 0xff
    "floats": {str(index): random.Random(index).random() * 1e6 for index in range(1000)},
    "bytes": [b"\xd6\xff\x00\x00\x00\x00", {"b": b"\xd7\xff" * 8}],
}
# 1,023 levels, the most a node takes: msgspec's reader of a value's structure recursed,
# and raised RecursionError from about 1,000, failing every key read with it (a review
# found it). Deeper than a client packs (511), so sent as bytes written by hand.
DEEPEST = b"\x91" * 1022 + b"\x90"


def test_values_whose_bytes_look_like_a_timestamp_or_nest_deepest_are_read_back_from_disk(tmp_path):
    node = NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--cache-entries", "0"])
    with node, Client([node.address]) as client:
        for key, value in LOOKALIKES.items():
            client.put(key, value)
        with RawConnection(node.address) as raw:
            assert isinstance(raw.request(Put(1, "deepest", Raw(DEEPEST))), PutReply)
    with node, Client([node.address]) as client:  # restarted: every read comes from the disk
        for key, value in LOOKALIKES.items():
            assert client.get(key) == value, key
        with RawConnection(node.address) as raw:
            reply = raw.request(Get(1, "deepest"))
        assert isinstance(reply, GetReply), reply
        value, depth = reply.value, 1
        while value:
            [value] = value
            depth += 1
        assert (value, depth) == ([], 1023)
    log = node.log()
    assert "damaged_value" not in log and "failed" not in log, log


def test_a_database_truncated_under_a_running_node_is_unavailable_and_clients_read_the_others(tmp_path):
    """A probe truncated a running node's database file in place (its inode unchanged, so
    not taken for a lost file): every read through that node failed INTERNAL, which no
    client retries elsewhere, though the two other nodes held every value. A read SQLite
    cannot make is this node's trouble: UNAVAILABLE, and clients read another node."""
    values = {f"k{number}": f"{number}-" + "v" * 3000 for number in range(60)}
    with LocalCluster(3, data_dir=tmp_path, node_args=["--cache-entries", "0", *READS_ONLY]) as cluster:
        with Client(cluster.endpoints) as client:
            for key, value in values.items():
                client.put(key, value)
        database = cluster["n3"].data_dir / "kvwire.sqlite3"
        with sqlite3.connect(database) as db:  # every page in the file, where the truncation reaches them
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(database, "r+b") as file:
            file.truncate(4096)
        with RawConnection(cluster["n3"].address) as conn:
            replies = [conn.request(Get(number, key, consistency=Consistency.ONE)) for number, key in enumerate(values)]
        refused = [reply for reply in replies if not isinstance(reply, GetReply)]
        assert refused, "no read failed: the truncation did not reach the reads"
        assert all(reply.code == ErrorCode.UNAVAILABLE and "could not read" in reply.message for reply in refused), \
            refused[:3]
        with Client(cluster.endpoints_of("n3", "n1", "n2")) as client:
            for key, value in values.items():
                assert client.get(key) == value
                assert client.get(key, consistency="one") == value


def test_a_value_damaged_on_one_node_is_mended_from_a_peers_copy_of_its_version(tmp_path):
    """Anti-entropy compares tags, and the damaged row's tag is whole: the key stayed
    refused on that node until a write replaced it, one replica short. A read that
    meets the damage now has the node ask its peers for that version's value."""
    with LocalCluster(3, data_dir=tmp_path, node_args=["--cache-entries", "0", *READS_ONLY]) as cluster:
        with Client(cluster.endpoints) as client:
            written = client.put("hit", {"a": [1, 2]})
        cluster.terminate("n3")
        damage_value(cluster["n3"].data_dir, "hit")
        cluster.start("n3").wait_ready()
        with RawConnection(cluster["n3"].address) as conn:
            first = conn.request(Get(1, "hit", consistency=Consistency.ONE))
            assert first.code == ErrorCode.UNAVAILABLE and "damaged on its disk" in first.message, first
            # Each read that meets the damage asks again, so this is also how it waits for n3's links.
            mended = wait_for(lambda: _served(conn, "hit"), timeout=15, what="n3 serving its mended copy")
        assert mended.version == written and mended.value == {"a": [1, 2]}  # that write's value, no new write
        log = cluster["n3"].log()
        assert "event=damaged_value_mended" in log and "mended the damaged value of 'hit'" in log, log[-3000:]
        with sqlite3.connect(cluster["n3"].data_dir / "kvwire.sqlite3") as db:  # on its disk, not only served
            assert db.execute("SELECT value FROM kv WHERE key = 'hit'").fetchone()[0] != b"\xc1"


def _served(conn: RawConnection, key: str):
    reply = conn.request(Get(7, key, consistency=Consistency.ONE))
    return reply if isinstance(reply, GetReply) else None
