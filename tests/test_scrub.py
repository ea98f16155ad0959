"""The background scrub finds a value damaged on a node's disk that nothing reads, and mends it.

Before, a damaged value was found only by a read of its key: one no one read
stayed damaged on that node, a replica short, and anti-entropy, comparing
whole version tags, never saw it. Real nodes, a real SQLite file changed
between two runs of a node, as a disk's bit rot or a stray write changes it.
"""

from __future__ import annotations

import re
import sqlite3

from kvwire import Client
from kvwire.testing import LocalCluster, NodeProcess, free_port, wait_for
from kvwire.testing.data import damage_value
from kvwire.testing.metrics import scrape, value

def stored(data_dir, key: str) -> bytes:
    with sqlite3.connect(f"file:{data_dir / 'kvwire.sqlite3'}?mode=ro", uri=True) as db:
        return db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()[0]


def metric(address: str, name: str) -> float:
    return value(scrape(address), name)


def test_the_scrub_mends_a_value_damaged_on_one_node_that_nothing_reads(tmp_path):
    metrics = f"127.0.0.3:{free_port('127.0.0.3')}"
    with LocalCluster(3, data_dir=tmp_path) as cluster:
        with Client(cluster.endpoints) as client:
            for index in range(300):
                client.put(f"key:{index:04d}", {"index": index, "pad": "x" * 50})
        cluster.terminate("n3")
        whole = stored(cluster["n3"].data_dir, "key:0150")
        for key in ("key:0007", "key:0150"):
            damage_value(cluster["n3"].data_dir, key)
        # Damage to the row's type byte: a number where bytes were. It failed the whole
        # page, so the scrub stopped there for good (a review).
        damage_value(cluster["n3"].data_dir, "key:0200", value=42)
        cluster["n3"].extra_args += ["--metrics-listen", metrics]
        cluster.start("n3").wait_ready()
        # No client reads them: the scrub finds both, and n3 takes its peers' copies of those versions.
        wait_for(lambda: stored(cluster["n3"].data_dir, "key:0007") != b"\xc1"
                 and stored(cluster["n3"].data_dir, "key:0150") != b"\xc1"
                 and stored(cluster["n3"].data_dir, "key:0200") != 42, timeout=20,
                 what="n3's scrub mending the three damaged values")
        assert stored(cluster["n3"].data_dir, "key:0150") == whole
        assert metric(metrics, "kvwire_scrub_damaged_total") == 3
        wait_for(lambda: metric(metrics, "kvwire_scrub_passes_total") >= 1, timeout=10, what="a whole pass")
        assert metric(metrics, "kvwire_scrub_values_checked_total") >= 300
        with Client(cluster["n3"].address) as through_n3:
            assert through_n3.get("key:0150", consistency="one") == {"index": 150, "pad": "x" * 50}
    log = cluster["n3"].log()
    assert len(re.findall(r"event=damaged_value(?!_)", log)) == 3, log
    assert log.count("event=damaged_value_mended") == 3, log
    assert "damaged: stored as integer, not bytes" in log, log
    # The second run's first pass (the first run's log is in the file too), at WARNING for its damage.
    first_pass = [line for line in log.splitlines() if "scrub: pass 1 over" in line][-1]
    assert "WARNING" in first_pass and "checked 300 values" in first_pass and "3 damaged" in first_pass, first_pass


def test_a_lone_node_scrubbing_says_once_that_no_peer_can_mend_a_damaged_value(tmp_path):
    node = NodeProcess("n1", data_dir=tmp_path / "n1")
    with node, Client(node.address) as client:
        client.put("hit", "value")
        client.put("whole", "kept")
    damage_value(node.data_dir, "hit")
    with node:
        wait_for(lambda: "event=damaged_value_unmended" in node.log(), timeout=10, what="the scrub finding it")
        with Client(node.address) as client:
            assert client.get("whole") == "kept"
    log = node.log()
    assert len(re.findall(r"event=damaged_value(?!_)", log)) == 1 and "damaged: not one msgpack value" in log, log
    assert "Traceback" not in log


def test_a_scrub_rate_of_0_turns_it_off(tmp_path):
    node = NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--scrub-rate", "0"])
    with node, Client(node.address) as client:
        client.put("hit", "value")
    damage_value(node.data_dir, "hit")
    metrics = f"127.0.0.1:{free_port()}"
    node.extra_args += ["--metrics-listen", metrics]
    with node:
        wait_for(lambda: metric(metrics, "kvwire_group_commit_running_seconds") == 0, timeout=5, what="metrics")
        assert metric(metrics, "kvwire_scrub_values_checked_total") == 0
    assert "event=damaged_value" not in node.log()
