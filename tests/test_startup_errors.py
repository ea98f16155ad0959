"""A node that cannot use its data directory exits 78 (EX_CONFIG: a restart cannot help) with one line
naming the path and the reason.

Real processes and real file systems. The tests run as root, whom file modes
don't stop, so a directory or file that can't be written is a read-only bind
mount in a mount namespace of the node's own (``unshare --mount``): the node
meets EROFS exactly as on a read-only disk, and nothing outside it changes.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import subprocess
import sys

import pytest

from kvwire import Client
from kvwire.cli.exit_status import CONFIG_REFUSED_STATUS
from kvwire.testing import NodeProcess, free_port


def serve(data_dir, *, read_only: list | None = None) -> subprocess.CompletedProcess:
    """``kvwire serve`` on ``data_dir``, with the paths in ``read_only`` mounted read-only for it alone."""
    command = [sys.executable, "-m", "kvwire", "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir)]
    if read_only:
        mounts = " && ".join(f"mount --bind -o ro {shlex.quote(str(p))} {shlex.quote(str(p))}" for p in read_only)
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{mounts} && exec {shlex.join(command)}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def the_one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == CONFIG_REFUSED_STATUS == 78, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    # Not the listen address: the old message blamed it for a storage failure.
    assert "cannot start node" not in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def existing_database(tmp_path):
    """A data directory a node has used (and stopped cleanly): its database exists."""
    data_dir = tmp_path / "n1"
    with NodeProcess("n1", data_dir=data_dir):
        pass
    assert (data_dir / "kvwire.sqlite3").exists()
    return data_dir


def test_a_data_directory_under_a_file_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    line = the_one_error_line(serve(tmp_path / "afile" / "n1"))
    assert f"cannot create the data directory {tmp_path / 'afile' / 'n1'}: Not a directory" in line


def test_a_data_directory_on_a_read_only_file_system_cannot_be_created(tmp_path):
    parent = tmp_path / "mounted"
    parent.mkdir()
    line = the_one_error_line(serve(parent / "n1", read_only=[parent]))
    assert f"cannot create the data directory {parent / 'n1'}: Read-only file system" in line


def test_a_data_directory_that_cannot_be_written(existing_database):
    line = the_one_error_line(serve(existing_database, read_only=[existing_database]))
    assert f"cannot write in the data directory {existing_database}" in line
    assert "Read-only file system" in line


def test_a_read_only_database_file_stops_the_start_not_every_later_write(existing_database):
    # The directory stays writable (LOCK, the WAL): only the database file is read-only,
    # which SQLite opens without complaint; the node must find out before it serves.
    database = existing_database / "kvwire.sqlite3"
    line = the_one_error_line(serve(existing_database, read_only=[database]))
    assert f"cannot use the database {database}: attempt to write a readonly database" in line
    assert "check the owner and mode" in line


def test_a_corrupt_database(tmp_path):
    data_dir = tmp_path / "n1"
    data_dir.mkdir()
    (data_dir / "kvwire.sqlite3").write_bytes(os.urandom(8192))
    line = the_one_error_line(serve(data_dir))
    assert f"cannot use the database {data_dir / 'kvwire.sqlite3'}: file is not a database" in line
    assert "move it aside" in line


def test_a_database_damaged_past_its_header_exits_instead_of_hanging(tmp_path):
    """The header is fine, so SQLite opens the file; the damage is met loading the keys.
    The node used to log the error and then hang at exit on aiosqlite's threads,
    holding its data directory (serve's timeout would fail this test)."""
    data_dir = tmp_path / "n1"
    with NodeProcess("n1", data_dir=data_dir, extra_args=["--sync", "off"]) as node:
        with Client([node.address]) as client:
            for index in range(2000):
                client.put(f"key-{index:05}", "x" * 100)
    database = data_dir / "kvwire.sqlite3"
    pages = database.stat().st_size // 4096
    assert pages > 40, pages
    with open(database, "r+b") as file:  # pages 10 to the last but one: the kv table's
        file.seek(10 * 4096)
        file.write(os.urandom((pages - 11) * 4096))
    line = the_one_error_line(serve(data_dir))
    assert f"cannot use the database {database}: SQLite's quick_check finds it damaged (" in line
    assert "move it aside" in line


def test_damage_in_a_page_the_start_does_not_read_is_found_at_start(tmp_path):
    """An index's page (the request log's, which the start reads in rowid order, not by
    it) damaged on disk: the node started and served, and met the damage only when a
    request reached it. SQLite's quick_check at start reads every page's structure."""
    data_dir = tmp_path / "n1"
    with NodeProcess("n1", data_dir=data_dir, extra_args=["--sync", "off"]) as node:
        with Client([node.address]) as client:
            for index in range(200):
                client.put(f"key-{index:03}", "x" * 100, request_id=f"request-{index:03}")
    database = data_dir / "kvwire.sqlite3"
    db = sqlite3.connect(database)
    try:
        [(page_size,)] = db.execute("PRAGMA page_size")
        [(root,)] = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'request_log_at'")
        [(whole,)] = db.execute("PRAGMA quick_check")
    finally:
        db.close()
    assert whole == "ok"
    with open(database, "r+b") as file:  # the index's root page: its b-tree page type, 0x0a or 0x02, made 0xff
        file.seek((root - 1) * page_size)
        file.write(b"\xff")
    line = the_one_error_line(serve(data_dir))
    assert f"cannot use the database {database}: SQLite's quick_check finds it damaged (" in line
    assert "restore it from a backup, or move it aside and start this node on an empty directory with --join" in line


# SQLite keeps a NULL out of kv.counter (NOT NULL); bytes overwritten on disk do not.
# A copy of the table without the constraint lets one in, as the damage did.
NULL_COUNTER = """
CREATE TABLE kv2 (key TEXT PRIMARY KEY, value BLOB, counter INTEGER, node TEXT, deleted INTEGER) WITHOUT ROWID;
INSERT INTO kv2 SELECT * FROM kv; DROP TABLE kv; ALTER TABLE kv2 RENAME TO kv;
UPDATE kv SET counter = NULL WHERE key = 'k';
"""


@pytest.mark.parametrize("damage, reason", [
    (NULL_COUNTER, "a row of its kv table is damaged (key 'k': counter None"),
    ("UPDATE kv SET counter = 'x' WHERE key = 'k'", "a row of its kv table is damaged (key 'k': counter 'x'"),
    ("UPDATE kv SET deleted = 2 WHERE key = 'k'", "deleted 2, not as kvwire writes them"),
    ("INSERT INTO hints VALUES ('n2', 'k', 'x', 'n1')", "a row of its hints table is damaged"),
    ("UPDATE kv SET node = x'6e31' WHERE key = 'k'", "a row of its kv table is damaged (key 'k': counter 1, node b'n1'"),
    ("UPDATE kv SET node = CAST(x'ae' AS TEXT) WHERE key = 'k'", "Could not decode to UTF-8 column 'node'"),
    ("INSERT INTO request_log VALUES ('r', 'k', 1, 'n1', 'soon', 0)", "a row of its request log is damaged (request 'r'"),
], ids=["null-counter", "text-counter", "deleted-2", "hint-text-counter", "blob-node", "not-utf8", "request-text-time"])
def test_a_row_kvwire_could_not_have_written_is_refused_as_damage(existing_database, damage, reason):
    """Random bytes overwritten in a file met these: a NULL counter crashed the node at its
    first comparison of tags (exit 1, a traceback, restarted for ever by kvwire up)."""
    with NodeProcess("n1", data_dir=existing_database) as node, Client([node.address]) as client:
        client.put("k", "v")
    database = existing_database / "kvwire.sqlite3"
    with sqlite3.connect(database) as db:
        db.executescript(damage)
    line = the_one_error_line(serve(existing_database))
    assert f"cannot use the database {database}: " in line and reason in line
    assert "start this node on an empty directory with --join" in line


def test_a_kv_table_of_another_shape_exits_with_its_reason(tmp_path):
    data_dir = tmp_path / "n1"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "kvwire.sqlite3") as db:
        db.execute("CREATE TABLE kv (name TEXT PRIMARY KEY, data BLOB)")
    line = the_one_error_line(serve(data_dir))
    assert "no such column: key" in line


def test_the_same_directory_starts_once_the_fault_is_gone(existing_database):
    # The checks refuse only what is wrong: the very directory of the read-only test starts normally.
    with NodeProcess("n1", data_dir=existing_database) as node:
        assert node.running
