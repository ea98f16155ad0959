"""One process per data directory: a second `kvwire serve` on it is refused, the first keeps serving."""

import os
import signal
import subprocess
import sys

import pytest

from kvwire import Client
from kvwire.server.datadir import DataDirInUseError, DataDirLock
from kvwire.testing import NodeProcess, accepts_connections, free_port, wait_for


def test_a_second_node_on_the_same_data_dir_exits_1_naming_the_dir_and_the_holder(tmp_path):
    data_dir = tmp_path / "n1"
    with NodeProcess("n1", data_dir=data_dir) as first:
        with Client([first.address], timeout=5) as kv:
            kv.put("k", "before")
        second = subprocess.Popen(
            [sys.executable, "-m", "kvwire", "serve", "--node-id", "n1",
             "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            returncode = second.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("a second node started serving on a data directory another node holds")
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
            stderr = second.stderr.read()
            second.stderr.close()
        assert returncode == 1, stderr
        assert f"data directory {data_dir} is in use by another kvwire process (pid {first.pid})" in stderr
        assert "Traceback" not in stderr
        # The refused process touched nothing the first one relies on.
        with Client([first.address], timeout=5) as kv:
            assert kv.get("k") == "before"
            kv.put("k", "after")
        assert first.terminate() == 0

    with NodeProcess("n1", data_dir=data_dir) as successor:
        with Client([successor.address], timeout=5) as kv:
            assert kv.get("k") == "after"


def test_a_second_node_is_refused_even_after_the_lock_file_was_deleted(tmp_path):
    """Operators delete a file named LOCK they take for stale. A storage probe did, and
    a second process then served writes on the live node's database; its clean stop
    cleared the mark by which the live node's next start, after a kill, catches up."""
    data_dir = tmp_path / "n1"
    with NodeProcess("n1", data_dir=data_dir) as first:
        (data_dir / "LOCK").unlink()
        second = subprocess.run(
            [sys.executable, "-m", "kvwire", "serve", "--node-id", "n1",
             "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )
        assert second.returncode == 1, second.stderr
        assert (f"data directory {data_dir} is locked by another process: a kvwire process whose LOCK file was "
                "deleted") in second.stderr, second.stderr
        assert (data_dir / "LOCK").read_text() == ""  # made anew, and the refused process wrote no pid there
        with pytest.raises(DataDirInUseError):
            DataDirLock(data_dir).acquire()
        with Client([first.address], timeout=5) as kv:
            kv.put("k", "served on")
        assert first.terminate() == 0
    with DataDirLock(data_dir) as lock:
        assert lock.held


def test_the_lock_is_dropped_when_its_holder_is_killed(tmp_path):
    data_dir = tmp_path / "n1"
    with NodeProcess("n1", data_dir=data_dir) as node:
        with pytest.raises(DataDirInUseError, match=f"pid {node.pid}"):
            DataDirLock(data_dir).acquire()
        node.kill()
    with DataDirLock(data_dir) as lock:
        assert lock.held
        assert (data_dir / "LOCK").read_text().strip() == str(os.getpid())


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
    with DataDirLock(tmp_path / "d"):
        with pytest.raises(DataDirInUseError, match=r"in use by another kvwire process \(pid \d+\)"):
            DataDirLock(tmp_path / "d").acquire()
    DataDirLock(tmp_path / "d").acquire().release()


def test_a_directory_locked_by_another_program_is_refused_without_naming_a_pid(tmp_path):
    """The LOCK file is free and the directory locked: not a kvwire process's doing.
    The error named the pid of the LOCK file's last holder, long gone."""
    data_dir = tmp_path / "n1"
    with DataDirLock(data_dir):
        pass  # leaves a LOCK file with this process's pid
    holder = subprocess.Popen(["flock", str(data_dir), "sleep", "30"])
    try:
        wait_for(lambda: _directory_locked(data_dir), timeout=10, what="flock(1) holding the directory")
        with pytest.raises(DataDirInUseError, match="is locked by another process") as refused:
            DataDirLock(data_dir).acquire()
        assert "pid" not in str(refused.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_node_started_under_flock_of_its_own_directory_serves(tmp_path):
    """``flock DIR kvwire serve ...``: flock(1) hands its locked descriptor to the node,
    which then holds the lock itself; it was refused as "in use by another kvwire
    process" (a reviewer's finding)."""
    data_dir = tmp_path / "n1"
    data_dir.mkdir(mode=0o700)
    port = free_port()
    node = subprocess.Popen(["flock", str(data_dir), sys.executable, "-m", "kvwire", "serve", "--node-id", "n1",
                             "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--sync", "off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # flock(1) passes no signal on: stop its group
    try:
        wait_for(lambda: node.poll() is not None or accepts_connections(f"127.0.0.1:{port}"), timeout=15,
                 what="the node listening")
        assert node.poll() is None, node.communicate()[1]
        with pytest.raises(DataDirInUseError):  # held all the same
            DataDirLock(data_dir).acquire()
        with Client([f"127.0.0.1:{port}"], timeout=5) as kv:
            kv.put("k", "v")
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.communicate(timeout=15)
        finally:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.communicate()


def _directory_locked(directory) -> bool:
    import fcntl

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_shared_lock_handed_down_is_not_taken_for_ours_nor_dropped(tmp_path):
    """``flock -s DIR kvwire serve`` beside another ``flock -s DIR``: the directory is
    shared, not this node's; refused. Checking it by locking again through the
    inherited descriptor dropped the wrapper's shared lock (a reviewer's finding):
    the check now reads /proc/self/fdinfo."""
    data_dir = tmp_path / "n1"
    data_dir.mkdir(mode=0o700)
    inode = f":{data_dir.stat().st_ino:d} "
    holder = subprocess.Popen(["flock", "-s", str(data_dir), "sleep", "30"])
    try:
        wait_for(lambda: _directory_locked(data_dir), timeout=10, what="the other program's shared lock")
        serve = (f"{sys.executable} -m kvwire serve --node-id n1 --listen 127.0.0.1:{free_port()} "
                 f"--data-dir {data_dir} --sync off; echo exit=$?; grep -c '{inode}' /proc/locks")
        result = subprocess.run(["flock", "-s", str(data_dir), "sh", "-c", serve], capture_output=True, text=True,
                                timeout=60)
        assert "is locked by another process" in result.stderr, result.stderr
        exit_line, locks = result.stdout.split()
        assert exit_line == "exit=1"
        assert int(locks) == 2, result.stdout  # the other program's and the wrapper's, both still held
    finally:
        holder.kill()
        holder.wait()
