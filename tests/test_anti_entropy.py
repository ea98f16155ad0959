"""Anti-entropy on real nodes: a node that lost its disk, or missed writes no hint
recorded, holds every live key again without any key being read.

Reads here are ``consistency=one`` GETs of a node's own copy, which repair
nothing (docs/design.md 1.4); so the only way the data can come back is the
background comparison (DIGESTS, SYNC, then REPLICATE and FETCH).
"""

from __future__ import annotations

import re

import pytest

from kvwire import Client, NoQuorumError
from kvwire.client import RetryPolicy
from kvwire.testing import LocalCluster, wait_for
from kvwire.testing.data import local_copies, value_for, write_keys

# Fast rounds, so tests wait seconds rather than the default's tens of seconds.
REPAIR_ARGS = ["--repair-interval", "0.2"]


def _repair_of(cluster, node_id, peer):
    nodes = cluster.health(node_id)["cluster"]["nodes"]
    return next(entry for entry in nodes if entry["node_id"] == peer)


def test_a_node_that_lost_its_disk_holds_every_live_key_again_without_reads(tmp_path):
    keys = [f"ae/{i}" for i in range(3000)]
    deleted = keys[::10]
    with LocalCluster(3, data_dir=tmp_path, node_args=REPAIR_ARGS) as cluster:
        assert write_keys(cluster.endpoints, keys) == len(keys)
        with Client(cluster.endpoints) as client:
            for key in deleted:
                client.delete(key)
        live = {key: value_for(key, 100) for key in keys if key not in set(deleted)}

        cluster.wipe("n3")
        cluster["n3"].extra_args.append("--join")  # as docs/operations.md says to, for a lost disk
        cluster.start("n3")
        cluster.wait_ready("n3")
        assert len(local_copies(cluster["n3"].address, keys[:50])) < 50  # really empty at first

        # Every live key, and no deleted one back (n3 holds their tombstones too:
        # a joining node pulls them).
        wait_for(lambda: local_copies(cluster["n3"].address, keys) == live, timeout=60,
                 what="n3 holding every live key again")
        # Joined: caught up from both peers, it takes part in majorities again.
        wait_for(lambda: not cluster.health("n3")["joining"], timeout=30, what="n3 joined")
        log = cluster["n3"].log()
        assert "joining the cluster" in log and "joined: caught up from every peer" in log
        # HEALTH shows the rounds that did it: n3 pulled every key in its own rounds.
        moved = sum(_repair_of(cluster, "n3", peer)["repair"]["keys_received_total"] for peer in ("n1", "n2"))
        assert moved >= len(live)
        # And every round with n3 comes to an end, with nothing left to move.
        for node_id, peer in (("n3", "n1"), ("n3", "n2"), ("n1", "n3"), ("n2", "n3")):
            def settled():
                repair = _repair_of(cluster, node_id, peer)["repair"]
                done = repair["last_completed_s_ago"] is not None and repair["last_completed_s_ago"] < 1.0
                return repair if done and repair["differing_buckets"] == 0 else None

            repair = wait_for(settled, timeout=20, what=f"{node_id} finding {peer} in step")
            assert repair["rounds"] >= 1 and repair["keys_peer_lacks"] == repair["keys_received"] == 0


def test_writes_missed_past_the_hint_limit_reach_the_node_through_anti_entropy(tmp_path):
    keys = [f"hl/{i}" for i in range(200)]
    with LocalCluster(3, data_dir=tmp_path, node_args=[*REPAIR_ARGS, "--hint-limit", "20"]) as cluster:
        cluster.kill("n3")
        cluster.wait_peers("n1", down=["n3"])
        cluster.wait_peers("n2", down=["n3"])
        write_keys(cluster.endpoints_of("n1", "n2"), keys)
        for node_id in ("n1", "n2"):
            entry = _repair_of(cluster, node_id, "n3")
            if entry["hinting_stopped"] is not None:  # a node that coordinated more than 20 of them
                assert "hint_limit" in entry["hinting_stopped"] and entry["pending_hints"] == 0
        stopped = [node_id for node_id in ("n1", "n2") if _repair_of(cluster, node_id, "n3")["hinting_stopped"]]
        assert stopped, "200 writes through two nodes must pass a limit of 20 hints on one of them"
        assert "stopped hinting peer n3" in cluster[stopped[0]].log()

        cluster.start("n3")
        cluster.wait_ready("n3")
        wait_for(lambda: len(local_copies(cluster["n3"].address, keys)) == len(keys), timeout=30,
                 what="n3 holding every key it missed")
        assert local_copies(cluster["n3"].address, keys) == {key: value_for(key, 100) for key in keys}
        # Back UP, the peer is hinted again.
        assert all(_repair_of(cluster, node_id, "n3")["hinting_stopped"] is None for node_id in ("n1", "n2"))


def test_hints_older_than_the_max_age_are_dropped_and_said_so(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, node_args=[*REPAIR_ARGS, "--hint-max-age", "0.5"]) as cluster:
        cluster.kill("n3")
        cluster.wait_peers("n1", down=["n3"])
        with Client(cluster.endpoints_of("n1")) as client:
            client.put("aged", b"v")
        assert _repair_of(cluster, "n1", "n3")["pending_hints"] == 1
        # The hint sweep (every 2 s) finds it too old.
        entry = wait_for(lambda: (lambda e: e if e["hinting_stopped"] else None)(_repair_of(cluster, "n1", "n3")),
                         timeout=10, what="n1 to stop hinting n3")
        assert "hint_max_age" in entry["hinting_stopped"] and entry["pending_hints"] == 0
        cluster.start("n3")
        cluster.wait_ready("n3")
        wait_for(lambda: local_copies(cluster["n3"].address, ["aged"]) == {"aged": b"v"}, timeout=20,
                 what="n3 getting the key through anti-entropy")


@pytest.mark.parametrize("option, value, message", [
    ("--repair-interval", "0", "--repair-interval"),
    ("--repair-rate", "0", "--repair-rate"),
    ("--hint-limit", "-1", "--hint-limit"),
    ("--hint-max-age", "nan", "--hint-max-age must be a positive, finite number"),
])
def test_bad_repair_and_hint_options_are_refused_with_a_clear_line(option, value, message, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "kvwire", "serve", "--data-dir", str(tmp_path / "d"), option, value],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_node_replaced_under_a_new_id_is_filled_and_the_old_ones_hints_dropped(tmp_path):
    """docs/operations.md "Replacing a node": n3 is gone for good; n4 starts empty
    with --cluster n1,n2,n4, then n1 and n2 are restarted one at a time with that
    list. They drop their hints for n3 (no longer a member), and anti-entropy
    fills n4 with every key, without reads."""
    from kvwire.testing import NodeProcess, free_port

    keys = [f"rp/{i}" for i in range(300)]
    with LocalCluster(3, data_dir=tmp_path, node_args=REPAIR_ARGS) as cluster:
        write_keys(cluster.endpoints, keys[:200])
        cluster.kill("n3")
        cluster.wait_peers("n1", down=["n3"])
        write_keys(cluster.endpoints_of("n1", "n2"), keys[200:])  # n3 missed these: hints for it
        hinting = [node_id for node_id in ("n1", "n2") if _repair_of(cluster, node_id, "n3")["pending_hints"]]
        assert hinting

        n4_port = free_port("127.0.0.4")
        old = cluster.members
        members = ",".join(part for part in old.split(",") if not part.startswith("n3=")) + f",n4=127.0.0.4:{n4_port}"
        n4_args = [members if arg == old else arg for arg in cluster["n1"].extra_args] + ["--join"]
        with NodeProcess("n4", data_dir=tmp_path / "n4", host="127.0.0.4", port=n4_port, extra_args=n4_args) as n4:
            for node_id in ("n1", "n2"):
                node = cluster[node_id]
                node.extra_args = [members if arg == old else arg for arg in node.extra_args]
                cluster.restart(node_id)
                if node_id in hinting:  # its hints for n3 were reloaded at start, and dropped
                    line = next(line for line in node.log().splitlines() if "stopped hinting peer n3" in line)
                    assert "it is not a member of this cluster; its hints are dropped" in line
                    assert "once it is back" not in line  # it will not be
            expected = {key: value_for(key, 100) for key in keys}
            wait_for(lambda: local_copies(n4.address, keys) == expected, timeout=30,
                     what="n4 holding every key, filled by anti-entropy")
            health = cluster.health("n1")
            assert sorted(entry["node_id"] for entry in health["cluster"]["nodes"]) == ["n2", "n4"]


def test_a_joining_node_takes_no_part_in_majorities_until_caught_up_from_every_peer(tmp_path):
    """--join on a new data directory: while n3 catches up, it refuses LOOKUP and
    FETCH (its empty answers could hide a write held by one peer), and what it
    coordinates asks every node. With n2 down it cannot catch up from every peer,
    so it stays joining, and n1 alone (a minority of up-to-date nodes) cannot
    make a majority with it."""
    from kvwire.protocol import ErrorCode, ErrorReply, Fetch, Ping, Pong

    with LocalCluster(3, data_dir=tmp_path, node_args=REPAIR_ARGS) as cluster:
        write_keys(cluster.endpoints, [f"j/{i}" for i in range(100)])
        with Client(cluster.endpoints) as client:
            deleted = client.delete("j/0")
        cluster.kill("n2")
        cluster.wipe("n3")
        cluster["n3"].extra_args.append("--join")
        cluster.start("n3")
        cluster.wait_ready("n3", peers=False)
        cluster.wait_peers("n3", up=["n1"])
        assert cluster.health("n3")["joining"] is True
        with cluster.raw("n3") as conn:
            # A client's PONG stays bare (HAProxy's check matches its bytes); a peer's says joining.
            assert conn.request(Ping(1)) == Pong(1)
            cluster.as_peer("n3", conn)
            assert conn.request(Ping(3)) == Pong(3, True)
            refused = conn.request(Fetch(2, "j/1"))
        assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.UNAVAILABLE
        assert "joining the cluster" in refused.message
        refuses_writes(cluster, "n1", "j/new")  # n1 + a joining n3 is no majority
        start_until_joined(cluster, "n2")
        assert len(local_copies(cluster["n3"].address, [f"j/{i}" for i in range(1, 100)])) == 99
        # Tombstones are pulled too (a joining node's digests cover them): n3 holds
        # j/0's, so an old value of it that some replica still held could not come back.
        with cluster.raw("n3") as conn:
            cluster.as_peer("n3", conn)
            reply = conn.request(Fetch(3, "j/0"))
        assert reply.deleted and reply.version == deleted


def test_join_on_a_directory_used_before_still_joins(tmp_path):
    """n3's disk is lost and it is started once without --join by mistake, then with it:
    it joins all the same, and says so. With n1 down it cannot catch up from every peer,
    so it stays joining, and n2 alone with it is no majority."""
    with LocalCluster(3, data_dir=tmp_path, node_args=REPAIR_ARGS) as cluster:
        write_keys(cluster.endpoints, [f"w/{i}" for i in range(20)])
        assert cluster.terminate("n3") == 0
        cluster.wipe("n3")
        cluster.start("n3")
        cluster.wait_ready("n3", peers=False)
        assert cluster.terminate("n3") == 0
        cluster.kill("n1")
        cluster["n3"].extra_args.append("--join")
        starts_joining_without_a_majority(cluster, "a data directory this node has used but never joined with: "
                                          "joining now", key="w/new")
        # Once it has joined, --join left in its options is not needed, and ignored: with
        # n1 down again, a clean restart of n3 votes at once beside n2.
        start_until_joined(cluster, "n1")
        cluster.kill("n1")
        assert cluster.terminate("n3") == 0
        cluster.start("n3")
        cluster.wait_ready("n3", peers=False)
        assert cluster.health("n3")["joining"] is False
        assert "--join ignored" in cluster["n3"].log()
        cluster.wait_peers("n2", up=["n3"], down=["n1"])
        with Client(cluster.endpoints_of("n2"), retry=RetryPolicy(attempts=1)) as client:
            client.put("w/new", b"y")
            assert client.get("w/new") == b"y"


def test_a_database_file_restored_empty_joins_without_join_and_cannot_vote_with_nothing(tmp_path):
    """A backup copied short (0 bytes) and restored in place of n3's directory: started
    with its usual options, n3 took itself for a new node and voted with nothing. With
    n1 down, n2 and n3 read a stale value by quorum and acknowledged a write that n1's
    return then lost (a lifecycle probe's finding). Now it joins: with n1 down it stays
    joining, n2 alone with it is no majority, and once n1 is back it holds the key."""
    with LocalCluster(3, data_dir=tmp_path, node_args=REPAIR_ARGS) as cluster:
        with Client(cluster.endpoints) as client:
            client.put("e/x", b"v0")
        assert cluster.terminate("n3") == 0
        cluster.wipe("n3")
        cluster["n3"].data_dir.mkdir()
        (cluster["n3"].data_dir / "kvwire.sqlite3").write_bytes(b"")
        cluster.kill("n1")
        starts_joining_without_a_majority(cluster, "event=join_unclaimed_database", key="e/x")
        start_until_joined(cluster, "n1")
        assert local_copies(cluster["n3"].address, ["e/x"]) == {"e/x": b"v0"}


def test_join_in_every_nodes_options_as_the_deploy_files_give_it_forms_a_new_cluster_and_a_wiped_restart_loses_nothing(tmp_path):
    """deploy/kvwire.service and deploy/Dockerfile give every node --join (KVWIRE_JOIN=1), since
    systemd restarts a node on an empty StateDirectory without a person. Without it this
    sequence lost an acknowledged write: n3, wiped and restarted while n1 was away, voted at
    once; beside n2 (which had missed the last writes) it acknowledged a PUT of L minted below
    the version n1 alone still held, which won everywhere once n1 was back. A new cluster of such nodes takes
    writes once every member has started: each joins from the others."""
    with LocalCluster(3, data_dir=tmp_path, node_args=[*REPAIR_ARGS, "--join"]) as cluster:
        wait_for(lambda: not any(cluster.health(node)["joining"] for node in ("n1", "n2", "n3")), timeout=30,
                 what="a new cluster's nodes, each started with --join, joined from one another")
        assert "joined: caught up from every peer" in cluster["n1"].log()
        assert cluster.terminate("n2") == 0
        with Client(cluster.endpoints_of("n1"), retry=RetryPolicy(attempts=1)) as client:
            for value in ("a", "b", "old"):
                client.put("L", value)  # on n1 and n3 only
        cluster.kill("n3")
        cluster.wipe("n3")
        assert cluster.terminate("n1") == 0  # the only other copy of "old" is away for now
        cluster.start("n3")  # as systemd's Restart= would, with the unit's --join
        cluster.wait_ready("n3", peers=False)
        cluster.start("n2")
        cluster.wait_ready("n2", peers=False)
        cluster.wait_peers("n2", up=["n3"], down=["n1"])
        assert cluster.health("n3")["joining"] is True
        refuses_writes(cluster, "n2", "L")  # n2 + an empty, joining n3 is no majority: nothing acknowledged to lose
        start_until_joined(cluster, "n1")
        with Client(cluster.endpoints) as client:
            assert client.get("L") == "old"
        assert local_copies(cluster["n3"].address, ["L"]) == {"L": "old"}


@pytest.mark.parametrize("stop", ["kill -9", "clean stop"])
def test_a_node_killed_catches_up_from_every_peer_before_it_votes_and_one_stopped_cleanly_does_not(tmp_path, stop):
    """A write's local commit overlaps its REPLICATEs, so a node killed mid-write may
    have sent a tag it never committed. Restarted after kill -9, n3 votes in no
    majority until it has caught up from every peer: with n1 down it cannot, and
    n2 alone with it is no majority. After a clean stop (SIGTERM) nothing was lost,
    and n2 and n3 carry writes at once."""
    from kvwire.protocol import ErrorCode, ErrorReply, Fetch

    with LocalCluster(3, data_dir=tmp_path, node_args=REPAIR_ARGS) as cluster:
        write_keys(cluster.endpoints, [f"u/{i}" for i in range(20)])
        if stop == "kill -9":
            cluster.kill("n3")
        else:
            assert cluster.terminate("n3") == 0
        cluster.kill("n1")
        cluster.start("n3")
        cluster.wait_ready("n3", peers=False)
        cluster.wait_peers("n3", up=["n2"], down=["n1"])
        cluster.wait_peers("n2", up=["n3"], down=["n1"])
        with Client(cluster.endpoints_of("n2"), retry=RetryPolicy(attempts=1)) as client:
            if stop == "clean stop":
                assert cluster.health("n3")["joining"] is False
                client.put("u/new", b"x")
                assert client.get("u/new") == b"x"
                assert quorum_as_seen_by(cluster, "n2") == (True, 2, False)
                with Client(cluster.endpoints_of("n3"), retry=RetryPolicy(attempts=1)) as through_n3:
                    assert through_n3.put("u/new", b"z").node in ("n3", "!n3")  # nothing it sent was lost
                return
            assert cluster.health("n3")["joining"] is True
            assert "its last run did not stop cleanly" in cluster["n3"].log()
            with pytest.raises(NoQuorumError):
                client.put("u/new", b"x")  # n2 + a catching-up n3 is no majority
        # n2 says so too: n3 is UP, but its heartbeat answers say it is joining.
        wait_for(lambda: quorum_as_seen_by(cluster, "n2") == (False, 1, True), timeout=10,
                 what="n2's health leaving the joining n3 out of its quorum")
        assert "peer n3 is joining" in cluster["n2"].log()
        assert "quorum lost: 1 of 3 nodes UP" in cluster["n2"].log()
        with cluster.raw("n3") as conn:
            cluster.as_peer("n3", conn)
            refused = conn.request(Fetch(2, "u/1"))
            assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.UNAVAILABLE
            pulled = conn.request(Fetch(3, "u/1", repair=True))  # anti-entropy's pull is answered
            assert not isinstance(pulled, ErrorReply) and pulled.value == value_for("u/1", 100)
        start_until_joined(cluster, "n1")
        wait_for(lambda: quorum_as_seen_by(cluster, "n2") == (True, 3, False), timeout=10,
                 what="n2 counting n3 again once it has joined")
        assert "peer n3 has joined" in cluster["n2"].log()
        with Client(cluster.endpoints_of("n3"), retry=RetryPolicy(attempts=1)) as client:
            # Under a new incarnation: a REPLICATE it sent before the kill may still
            # be on its way, and no tag it mints now may equal one (core/minter.py).
            minted = client.put("u/new", b"y").node
            assert client.get("u/new") == b"y"
        assert re.fullmatch(r"!?n3@[a-z2-7]{8}", minted), minted  # proposed (!) or not: minter.py
        assert f"event=new_incarnation minter={minted.removeprefix('!')}" in cluster["n3"].log()


def refuses_writes(cluster, node_id: str, key: str) -> None:
    """A PUT through ``node_id`` alone, not retried elsewhere, answers NO_QUORUM."""
    with Client(cluster.endpoints_of(node_id), retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(NoQuorumError):
            client.put(key, b"x")


def starts_joining_without_a_majority(cluster, log_says: str, *, key: str) -> None:
    """Start n3, with n1 down: it is joining and says why, and n2 + a joining n3 is no majority."""
    cluster.start("n3")
    cluster.wait_ready("n3", peers=False)
    assert cluster.health("n3")["joining"] is True
    assert log_says in cluster["n3"].log()
    cluster.wait_peers("n2", up=["n3"], down=["n1"])
    refuses_writes(cluster, "n2", key)


def start_until_joined(cluster, node_id: str, joining: str = "n3") -> None:
    """Start ``node_id`` and wait until ``joining``, which needed it, has caught up from every peer."""
    cluster.start(node_id)
    cluster.wait_ready(node_id)
    wait_for(lambda: not cluster.health(joining)["joining"], timeout=30, what=f"{joining} joined once {node_id} was back")


def quorum_as_seen_by(cluster, node_id: str, peer: str = "n3") -> tuple[bool, int, bool]:
    """``node_id``'s HEALTH: whether it has quorum, the nodes it counts, and whether ``peer`` is joining."""
    report = cluster.health(node_id)["cluster"]
    [entry] = [entry for entry in report["nodes"] if entry["node_id"] == peer]
    return report["has_quorum"], report["healthy_nodes"], entry["joining"]


def test_a_node_restarted_after_kill_9_pages_only_the_buckets_that_differ(tmp_path):
    """Restarted after kill -9, n3 joins (docs/design.md 1.9): with each peer it
    compares digests that cover tombstones, and pages through only the buckets
    that differ, not all 1,024. Keys written and deleted while it was down are
    among those, and it comes to hold every one, tombstones too."""
    from kvwire.protocol import Fetch

    with LocalCluster(3, data_dir=tmp_path, node_args=REPAIR_ARGS) as cluster:
        keys = [f"k9/{i}" for i in range(300)]
        write_keys(cluster.endpoints, keys)
        expected = {key: value_for(key, 100) for key in keys}
        wait_for(lambda: local_copies(cluster["n3"].address, keys) == expected, timeout=10,
                 what="n3 holding every key before it is killed")
        cluster.kill("n3")
        cluster.wait_peers("n1", down=["n3"])
        with Client(cluster.endpoints_of("n1", "n2")) as client:
            client.put("k9/new", b"x")
            client.put("k9/gone", b"y")
            deleted = client.delete("k9/gone")
        cluster.start("n3")
        cluster.wait_ready("n3", peers=False)
        assert "its last run did not stop cleanly" in cluster["n3"].log()
        cluster.wait_caught_up("n3")
        for peer in ("n1", "n2"):
            repair = _repair_of(cluster, "n3", peer)["repair"]
            # At most the buckets of the two keys written while it was down, and of a
            # write the peer's hints were still delivering: not every bucket.
            assert repair["rounds"] >= 1 and repair["differing_buckets"] <= 4, (peer, repair)
        assert local_copies(cluster["n3"].address, ["k9/new"]) == {"k9/new": b"x"}
        with cluster.raw("n3") as conn:
            cluster.as_peer("n3", conn)
            reply = conn.request(Fetch(3, "k9/gone", repair=True))
        assert reply.deleted and reply.version == deleted


def test_a_node_with_peers_indexes_its_keys_before_it_listens(tmp_path):
    """Anti-entropy's bucket index is a pass over every key (about 1.5 s a million). Built
    at the first round, it held the event loop past the failure timeout: every node of a
    restarted 1M-key cluster marked its peers DOWN and lost quorum. Built before the node
    listens, it holds up nobody."""
    keys = [f"index/{i}" for i in range(2000)]
    with LocalCluster(3, data_dir=tmp_path) as cluster:
        assert write_keys(cluster.endpoints, keys) == len(keys)
        wait_for(lambda: cluster.health("n2")["keys"] == len(keys), timeout=15, what="n2 holding every key")
        cluster.restart("n2")
        log = cluster["n2"].log()
    restarted = log[log.rindex("opened "):]
    indexed = re.search(r"indexed (\d+) keys for anti-entropy in [\d.]+ s", restarted)
    assert indexed is not None, restarted
    assert int(indexed.group(1)) == len(keys)
    assert indexed.start() < restarted.index("listening on")
