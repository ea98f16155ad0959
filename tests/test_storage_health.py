"""A node whose disk stops taking writes says so in HEALTH until the disk recovers (issue 11, section 5).

A real node process on a real file system that really fills up: its data
directory is a small tmpfs in a mount namespace of the node's own
(``kvwire.testing.disk``), which the test fills and empties, as a disk that
runs full and is cleaned up. Nothing outside changes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from kvwire import Client
from kvwire.protocol.errors import InternalServerError, NoQuorumError, UnavailableError
from kvwire.testing import NodeProcess, wait_for
from kvwire.testing.disk import NodeOnItsOwnDisk


@pytest.fixture
def node(tmp_path):
    with NodeOnItsOwnDisk("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "normal"]) as started:
        yield started


def test_a_node_whose_disk_refuses_writes_is_unhealthy_until_it_takes_them_again(node):
    with Client(node.address, timeout=5) as client:
        client.put("before", "kept")
        health = client.health()
        assert health["storage"] == {"writable": True, "error": None, "failed_commits": 0, "commit_running_ms": None}
        assert health["cluster"]["has_quorum"] is True

        node.fill_disk()
        with pytest.raises(InternalServerError, match="storage write failed"):
            client.put("during", b"x" * 1_000_000)  # more than the write-ahead log has room for
        health = client.health()  # well within the second before the node's first probe
        assert health["storage"]["writable"] is False and "full" in health["storage"]["error"]
        assert (health["status"], health["cluster"]["has_quorum"], health["cluster"]["can_accept_writes"]) == (
            "unavailable", False, False)
        assert health["cluster"]["healthy_nodes"] == 0  # it does not count itself
        assert node.health_exit_status() == 3  # what a load balancer's check and `kvwire-cli health` act on
        assert client.get("before") == "kept"  # reads still served

        node.free_disk()
        # No write needed: the node's own probe commit finds the disk writable again.
        wait_for(lambda: client.health()["storage"]["writable"], timeout=5, what="the node seeing its disk writable")
        health = client.health()
        assert health["cluster"]["has_quorum"] is True and health["status"] == "healthy"
        assert health["storage"]["failed_commits"] >= 1
        client.put("after", b"x" * 1_000_000)
        assert (client.get("before"), len(client.get("after"))) == ("kept", 1_000_000)
    log = node.log()
    assert "storage refuses writes" in log and "storage takes writes again" in log
    # As docs/operations.md names them, for an alert on the log (an operations probe found neither).
    assert "event=storage_write_failed" in log and "event=storage_writable" in log, log


def test_in_a_cluster_a_node_whose_disk_refuses_writes_is_taken_out_of_rotation_though_its_peers_are_up(tmp_path):
    """Both peers UP: it and they are a majority by count, but every write it coordinates
    commits on its own disk too and fails. An independent check found it still said
    has_quorum true, so HAProxy kept it in rotation and a third of PUTs failed."""
    from kvwire.testing import LocalCluster

    cluster = LocalCluster(3, data_dir=tmp_path, sync="normal")
    n3 = cluster.nodes["n3"] = NodeOnItsOwnDisk.like(cluster["n3"])
    with cluster:
        cluster.wait_peers("n3", up=["n1", "n2"], timeout=10.0)
        with Client(n3.address, timeout=5) as client:
            client.put("before", "kept")
            n3.fill_disk()
            with pytest.raises(InternalServerError, match="storage write failed"):
                client.put("during", b"x" * 1_000_000)
            # Known to refuse writes now: a write is refused before it starts, so that
            # a client that knows other nodes moves on (a storage probe found every
            # write through such a node failing as INTERNAL though its peers took it).
            with pytest.raises(UnavailableError, match="disk refuses writes") as refused:
                client.put("refused", 1)
            assert refused.value.maybe_applied is False
            assert "request not started: another node can take it" in refused.value.message
            with Client([n3.address, cluster["n1"].address], timeout=5) as failing_over:
                failing_over.put("elsewhere", 2)
                failing_over.delete("elsewhere")
            health = client.health()
            assert health["storage"]["writable"] is False
            assert (health["status"], health["cluster"]["has_quorum"], health["cluster"]["can_accept_writes"],
                    health["cluster"]["healthy_nodes"]) == ("degraded", False, False, 2)
            assert n3.health_exit_status() == 3  # what HAProxy's check and `kvwire-cli health` act on
            assert client.get("before") == "kept"
            assert cluster.health("n1")["cluster"]["has_quorum"] is True  # its peers take writes
            n3.free_disk()
            wait_for(lambda: client.health()["cluster"]["has_quorum"], timeout=5, what="n3 taking writes again")
            # Healthy once it has caught up from its peers: the failed PUT's tag went out to
            # them while its own commit failed, so it votes again only then (docs/design.md 1.2).
            wait_for(lambda: client.health()["status"] == "healthy", timeout=15, what="n3 voting again")
    # Its own log says so, as its HEALTH and its peers' logs did (it said nothing of it).
    log = n3.log()
    joining = log.index("joining the cluster: this node's disk refused a write its peers were sent")
    assert "event=joining" in log[joining:].splitlines()[0]
    assert log.index("joined: caught up from every peer", joining) > joining
    assert "quorum lost" not in log  # its peers never went: the disk's own lines say it


def test_a_node_whose_peers_disks_refuse_writes_says_it_has_no_quorum(tmp_path):
    """n2's and n3's disks full, n1's fine: every write through n1 fails on its peers'
    disks, but n1 said has_quorum true (its peers UP), so HAProxy kept it in rotation
    (found by a disk-fault probe). Peers now say so in their PONGs."""
    from kvwire.testing import LocalCluster

    cluster = LocalCluster(3, data_dir=tmp_path, sync="normal", heartbeat_interval=0.1)
    for node_id in ("n2", "n3"):
        cluster.nodes[node_id] = NodeOnItsOwnDisk.like(cluster[node_id])
    with cluster:
        cluster.wait_peers("n1", up=["n2", "n3"], timeout=10.0)
        with Client(cluster.endpoints_of("n1"), timeout=5) as client:
            client.put("before", "kept")
            for node_id in ("n2", "n3"):
                cluster[node_id].fill_disk()
            with pytest.raises((InternalServerError, NoQuorumError)):
                client.put("during", b"x" * 1_000_000)  # more than their write-ahead logs have room for
            wait_for(lambda: not client.health()["cluster"]["has_quorum"], timeout=5,
                     what="n1 counting its peers out of the majority that takes writes")
            health = client.health()
            assert (health["status"], health["cluster"]["can_accept_writes"], health["cluster"]["healthy_nodes"]) == (
                "unavailable", False, 1)
            assert {peer["node_id"]: (peer["healthy"], peer["writable"]) for peer in health["cluster"]["nodes"]} == {
                "n2": (True, False), "n3": (True, False)}
            assert health["storage"]["writable"] is True  # its own disk
            assert cluster["n1"].health_exit_status() == 3  # what HAProxy's check and `kvwire-cli health` act on
            assert client.get("before") == "kept"  # a quorum read: its peers are UP and answer it
            # n3's own refusal said "another node can take it", and none could (a lifecycle probe).
            with Client(cluster.endpoints_of("n3"), timeout=5) as through_n3:
                wait_for(lambda: not through_n3.health()["storage"]["writable"]
                         and not next(peer["writable"] for peer in through_n3.health()["cluster"]["nodes"]
                                      if peer["node_id"] == "n2"),
                         timeout=5, what="n3 knowing its disk and n2's refuse writes")
                with pytest.raises(UnavailableError) as refused:
                    through_n3.put("refused", 1)
                assert ("request not started: no node can now: 1 of the other 2 nodes can commit a write"
                        in refused.value.message), refused.value.message
            log = cluster["n1"].log()
            assert "1 of 3 nodes UP and taking writes, 2 needed (2 UP with their disks refusing writes)" in log, log
            # A peer back from DOWN: what it said of its disk stands until its first PONG says
            # otherwise (forgotten, n1 said it had quorum for a heartbeat: a review found it).
            lost_at = len(cluster["n1"].log())
            cluster.pause("n2")
            cluster.wait_peers("n1", down=["n2"], timeout=10.0)
            cluster.resume("n2")
            cluster.wait_peers("n1", up=["n2"], timeout=10.0)
            assert "quorum available" not in cluster["n1"].log()[lost_at:]
            for node_id in ("n2", "n3"):
                cluster[node_id].free_disk()
            wait_for(lambda: client.health()["cluster"]["has_quorum"], timeout=10, what="n1's peers taking writes")
            wait_for(lambda: client.health()["status"] == "healthy", timeout=15, what="every node voting again")
            client.put("after", "written")
    log = cluster["n1"].log()
    assert "peer n2 says its disk refuses writes" in log and "peer n2 takes writes again" in log


@pytest.mark.parametrize("stop", ["TERM", "KILL"])
def test_a_node_started_on_a_full_disk_exits_1_so_that_it_is_started_again(tmp_path, stop):
    """Exit 78 is for what a person must change; a full disk may be freed by anyone, or
    by itself, and kvwire up and the systemd unit restart a node that exits 1, not 78.
    The disk is a tmpfs in a mount namespace of the script's own, gone with it."""
    disk = tmp_path / "disk"
    node = NodeProcess("n1", data_dir=disk / "n1", extra_args=["--sync", "normal"])
    serve, put = shlex.join(node.command), shlex.join(
        [sys.executable, "-m", "kvwire.cli.client", "--endpoints", node.address, "--timeout", "1", "put", "k", "v"])
    script = f"""
        mkdir -p {disk} && mount -t tmpfs -o size=16m kvwire-test {disk} || exit 99
        {serve} 2>/dev/null & pid=$!
        tries=0
        until {put} >/dev/null 2>&1; do  # polls until the node has started and taken a write
            tries=$((tries + 1)); [ $tries -lt 150 ] || exit 98; sleep 0.1
        done
        kill -{stop} $pid; wait $pid
        dd if=/dev/zero of={disk}/filler bs=64k >/dev/null 2>&1
        timeout 30 {serve}
    """
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "free space on its file system" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_new_data_directory_on_a_full_disk_is_refused_naming_the_disk_not_the_address(tmp_path):
    """Writing the pid into DATA_DIR/LOCK failed first, and the error said
    "cannot start node n1 on 127.0.0.1:PORT: No space left on device"."""
    disk = tmp_path / "disk"
    node = NodeProcess("n1", data_dir=disk / "n1", extra_args=["--sync", "normal"])
    script = f"""
        mkdir -p {disk} && mount -t tmpfs -o size=2m kvwire-test {disk} || exit 99
        mkdir {disk}/n1 && chmod 700 {disk}/n1
        dd if=/dev/zero of={disk}/filler bs=64k >/dev/null 2>&1
        timeout 30 {shlex.join(node.command)}
    """
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "free space on its file system" in result.stderr, result.stderr[-2000:]
    assert f"on {node.address}" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("deleted, named", [
    ("kvwire.sqlite3*", "the database file"),
    ("kvwire.sqlite3-wal", "the database's write-ahead log"),
    ("kvwire.sqlite3", "the database file"),  # its -wal and -shm left behind, of no use to a new database
])
def test_a_node_whose_database_file_was_deleted_stops_and_comes_back_caught_up(tmp_path, deleted, named):
    """A storage probe deleted kvwire.sqlite3* under a running node: it went on
    reporting itself healthy and acknowledging writes (10,222 of them) into files no
    start would open, and its next start had lost them all. Then it refused writes
    until a person restarted it (a self-healing probe: "no single failure needs a
    person"). Within about a second it now stops, exit status 1, leaving REJOIN in its
    data directory, and a plain restart (what kvwire up, systemd and Docker do; no
    --join) catches up from its peers before it votes, whatever its path holds."""
    from kvwire.testing import LocalCluster

    with LocalCluster(3, data_dir=tmp_path, sync="normal") as cluster:
        n3 = cluster["n3"]
        with Client(n3.address, timeout=5) as client:
            client.put("before", "kept")
        for path in n3.data_dir.glob(deleted):
            path.unlink()
        assert n3.wait(timeout=15) == 1
        log = n3.log()
        assert "event=database_file_lost" in log and f"{named} {n3.data_dir}" in log
        assert "it catches up from its peers before it votes" in log, log[-2000:]
        assert (n3.data_dir / "REJOIN").exists()
        with Client(cluster.endpoints_of("n1", "n2"), timeout=5) as client:
            client.put("meanwhile", "also kept")
        cluster.start("n3")  # as it was started before: no --join
        cluster.wait_ready()  # caught up from its peers
        assert "event=rejoin_after_lost_files" in n3.log() and "event=joined" in n3.log()
        assert "join_used_directory" not in n3.log()
        assert not (n3.data_dir / "REJOIN").exists()
        with Client(n3.address, timeout=5) as client:
            assert client.get("before", consistency="one") == "kept"
            wait_for(lambda: client.get("meanwhile", consistency="one") == "also kept", timeout=10,
                     what="n3 given the write it missed (a hint, or anti-entropy)")


def test_a_node_whose_database_file_was_replaced_under_it_comes_back_caught_up(tmp_path):
    """A reviewer put a backup in place of a running node's database file: the node
    stopped and left REJOIN, but the old database's write-ahead log stayed beside the
    new file (SQLite's close neither checkpoints nor deletes the log of a file that
    moved), its next start replayed the old pages into the new file, found it
    "malformed" and exited 78, which no supervisor restarts."""
    from kvwire.testing import LocalCluster

    with LocalCluster(3, data_dir=tmp_path, sync="normal") as cluster:
        n3 = cluster["n3"]
        with Client(n3.address, timeout=5) as client:
            client.put("before", "kept")
            backup = tmp_path / "backup"
            subprocess.run([sys.executable, "-m", "kvwire", "backup", str(n3.data_dir), str(backup)],
                           check=True, capture_output=True, timeout=60)
            for i in range(300):  # pages in the log the backup does not have
                client.put(f"after{i}", "x" * 10_000)
        database = n3.data_dir / "kvwire.sqlite3"
        assert (n3.data_dir / "kvwire.sqlite3-wal").stat().st_size > 1_000_000
        shutil.copyfile(backup / "kvwire.sqlite3", n3.data_dir / "new.tmp")
        os.replace(n3.data_dir / "new.tmp", database)
        assert n3.wait(timeout=15) == 1
        assert "was replaced by another file" in n3.log()
        cluster.start("n3")
        cluster.wait_ready()
        assert "event=rejoin_after_lost_files" in n3.log() and "event=joined" in n3.log()
        with Client(n3.address, timeout=5) as client:
            assert client.get("before", consistency="one") == "kept"
            wait_for(lambda: client.get("after299", consistency="one") == "x" * 10_000, timeout=15,
                     what="n3 caught up on the writes its backup lacks")


def test_a_lone_node_whose_database_file_was_deleted_stays_up_read_only(tmp_path):
    """No peers to catch up from: stopped, it would start empty. It keeps serving
    what it holds, refusing writes, and says why."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "normal"]) as node:
        with Client(node.address, timeout=5) as client:
            client.put("before", "kept")
            node.data_dir.joinpath("kvwire.sqlite3").unlink()
            wait_for(lambda: not client.health()["storage"]["writable"], timeout=10, what="n1 noticing")
            with pytest.raises(UnavailableError, match="disk refuses writes"):
                client.put("after", 1)
            assert client.get("before") == "kept"
        assert node.running
