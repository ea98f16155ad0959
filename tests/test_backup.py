"""``kvwire backup``: a node's data copied while it runs, restored into a node that rejoins.

Real node processes and SQLite files; the backup is the CLI, run as a user would.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kvwire import Client, KeyNotFoundError
from kvwire.server.backup_staging import STAGING_SUFFIX
from kvwire.server.storage import DATABASE_FILE_NAME, META_SET, SCHEMA
from kvwire.testing import LocalCluster, NodeProcess, free_port, wait_for
from kvwire.testing.data import local_copies, value_for, write_keys
from kvwire.testing.balancer import WriteLoad

BACKUP = [sys.executable, "-m", "kvwire", "backup"]
NOBODY = 65534  # the uid and gid a backup runs as, from root, where permissions must count


def run_backup(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([*BACKUP, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def restore(node: NodeProcess, backup_dir) -> None:
    """What the README says to do, the node stopped: its data directory aside, the backup in its place."""
    data_dir = node.data_dir
    os.rename(data_dir, f"{data_dir}.before-restore")
    shutil.move(backup_dir, data_dir)


@pytest.mark.parametrize("while_running", [True, False], ids=["node-running", "node-stopped"])
def test_a_node_restored_from_its_backup_rejoins_and_catches_up(tmp_path, while_running):
    """n2 is backed up (while it runs, or stopped cleanly, when only the backup's
    joining mark makes it rejoin), then writes, overwrites and a DELETE happen
    without it in the backup. Restored, n2 joins before it takes part in any
    majority, and once caught up its own copy (consistency=one) has every later
    write: none of them is lost or hidden by the old copy."""
    with LocalCluster(3, data_dir=tmp_path / "cluster") as cluster:
        n2 = cluster["n2"]
        with Client(cluster.endpoints, **cluster.client_options) as client:
            for number in range(50):
                client.put(f"a{number}", "old")
            client.delete("a0")
            if not while_running:
                cluster.terminate("n2")
            result = run_backup(n2.data_dir, tmp_path / "backup")
            assert result.returncode == 0, result.stderr
            assert "backed up node n2: 49 keys and 1 tombstones" in result.stdout
            # Both hold every key: only their owner may enter them.
            assert (tmp_path / "backup").stat().st_mode & 0o777 == 0o700
            assert n2.data_dir.stat().st_mode & 0o777 == 0o700
            if not while_running:
                n2.start()
                cluster.wait_ready()
            client.put("a1", "new")
            client.delete("a2")
            for number in range(20):
                client.put(f"b{number}", number)
        cluster.terminate("n2")  # a clean stop: without the mark, the restored node would not join
        restore(n2, tmp_path / "backup")
        log_before = len(n2.log())
        n2.start()
        cluster.wait_ready()  # every node UP, and n2 caught up from every peer
        assert "event=joining" in n2.log()[log_before:], "the restored node took part in majorities at once"
        assert "event=old_backup" not in n2.log()  # a backup of a minute ago: nothing deleted since is collected
        with Client([n2.address], **cluster.client_options) as own_copy:
            assert own_copy.get("a1", consistency="one") == "new"
            assert own_copy.get("a3", consistency="one") == "old"
            assert [own_copy.get(f"b{number}", consistency="one") for number in range(20)] == list(range(20))
            for deleted in ("a0", "a2"):
                with pytest.raises(KeyNotFoundError):
                    own_copy.get(deleted, consistency="one")


def test_a_backup_taken_under_writes_is_whole_and_loses_no_acknowledged_write(tmp_path):
    """n2 backed up while a client writes through n1 without pause: the copy passes
    SQLite's integrity check, and the restored n2, once caught up, holds every write
    the client saw acknowledged, before, during and after the backup."""
    with LocalCluster(3, data_dir=tmp_path / "cluster") as cluster:
        n2 = cluster["n2"]
        with WriteLoad(cluster["n1"].address, max_requests=5_000, max_duration=20.0,
                       client_options=cluster.client_options) as load:
            load.wait_acknowledged(300)
            result = run_backup(n2.data_dir, tmp_path / "backup")
            assert result.returncode == 0, result.stderr
            load.wait_acknowledged(load.report.requests + 300)  # and the writes go on after it
            report = load.stop()
        assert not report.failures, report.failures
        with sqlite3.connect(tmp_path / "backup" / DATABASE_FILE_NAME) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        cluster.terminate("n2")
        restore(n2, tmp_path / "backup")
        n2.start()
        cluster.wait_ready()
        with Client([n2.address], **cluster.client_options) as own_copy:
            missing = {key for key, value in report.acknowledged.items()
                       if own_copy.get(key, consistency="one") != value}
        assert not missing, f"{len(missing)} of {len(report.acknowledged)} acknowledged writes missing on n2"


def test_a_node_restored_from_a_backup_older_than_the_tombstone_grace_warns_once(tmp_path):
    """A backup two hours old (its recorded time moved back), the grace an hour: keys
    deleted since may have had their tombstones collected everywhere, and this node's
    old copies of them would come back (docs/operations.md, Backups). The node says
    so when it starts joining; once joined, the mark is gone, and a later unclean
    restart (which joins again) does not say it again."""
    with LocalCluster(3, data_dir=tmp_path / "cluster") as cluster:
        n2 = cluster["n2"]
        taken = _backup_of_n2_with_its_time_moved(cluster, tmp_path / "backup", -7200)
        # A backup of that backup holds the same two-hour-old data, and keeps its moment.
        assert run_backup(tmp_path / "backup", tmp_path / "copy").returncode == 0
        with sqlite3.connect(tmp_path / "copy" / DATABASE_FILE_NAME) as db:
            (copied,) = db.execute("SELECT value FROM meta WHERE name = 'backup_taken_at'").fetchone()
        assert float(copied) == taken - 7200
        cluster.terminate("n2")
        restore(n2, tmp_path / "copy")
        n2.start()
        cluster.wait_ready()
        assert n2.log().count("event=old_backup") == 1
        assert "longer than --tombstone-grace (3600 s)" in n2.log()
        # wait_ready waits for its peers UP, not for it to have joined: killed before
        # that commit, it rightly joins again as a restored backup, warning again.
        wait_for(lambda: not _holds_backup_mark(n2.data_dir), timeout=15,
                 what="n2 joined, and the backup's mark gone from its file")
        cluster.kill("n2")
        n2.start()
        cluster.wait_ready()
        assert n2.log().count("event=joining") == 2  # the unclean stop joins again...
        assert n2.log().count("event=old_backup") == 1  # ...without the backup's warning


def test_a_backup_whose_time_is_ahead_of_this_clock_warns_that_its_age_is_unknown(tmp_path):
    """Taken on a machine whose clock was a day ahead (or restored on one a day behind):
    its age came out negative and the warning was passed over, though it may be older
    than the grace."""
    with LocalCluster(3, data_dir=tmp_path / "cluster") as cluster:
        n2 = cluster["n2"]
        _backup_of_n2_with_its_time_moved(cluster, tmp_path / "backup", 86400)
        cluster.terminate("n2")
        restore(n2, tmp_path / "backup")
        n2.start()
        cluster.wait_ready()
        assert n2.log().count("event=old_backup") == 1
        assert "after this machine's clock: one of the two clocks is wrong" in n2.log()


def _backup_of_n2_with_its_time_moved(cluster, destination, seconds: float) -> float:
    """A backup of n2 (holding a key), its recorded time moved by ``seconds``; the time it was taken."""
    with Client(cluster.endpoints, **cluster.client_options) as client:
        client.put("k", 1)
    assert run_backup(cluster["n2"].data_dir, destination).returncode == 0
    with sqlite3.connect(destination / DATABASE_FILE_NAME) as db:
        (taken,) = db.execute("SELECT value FROM meta WHERE name = 'backup_taken_at'").fetchone()
        db.execute("UPDATE meta SET value = ? WHERE name = 'backup_taken_at'", (repr(float(taken) + seconds),))
    return float(taken)


def _holds_backup_mark(data_dir) -> bool:
    with sqlite3.connect(f"file:{data_dir / DATABASE_FILE_NAME}?mode=ro", uri=True) as db:
        return db.execute("SELECT 1 FROM meta WHERE name = 'backup_taken_at'").fetchone() is not None


def test_a_whole_cluster_restores_from_its_backups(tmp_path):
    """Every node lost, each restored from its own backup: all three join at
    once, catch up from one another, and serve what the backups held; writes
    made after every backup are gone, as they must be."""
    with LocalCluster(3, data_dir=tmp_path / "cluster") as cluster:
        with Client(cluster.endpoints, **cluster.client_options) as client:
            for number in range(30):
                client.put(f"k{number}", number)
            for node in cluster:
                assert run_backup(node.data_dir, tmp_path / node.node_id).returncode == 0
            client.put("after-the-backups", 1)
        for node in cluster:
            cluster.terminate(node.node_id)
            restore(node, tmp_path / node.node_id)
        cluster.start()
        cluster.wait_ready()
        with Client(cluster.endpoints, **cluster.client_options) as client:
            assert [client.get(f"k{number}") for number in range(30)] == list(range(30))
            with pytest.raises(KeyNotFoundError):
                client.get("after-the-backups")
            client.put("written-after-the-restore", 2)
            assert client.get("written-after-the-restore") == 2


def test_a_backup_belongs_to_its_node(tmp_path):
    """Restored under another node id, the copy is refused with a message naming both:
    its versions are tagged with its own node's id."""
    with NodeProcess("n1", data_dir=tmp_path / "n1") as node:
        with Client([node.address]) as client:
            client.put("k", 1)
        assert run_backup(node.data_dir, tmp_path / "backup").returncode == 0
    result = subprocess.run(
        [sys.executable, "-m", "kvwire", "serve", "--node-id", "n2", "--data-dir", str(tmp_path / "backup"),
         "--listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "belongs to node 'n1', not 'n2'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_backup_file_put_back_over_a_killed_nodes_wal_is_refused_and_left_as_it_was(tmp_path):
    """The backup's database file copied over a node killed with a WAL, not its whole
    directory: SQLite read the old WAL's pages into it, the writer's close then
    checkpointed them into the file and deleted the WAL, and the node exited 78 telling
    to restore from a backup, which had just been spoilt (a lifecycle probe's finding).
    It is read first through a read-only connection now, which leaves both as they were,
    and the message names the WAL; with the WAL and -shm moved aside it starts as the backup."""
    with NodeProcess("n1", data_dir=tmp_path / "n1") as node:
        write_keys([node.address], [f"b/{i}" for i in range(2000)])
        assert run_backup(node.data_dir, tmp_path / "backup").returncode == 0
        write_keys([node.address], [f"w/{i}" for i in range(2000)], value_bytes=300)
        node.kill()
    database, wal = node.data_dir / DATABASE_FILE_NAME, node.data_dir / f"{DATABASE_FILE_NAME}-wal"
    assert wal.stat().st_size > 0  # killed: its last writes only in the WAL
    shutil.copyfile(tmp_path / "backup" / DATABASE_FILE_NAME, database)
    refused = subprocess.run([sys.executable, "-m", "kvwire", "serve", "--node-id", "n1", "--data-dir",
                              str(node.data_dir), "--listen", f"127.0.0.1:{free_port()}"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 78, refused.stderr
    assert "damaged" in refused.stderr and f"read with {DATABASE_FILE_NAME}-wal beside it" in refused.stderr
    assert database.read_bytes() == (tmp_path / "backup" / DATABASE_FILE_NAME).read_bytes()
    assert wal.stat().st_size > 0
    wal.unlink()
    (node.data_dir / f"{DATABASE_FILE_NAME}-shm").unlink()
    with node:
        assert len(local_copies(node.address, [f"b/{i}" for i in range(2000)])) == 2000


def test_a_backup_that_fails_midway_leaves_nothing_behind(tmp_path):
    """The copy cut off by a file size limit (as a full disk would): one line, exit 1, and
    the destination as it was (absent, or empty), so that the next attempt is not refused."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as node:
        with Client([node.address]) as client:
            for number in range(150):
                client.put(f"k{number}", b"x" * 10_000)
        empty = tmp_path / "empty"
        empty.mkdir()
        for destination in (tmp_path / "new", empty):
            result = subprocess.run(["prlimit", "--fsize=500000", *BACKUP, str(node.data_dir), str(destination)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert f"to {destination} failed" in result.stderr
        assert not (tmp_path / "new").exists()
        assert not list(tmp_path.glob(f".*{STAGING_SUFFIX}"))  # nor its copy, made beside it
        assert os.listdir(empty) == []
        assert run_backup(node.data_dir, empty).returncode == 0  # not refused: nothing was left
        # The directory was there already, with its own mode; the copy is owner-only all the same.
        assert (empty / DATABASE_FILE_NAME).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_backup_stopped_by_a_signal_leaves_nothing_behind(tmp_path, signum):
    """SIGTERM (systemd's stop, timeout's) mid-copy unwinds as a Ctrl-C does: no partial
    copy is left to refuse the next attempt, and the directory the backup made is gone.
    Both exit 128 + the signal (Ctrl-C exited 1 with click's "Aborted!")."""
    source = large_node_database(tmp_path / "n1")
    destination = tmp_path / "copy"
    process = subprocess.Popen([*BACKUP, str(source), str(destination)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: copies_begun(tmp_path, source) or process.poll() is not None, timeout=30, interval=0.001,
                 what="the copy begun")
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    assert stderr.strip() == f"backup stopped by {signum.name}; nothing was left in {destination}"
    assert not destination.exists()
    assert os.listdir(tmp_path) == ["n1"]  # nor a copy beside it


def large_node_database(data_dir):
    """A node n1's database of 200 MB, written directly (quicker than through a node), that
    takes a backup a while to copy. Here rather than in kvwire.testing, which may not use
    kvwire.server's schema (tests/test_layering.py)."""
    data_dir.mkdir()
    with sqlite3.connect(data_dir / DATABASE_FILE_NAME) as db:
        db.executescript(SCHEMA)
        db.execute(META_SET, ("node_id", "n1"))
        db.executemany("INSERT INTO kv VALUES (?, zeroblob(1000000), 1, 'n1', 0)", [(f"k{i}",) for i in range(200)])
    return data_dir


def copies_begun(tmp_path, source) -> list:
    """Database files a backup is writing under ``tmp_path``, wherever it puts them, that have some pages."""
    return [path for path in tmp_path.rglob(f"{DATABASE_FILE_NAME}*")
            if not path.is_relative_to(source) and path.is_file() and path.stat().st_size > 0]


@pytest.mark.parametrize("existing", [False, True], ids=["new-destination", "empty-destination"])
def test_a_backup_killed_mid_copy_leaves_nothing_like_a_backup_and_the_next_one_restores(tmp_path, existing):
    """SIGKILL runs no clean-up, so what it leaves is what was written. Killed while copying
    a real node's 150 MB: no DESTINATION it made (an existing empty one holds no database), and
    nothing that refuses the next backup, which succeeds, removes the killed one's leftovers,
    and restores the node with every key."""
    keys = [f"k{number}" for number in range(150)]
    destination = tmp_path / "backup"
    if existing:
        destination.mkdir()
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as node:
        write_keys([node.address], keys, value_bytes=1_000_000, concurrency=8)
        process = subprocess.Popen([*BACKUP, str(node.data_dir), str(destination)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: copies_begun(tmp_path, node.data_dir) or process.poll() is not None, timeout=30,
                     interval=0.001, what="the copy begun")
            process.kill()
            _, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
        assert process.returncode == -signal.SIGKILL, f"the backup was not killed mid-copy: {stderr}"
        if existing:
            assert not (destination / DATABASE_FILE_NAME).exists()
        else:
            assert not destination.exists()
            assert list(tmp_path.glob(f".*{STAGING_SUFFIX}"))  # the killed copy, beside it under a name of its own

        result = run_backup(node.data_dir, destination)
        assert result.returncode == 0, result.stderr
        assert "backed up node n1: 150 keys" in result.stdout
        assert os.listdir(destination) == [DATABASE_FILE_NAME]  # the killed copy's leftovers are gone...
        assert not list(tmp_path.glob(f".*{STAGING_SUFFIX}"))  # ...beside DESTINATION too
        assert (destination / DATABASE_FILE_NAME).stat().st_mode & 0o777 == 0o600
        node.terminate()
        restore(node, destination)
        node.start()
        node.wait_ready()
        assert local_copies(node.address, keys) == {key: value_for(key, 1_000_000) for key in keys}


def test_a_backup_refuses_a_destination_another_backup_is_writing_to(tmp_path):
    """Two backups into one existing empty directory: the second is refused while the first
    holds it, rather than taking the first's partial copy for a killed one's and removing it."""
    source = large_node_database(tmp_path / "n1")
    destination = tmp_path / "copy"
    destination.mkdir()
    first = subprocess.Popen([*BACKUP, str(source), str(destination)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: copies_begun(tmp_path, source) or first.poll() is not None, timeout=30, interval=0.001,
                 what="the copy begun")
        second = run_backup(source, destination)
        assert first.poll() is None, "the first backup ended before the second was tried"
        assert first.wait(timeout=60) == 0, first.stderr.read()
    finally:
        first.kill()
        first.communicate()
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip() == f"Error: another backup is being written to {destination}"
    assert os.listdir(destination) == [DATABASE_FILE_NAME]


def test_a_backup_neither_waits_for_nor_refuses_a_flock_another_tool_holds(tmp_path):
    """``flock backups kvwire backup SRC backups/b2`` in a cron line, and ``flock backups/b3 ...``:
    a flock on DESTINATION's parent, or on an existing empty DESTINATION, is that tool's. The
    backup neither waits for it (the timeout) nor takes it for another backup's."""
    source = large_node_database(tmp_path / "n1")
    backups = tmp_path / "backups"
    (backups / "b3").mkdir(parents=True)
    for held, destination in ((backups, backups / "b2"), (backups / "b3", backups / "b3")):
        fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                result = run_backup(source, destination, timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the backup to {destination} waited for the flock on {held}")
        finally:
            os.close(fd)
        assert result.returncode == 0, result.stderr
        assert os.listdir(destination) == [DATABASE_FILE_NAME]
    assert sorted(os.listdir(backups)) == ["b2", "b3"]


def test_a_killed_backup_is_removed_by_the_next_one_into_the_same_directory(tmp_path):
    """A backup to n1-2026-12-05 killed mid-copy leaves its hidden staging beside it; the next
    day's backup to n1-2026-12-06 in the same directory removes it and succeeds."""
    source = large_node_database(tmp_path / "n1")
    backups = tmp_path / "backups"
    backups.mkdir()
    killed = subprocess.Popen([*BACKUP, str(source), str(backups / "n1-2026-12-05")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: copies_begun(tmp_path, source) or killed.poll() is not None, timeout=30, interval=0.001,
                 what="the copy begun")
        killed.kill()
        _, stderr = killed.communicate(timeout=30)
    finally:
        killed.kill()
    assert killed.returncode == -signal.SIGKILL, f"the backup was not killed mid-copy: {stderr}"
    assert any(name.endswith(STAGING_SUFFIX) for name in os.listdir(backups))

    result = run_backup(source, backups / "n1-2026-12-06")
    assert result.returncode == 0, result.stderr
    assert os.listdir(backups) == ["n1-2026-12-06"]


def test_a_backup_into_a_directory_it_may_write_in_but_not_list(tmp_path):
    """A drop directory of mode 0333: the backup cannot list it (so removes no killed backup's
    leftovers there) nor open it to sync, yet makes its copy. Root reads every directory
    whatever its mode, so as root the backup runs as nobody, in a directory nobody may enter."""
    as_root = os.geteuid() == 0
    # util-linux, Essential in Debian: a failure, not a skip, if it were ever missing.
    assert not as_root or shutil.which("setpriv"), "as root, permissions count only for another user: setpriv is needed"
    top = Path(tempfile.mkdtemp()) if as_root else tmp_path  # tmp_path's parents are root's alone
    try:
        top.chmod(0o755)
        source = large_node_database(top / "n1")
        drop = top / "drop"
        drop.mkdir()
        os.chmod(source / DATABASE_FILE_NAME, 0o644)
        if as_root:
            os.chown(drop, NOBODY, NOBODY)
        drop.chmod(0o333)
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_root else []
        result = subprocess.run([*as_nobody, *BACKUP, str(source), str(drop / "b1")], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        drop.chmod(0o755)
        assert os.listdir(drop) == ["b1"]
        assert os.listdir(drop / "b1") == [DATABASE_FILE_NAME]
    finally:
        if as_root:
            shutil.rmtree(top)


@pytest.mark.parametrize("destination", ["/proc/kvwire-bk", "/sys/kvwire-bk"])
def test_a_destination_whose_directory_refuses_it_is_named_in_the_error(tmp_path, destination):
    """The error names DESTINATION, the path the user gave, not the hidden name the copy is made under."""
    source = large_node_database(tmp_path / "n1")
    result = run_backup(source, destination)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"Error: cannot use {destination}: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_arguments_get_one_line_and_change_nothing(tmp_path):
    (tmp_path / "not-a-node").mkdir()
    result = run_backup(tmp_path / "not-a-node", tmp_path / "out")
    assert result.returncode == 1
    assert "no kvwire database at" in result.stderr and "give a node's --data-dir" in result.stderr
    assert not (tmp_path / "out").exists()

    (tmp_path / "other").mkdir()
    with sqlite3.connect(tmp_path / "other" / DATABASE_FILE_NAME) as db:
        db.execute("CREATE TABLE notes (text)")
    result = run_backup(tmp_path / "other", tmp_path / "out")
    assert result.returncode == 1 and "it is not a kvwire node's" in result.stderr
    assert not (tmp_path / "out").exists()

    with NodeProcess("n1", data_dir=tmp_path / "n1") as node:
        taken = tmp_path / "taken"
        taken.mkdir()
        (taken / "something").write_text("mine")
        result = run_backup(node.data_dir, taken)
        assert result.returncode == 1
        assert f"{taken} exists and is not an empty directory" in result.stderr
        assert os.listdir(taken) == ["something"]

        result = run_backup(node.data_dir)  # the destination missing: click's usage error
        assert result.returncode == 2 and "Missing argument 'DESTINATION'" in result.stderr
        wait_for(lambda: node.running, timeout=1, what="the node untouched")


def test_a_destination_inside_the_data_directory_is_refused(tmp_path):
    """A restore moves the data directory aside and a lost node's is emptied: a backup kept
    in it is lost with it. Refused before anything is made, through a symbolic link too."""
    source = tmp_path / "n1"
    source.mkdir()
    with sqlite3.connect(source / DATABASE_FILE_NAME) as db:
        db.executescript(SCHEMA)
        db.execute(META_SET, ("node_id", "n1"))
    (tmp_path / "link").symlink_to(source)
    for destination in (source / "backups" / "today", tmp_path / "link" / "today", source / "."):
        result = run_backup(source, destination)
        assert result.returncode == 1, result.stderr
        assert result.stderr == (f"Error: {destination} is inside the data directory {source}: a backup there "
                                 "is lost with it; give a DESTINATION outside it\n"), result.stderr
    assert sorted(os.listdir(source)) == [DATABASE_FILE_NAME]


def test_the_clean_up_removes_only_what_a_backup_would_have_left(tmp_path):
    """A directory named like a staging but not one (the user's own: another name's shape,
    or holding other files) is never removed; a killed backup's staging is."""
    parent = tmp_path / "backups"
    parent.mkdir()
    users = [parent / ".photos.backup-partial", parent / ".n1.backup-partial",
             parent / ".n1.0123456789abcdef.backup-partial"]
    for directory in users:
        directory.mkdir()
        (directory / "holiday.jpg").write_bytes(b"not kvwire's")
    killed = parent / ".n0.fedcba9876543210.backup-partial"
    killed.mkdir()
    (killed / "kvwire.sqlite3").write_bytes(b"a copy cut short")
    result = run_backup(large_node_database(tmp_path / "n1"), parent / "n2")
    assert result.returncode == 0, result.stderr
    assert all((directory / "holiday.jpg").exists() for directory in users)
    assert not killed.exists()


def test_a_sigterm_just_as_the_copy_is_put_in_place_keeps_it_and_says_so(tmp_path):
    """SIGTERM the moment rename(2) has put the copy in place: the backup must not report
    "nothing was left" (and exit 143) over a whole copy, as it did when the signal was
    handled before the commit was marked; it is held back until then, and the backup ends."""
    source = large_node_database(tmp_path / "n1")
    destination = tmp_path / "backup"
    script = f"""
import os, signal, sys
rename = os.rename
def rename_then_sigterm(source, target, *args, **kwargs):
    rename(source, target, *args, **kwargs)
    if os.fspath(target) == {str(destination)!r}:
        os.kill(os.getpid(), signal.SIGTERM)
os.rename = rename_then_sigterm
from kvwire.cli.entry import kvwire
sys.argv = ["kvwire", "backup", {str(source)!r}, {str(destination)!r}]
kvwire()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "SIGTERM came once the copy was in place: it is whole, and kept" in result.stderr
    assert os.listdir(destination) == [DATABASE_FILE_NAME]


def test_a_backup_of_a_database_with_a_damaged_page_is_refused_and_leaves_nothing(tmp_path):
    """SQLite's backup copies pages as they are, and the copy's count of keys reads only
    the kv table's tree: a damaged value page made a backup that looked whole and failed
    once restored. quick_check on the copy refuses it, and says what to do instead."""
    with NodeProcess("n1", data_dir=tmp_path / "n1") as node, Client([node.address]) as client:
        for number in range(60):
            client.put(f"k{number}", os.urandom(10_000))  # each past a page: overflow pages
    database = node.data_dir / DATABASE_FILE_NAME
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        overflow = [page for (page,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'kv' AND pagetype = 'overflow'")]
    assert len(overflow) > 100, overflow
    with open(database, "r+b") as file:
        file.seek((overflow[len(overflow) // 2] - 1) * 4096)  # pages count from 1
        file.write(b"\xff" * 4)  # the overflow chain's next page: -1
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM kv").fetchone() == (60,)  # what the copy's count reads is whole
    result = run_backup(node.data_dir, tmp_path / "out")
    assert result.returncode == 1, result
    (line,) = result.stderr.strip().splitlines()
    assert f"{database} is damaged (SQLite's quick_check: On tree page" in line and "invalid page number" in line
    assert "so no copy was kept" in line and "--join" in line
    assert not (tmp_path / "out").exists()
    assert [name for name in os.listdir(tmp_path) if "backup-partial" in name] == []
