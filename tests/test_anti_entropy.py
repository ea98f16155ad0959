"""Anti-entropy on real nodes: a node that lost its disk, or missed writes no hint
recorded, holds every live key again without any key being read.

Reads here are ``consistency=one`` GETs of a node's own copy, which repair
nothing (docs/design.md 1.4); so the only way the data can come back is the
background comparison (DIGESTS, SYNC, then REPLICATE and FETCH).
"""

from __future__ import annotations

import pytest

from kvwire import Client
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
        cluster.start("n3")
        cluster.wait_ready("n3")
        assert len(local_copies(cluster["n3"].address, keys[:50])) < 50  # really empty at first

        def refilled() -> bool:
            return cluster.health("n3")["keys"] >= len(live)

        wait_for(refilled, timeout=60, what="n3 holding every live key again")
        assert local_copies(cluster["n3"].address, keys) == live  # no deleted key came back
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
    ("--hint-max-age", "nan", "hint_max_age must be a positive, finite number"),
])
def test_bad_repair_and_hint_options_are_refused_with_a_clear_line(option, value, message, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "kvwire", "serve", "--data-dir", str(tmp_path / "d"), option, value],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
