"""A node whose disk stops completing writes says so, and refuses writes, until it completes them again.

A real node process on a real file system that really stops: its data
directory is an ext4 file system on a loop device in a mount namespace of the
node's own (``kvwire.testing.disk``), which the test freezes (``fsfreeze``) and
thaws, as a hung SAN or a failing drive holds every write and fsync sent to it.
Before, nothing failed: every write the node coordinated waited on its commit
until it timed out, while its HEALTH, its peers and HAProxy's check all took it
for healthy.
"""

from __future__ import annotations

import contextlib
import re
import time

import pytest

from kvwire import Client
from kvwire.protocol import ErrorCode, ErrorReply, Replicate, Version
from kvwire.protocol.errors import KvwireError, NoQuorumError, UnavailableError
from kvwire.testing import LocalCluster, free_port, resident_bytes, wait_for
from kvwire.testing.disk import NodeOnAFreezableDisk
from kvwire.testing.metrics import scrape, value


def cluster_with_n3_on_a_freezable_disk(tmp_path, stall_timeout: float) -> tuple[LocalCluster, NodeOnAFreezableDisk]:
    cluster = LocalCluster(3, data_dir=tmp_path, sync="full", heartbeat_interval=0.1)
    n3 = cluster.nodes["n3"] = NodeOnAFreezableDisk.like(cluster["n3"])
    n3.extra_args += ["--disk-stall-timeout", str(stall_timeout)]
    return cluster, n3


@contextlib.contextmanager
def n3_on_a_freezable_disk_with_metrics(tmp_path):
    """A running cluster whose n3 is on a freezable disk (a 0.5 s stall limit) and serves
    metrics, its peers UP: the cluster, n3, its metrics address, and clients through n3
    and through n1."""
    cluster, n3 = cluster_with_n3_on_a_freezable_disk(tmp_path, stall_timeout=0.5)
    metrics = f"127.0.0.3:{free_port('127.0.0.3')}"
    n3.extra_args += ["--metrics-listen", metrics]
    with cluster:
        cluster.wait_peers("n3", up=["n1", "n2"], timeout=10.0)
        with Client(n3.address, timeout=5) as through_n3, Client(cluster["n1"].address, timeout=5) as through_n1:
            yield cluster, n3, metrics, through_n3, through_n1


def writable(health: dict, peer: str) -> bool:
    return next(node["writable"] for node in health["cluster"]["nodes"] if node["node_id"] == peer)


def held(client: Client, key: str):
    """The contacted node's own copy of ``key``; None while it has none."""
    try:
        return client.get(key, consistency="one")
    except KeyError:
        return None


def replicates_refused(metrics: str) -> float:
    try:
        return value(scrape(metrics), "kvwire_requests_total", op="replicate", consistency="", code="unavailable")
    except KeyError:
        return 0.0  # none yet


def test_a_node_whose_disk_stops_completing_writes_refuses_them_and_is_taken_out_until_it_completes_them(tmp_path):
    with n3_on_a_freezable_disk_with_metrics(tmp_path) as (cluster, n3, metrics, through_n3, through_n1):
        through_n3.put("before", "kept")
        assert through_n3.health()["storage"]["commit_running_ms"] is None  # no commit between writes
        n3.freeze()
        # n3's copy of this write goes to its disk and stays there: its commit hangs.
        through_n1.put("during", "taken by n1 and n2")
        wait_for(lambda: not through_n3.health()["storage"]["writable"], timeout=5,
                 what="n3 finding its commit stalled")
        health = through_n3.health()
        assert "has not finished after" in health["storage"]["error"], health["storage"]
        assert "the disk is not completing writes" in health["storage"]["error"]
        assert health["storage"]["commit_running_ms"] >= 500
        assert health["storage"]["failed_commits"] == 0  # none failed: it is still running
        assert (health["status"], health["cluster"]["has_quorum"], health["cluster"]["can_accept_writes"]) == (
            "degraded", False, False)
        assert n3.health_exit_status() == 3  # what HAProxy's check and `kvwire-cli health` act on
        # Refused at once, unstarted, so that the client tries another node, instead of
        # a timeout after which it cannot tell whether the write was applied.
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="disk refuses writes") as refused:
            through_n3.put("refused", 1)
        assert time.monotonic() - started < 1.0
        assert refused.value.maybe_applied is False
        assert "request not started: another node can take it" in refused.value.message
        with Client([n3.address, cluster["n1"].address], timeout=5) as failing_over:
            failing_over.put("elsewhere", 2)
        assert through_n3.get("before", consistency="one") == "kept"  # reads go on
        # Its peers hear it in its heartbeat answers and count it out of their majorities.
        wait_for(lambda: not writable(through_n1.health(), "n3"), timeout=5, what="n1 hearing n3's disk stalled")
        health = through_n1.health()
        assert (health["status"], health["cluster"]["has_quorum"], health["cluster"]["healthy_nodes"]) == (
            "degraded", True, 2)
        # Its peers' writes are refused too, not queued behind the held commit: a probe's
        # stalled node held 10,000 of them in memory after 30 s, and its peers' links filled
        # until its heartbeats went unanswered. Its peers hint them, for after the stall.
        refused_before = replicates_refused(metrics)
        for index in range(20):
            through_n1.put(f"written-during:{index}", index)
        # (Not its pending writes: anti-entropy may pull those keys meanwhile, up to 256 queued.)
        assert replicates_refused(metrics) - refused_before >= 20

        n3.thaw()
        wait_for(lambda: through_n3.health()["storage"]["writable"], timeout=10, what="n3 taking writes again")
        health = through_n3.health()
        assert health["storage"]["error"] is None and health["storage"]["failed_commits"] == 0
        assert health["joining"] is False  # its stalled commit did not fail: it lost no tag
        through_n3.put("after", "written")
        # The write its disk held was committed, not lost.
        assert through_n3.get("during", consistency="one") == "taken by n1 and n2"
        wait_for(lambda: writable(through_n1.health(), "n3"), timeout=5, what="n1 hearing n3 takes writes")
        # What its peers hinted reaches it once it takes writes again.
        wait_for(lambda: all(held(through_n3, f"written-during:{index}") == index for index in range(20)),
                 timeout=15, what="n3 receiving what it refused")
    log = n3.log()
    stalled = next(line for line in log.splitlines() if "event=disk_stalled" in line)
    assert "ERROR" in stalled and "storage refuses writes: a group commit to" in stalled, stalled
    writable_again = next(line for line in log.splitlines() if "event=storage_writable" in line)
    assert "the group commit that stalled finished after" in writable_again, writable_again
    assert "peer n3 says its disk refuses writes" in cluster["n1"].log()


def test_a_stalled_node_keeps_nothing_of_the_replicates_it_refuses(tmp_path):
    """A stalled node refused every peer's REPLICATE with the one error of its stall,
    raised again for each: a raise adds to the traceback the exception already has, so
    each refusal kept the frames that raised it alive, with the REPLICATE and its value,
    for as long as the stall lasted (a probe: 1.7 MB a second under load, freed only
    by a full garbage collection after it)."""
    cluster, n3 = cluster_with_n3_on_a_freezable_disk(tmp_path, stall_timeout=0.5)
    value = "x" * 20_000
    with cluster:
        cluster.wait_peers("n3", up=["n1", "n2"], timeout=10.0)
        with Client(cluster["n1"].address, timeout=5) as through_n1, Client(n3.address, timeout=5) as through_n3:
            through_n1.put("before", "kept")
            n3.freeze()
            through_n1.put("during", "held")  # n3's commit of it hangs on the frozen disk
            wait_for(lambda: not through_n3.health()["storage"]["writable"], timeout=5,
                     what="n3 finding its commit stalled")
            with cluster.raw("n3", timeout=15) as link:
                cluster.as_peer("n3", link)

                def refused(first: int, count: int) -> None:
                    link.send(*(Replicate(index, f"refused:{index}", Version(1, "n1"), value, False, None, None)
                                for index in range(first, first + count)))
                    replies = link.receive(count)
                    assert all(type(reply) is ErrorReply and reply.code == ErrorCode.UNAVAILABLE for reply in replies), (
                        {type(reply).__name__ for reply in replies})

                refused(10, 200)  # the node's buffers and caches at their working size
                before = resident_bytes(n3.pid)
                for batch in range(10):
                    refused(1_000 + batch * 200, 200)
                grown = resident_bytes(n3.pid) - before
            # 2,000 refusals of 20 kB values: 40 MB and more kept before.
            assert grown < 10_000_000, f"n3 grew {grown:,} bytes refusing 2,000 REPLICATEs"
            n3.thaw()


def test_a_node_held_with_a_commit_running_does_not_take_it_for_a_stalled_disk(tmp_path):
    """SIGSTOP (a paused VM, an overloaded host) holds the commit's thread with the rest
    of the process: held past the stall timeout, it is not the disk's doing."""
    cluster, n3 = cluster_with_n3_on_a_freezable_disk(tmp_path, stall_timeout=2.5)
    with cluster:
        cluster.wait_peers("n3", up=["n1", "n2"], timeout=10.0)
        with Client(cluster["n1"].address, timeout=5) as through_n1, Client(n3.address, timeout=5) as through_n3:
            through_n1.put("before", "kept")
            n3.freeze()
            through_n1.put("during", "held")  # n3's commit of it starts and hangs on the frozen disk
            wait_for(lambda: through_n3.health()["storage"]["commit_running_ms"] is not None, timeout=5,
                     what="n3's commit waiting on its frozen disk")
            n3.pause()
            # Held longer than the stall timeout: the fault itself, not a wait for a condition.
            time.sleep(3.0)
            n3.thaw()  # the disk is fine again; the commit's thread, stopped, has yet to see it
            n3.resume()
            wait_for(lambda: through_n3.health()["storage"]["commit_running_ms"] is None, timeout=10,
                     what="n3's held commit returning")
            assert through_n3.get("during", consistency="one") == "held"
            assert through_n3.health()["storage"]["writable"] is True
    assert "event=disk_stalled" not in n3.log()
    assert "event=loop_stalled" in n3.log()  # it was held: the node says so, as itself, not its disk


def test_with_two_of_three_disks_stalled_the_third_node_refuses_writes_unstarted(tmp_path):
    """A probe froze n2's and n3's disks: every PUT through n1 was still started, sent to
    them, waited its deadline and failed as maybe applied (3.2 s a call, and each was
    applied after all once the disks came back). It now knows from their heartbeat answers
    that no majority can commit, and refuses at once, applied nowhere."""
    cluster = LocalCluster(3, data_dir=tmp_path, sync="full", heartbeat_interval=0.1)
    for node_id in ("n2", "n3"):
        stalling = cluster.nodes[node_id] = NodeOnAFreezableDisk.like(cluster[node_id])
        stalling.extra_args += ["--disk-stall-timeout", "0.5"]
    with cluster:
        cluster.wait_peers("n1", up=["n2", "n3"], timeout=10.0)
        with Client(cluster["n1"].address, timeout=5) as through_n1:
            through_n1.put("before", "kept")
            for node_id in ("n2", "n3"):
                cluster[node_id].freeze()
            with pytest.raises(KvwireError):  # their commits of it hang: no majority holds it in time
                through_n1.put("during", "stuck")
            wait_for(lambda: not writable(through_n1.health(), "n2") and not writable(through_n1.health(), "n3"),
                     timeout=5, what="n1 hearing both disks stalled")
            started = time.monotonic()
            with pytest.raises(NoQuorumError) as refused:
                through_n1.put("refused", 1)
            assert time.monotonic() - started < 1.0
            assert refused.value.maybe_applied is False
            assert ("request not started: no node can now: 0 of the other 2 nodes can commit a write"
                    in refused.value.message), refused.value.message
            assert through_n1.get("before", consistency="one") == "kept"
            for node_id in ("n2", "n3"):
                cluster[node_id].thaw()
            wait_for(lambda: through_n1.health()["cluster"]["has_quorum"], timeout=10, what="n1's peers taking writes")
            through_n1.put("after", "written")
            with pytest.raises(KeyError):
                through_n1.get("refused")  # applied nowhere
            assert through_n1.get("after") == "written"


def test_a_node_refusing_writes_on_a_full_disk_whose_disk_then_hangs_is_declared_stalled(tmp_path):
    """A failed commit had it refusing writes; its next probe commit then hung on a disk
    that stopped completing writes, and the stall check, skipped while a failed commit's
    error stood, never declared it: its peers' REPLICATEs queued behind the probe,
    unanswered, as during a stall before stalls were refused (carried since note 12)."""
    with n3_on_a_freezable_disk_with_metrics(tmp_path) as (cluster, n3, metrics, through_n3, through_n1):
        through_n3.put("before", "kept")
        n3.fill_disk()
        with pytest.raises(KvwireError, match="storage write failed"):
            through_n3.put("during", b"x" * 1_000_000)
        full = through_n3.health()["storage"]["error"]
        assert full is not None and "has not finished" not in full
        n3.freeze()  # its probe commit, once a second, now hangs
        wait_for(lambda: "has not finished after" in (through_n3.health()["storage"]["error"] or ""), timeout=10,
                 what="n3 finding its probe stalled")
        assert f"(refusing writes already: {full})" in through_n3.health()["storage"]["error"]
        refused_before = replicates_refused(metrics)
        for index in range(20):
            through_n1.put(f"written-during:{index}", index)
        assert replicates_refused(metrics) - refused_before >= 20  # refused at once, not queued
        n3.thaw()  # the probe returns, and fails: the disk is still full
        wait_for(lambda: through_n3.health()["storage"]["error"] == full, timeout=10,
                 what="n3 refusing writes for its full disk again, not for a stall")
        n3.free_disk()
        wait_for(lambda: through_n3.health()["storage"]["writable"], timeout=10, what="n3 taking writes again")
        wait_for(lambda: all(held(through_n3, f"written-during:{index}") == index for index in range(20)),
                 timeout=20, what="n3 receiving what it refused")
    log = n3.log().splitlines()
    assert "refusing writes already" in next(line for line in log if "event=disk_stalled" in line)
    # The stall's end is logged too, and the recovery counts the commit that failed before it.
    assert any("the probe commit to" in line and "that stalled returned after" in line
               and "and failed: " in line for line in log), log
    recovered = next(line for line in log if "event=storage_writable" in line)
    assert re.search(r"after [1-9]\d* group commits failed", recovered), recovered  # it said 0
