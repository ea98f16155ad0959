"""One process per data directory: a second `kvwire serve` on it is refused, the first keeps serving."""

import os
import subprocess
import sys

import pytest

from kvwire import Client
from kvwire.server.datadir import DataDirInUseError, DataDirLock
from kvwire.testing import NodeProcess, free_port


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
        assert f"data directory {data_dir} is in use by another kvwire process (pid unknown)" in second.stderr
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
