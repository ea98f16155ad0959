"""Storage in-process, on real SQLite files: group commit, the SQL version guard, reopening."""

import asyncio
import re
import sqlite3

import msgpack
import pytest
from msgspec import Raw

from kvwire.protocol import ErrorCode, Version
from kvwire.server.core.mending import DamagedValueError
from kvwire.server.config import ServerConfig, SyncMode, parse_cluster
from kvwire.server.storage import BACKUP_TAKEN_AT, DATABASE_FILE_NAME, JOINING, META_SET, SCHEMA, DataDirError, Storage, is_claimed


async def open_storage(path, **kwargs):
    options = {"node_id": "n1", "sync": SyncMode.FULL, **kwargs}
    return await Storage.open(path, **options)


def stored(value):
    """A value as storage gives it back: the msgpack bytes it was given (kvwire.protocol.values)."""
    return Raw(msgpack.packb(value))


def put(storage, key, counter, value, node="n1"):
    return storage.write(key, Version(counter, node), False, value, msgpack.packb(value))


def refuse_rows(tmp_path, table: str, column: str, value: str) -> None:
    """SQLite refuses every row of ``table`` whose ``column`` is ``value`` (a trigger): a
    real failure inside a group commit's transaction, which fails it whole."""
    with sqlite3.connect(tmp_path / "kvwire.sqlite3") as db:
        db.executescript(f"""
            CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN NEW.{column} = '{value}'
            BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
        """)


def accept_rows(tmp_path, table: str) -> None:
    with sqlite3.connect(tmp_path / "kvwire.sqlite3") as db:
        db.execute(f"DROP TRIGGER refuse_{table}")


async def test_writes_arriving_during_a_commit_share_the_next_transaction(tmp_path):
    storage = await open_storage(tmp_path)
    try:
        await asyncio.gather(*(put(storage, f"k{i}", 1, i) for i in range(500)))
        assert storage.committed_rows == 500
        # 500 writes queued at once cannot take 500 transactions.
        assert storage.commits <= 5
    finally:
        await storage.close()


async def test_batches_are_capped_at_max_batch_rows(tmp_path):
    storage = await open_storage(tmp_path, max_batch_rows=100)
    try:
        await asyncio.gather(*(put(storage, f"k{i}", 1, i) for i in range(450)))
        assert storage.committed_rows == 450
        assert storage.commits >= 5
    finally:
        await storage.close()


async def test_batches_are_capped_in_bytes_too(tmp_path):
    """A commit's time grows with its bytes: 4,096 values of 100 KB made one commit of
    8.2 s on a healthy disk, which --disk-stall-timeout took for a stalled one."""
    storage = await open_storage(tmp_path, sync=SyncMode.OFF)
    try:
        value = b"x" * (1024 * 1024)
        await asyncio.gather(*(put(storage, f"k{i}", 1, value) for i in range(80)))
        assert storage.committed_rows == 80
        assert storage.commits >= 3  # at most 32 MiB of values each
    finally:
        await storage.close()


async def test_only_a_higher_version_replaces_the_stored_row(tmp_path):
    """The SQL repeats the core's rule, so a replayed or reordered row is harmless."""
    storage = await open_storage(tmp_path)
    try:
        await put(storage, "k", 5, "five", node="n2")
        await put(storage, "k", 5, "replay", node="n2")
        await put(storage, "k", 4, "older", node="n3")
        assert await storage.read("k") == (Version(5, "n2"), False, stored("five"))
        await put(storage, "k", 5, "tie-break", node="n3")
        assert await storage.read("k") == (Version(5, "n3"), False, stored("tie-break"))
        # A proposed tag (kvwire/server/core/minter.py) ranks below every other of its
        # counter in SQLite as in the core, and above the counter below.
        await put(storage, "k", 5, "proposed", node="!n9")
        assert await storage.read("k") == (Version(5, "n3"), False, stored("tie-break"))
        await put(storage, "j", 5, "proposed", node="!n9")
        await put(storage, "j", 4, "older", node="n9")
        assert await storage.read("j") == (Version(5, "!n9"), False, stored("proposed"))
        await put(storage, "j", 5, "minted", node="-")
        assert await storage.read("j") == (Version(5, "-"), False, stored("minted"))
    finally:
        await storage.close()


async def test_each_write_has_its_own_future(tmp_path):
    """Cancelling one caller's future leaves every other write of the batch alone."""
    storage = await open_storage(tmp_path)
    try:
        first, second = put(storage, "a", 1, "x"), put(storage, "b", 1, "y")
        assert first is not second
        first.cancel()
        await second
        assert await storage.read("a") == (Version(1, "n1"), False, stored("x"))
        assert await storage.read("b") == (Version(1, "n1"), False, stored("y"))
    finally:
        await storage.close()


async def test_index_and_values_survive_reopening(tmp_path):
    storage = await open_storage(tmp_path)
    await put(storage, "live", 1, {"a": [1, 2]})
    await put(storage, "gone", 1, "x")
    await storage.write("gone", Version(2, "n1"), True, None, None)
    storage.add_hint("n2", "live", Version(1, "n1"))
    await storage.close()
    storage = await open_storage(tmp_path)
    try:
        entries = storage.loaded_entries
        assert entries["live"].version == Version(1, "n1") and not entries["live"].deleted
        assert entries["gone"].deleted and entries["gone"].version == Version(2, "n1")
        assert storage.loaded_hints == {"n2": {"live": Version(1, "n1")}}
        assert await storage.read("live") == (Version(1, "n1"), False, stored({"a": [1, 2]}))
        assert await storage.read("gone") == (Version(2, "n1"), True, None)
        assert await storage.read("never") is None
        # Many keys in one hop, the same rows, in any order, unknown keys included.
        assert await storage.read_many(["never", "gone", "live"]) == {
            "never": None, "gone": (Version(2, "n1"), True, None), "live": (Version(1, "n1"), False, stored({"a": [1, 2]}))}
    finally:
        await storage.close()


async def test_a_mend_rewrites_a_damaged_value_only_while_its_row_is_that_version(tmp_path):
    storage = await open_storage(tmp_path)
    try:
        await put(storage, "k", 5, "five", node="n2")
        with sqlite3.connect(tmp_path / DATABASE_FILE_NAME) as db:
            db.execute("UPDATE kv SET value = x'c1' WHERE key = 'k'")  # damaged on disk
        damaged = await storage.read("k")  # the error, in place of the row, for the core to hand on
        assert isinstance(damaged, DamagedValueError), damaged
        assert damaged.version == Version(5, "n2") and damaged.code == ErrorCode.UNAVAILABLE
        storage.mend("k", Version(5, "n2"), stored("five"), "n3")
        await put(storage, "other", 1, "a commit after it")  # the mend goes in this one or before
        assert await storage.read("k") == (Version(5, "n2"), False, stored("five"))
        await put(storage, "k", 6, "six", node="n1")
        storage.mend("k", Version(5, "n2"), stored("five"), "n3")  # too late: a write replaced that version
        await put(storage, "other", 2, "a commit after it")
        assert await storage.read("k") == (Version(6, "n1"), False, stored("six"))
    finally:
        await storage.close()


async def test_close_commits_what_is_queued(tmp_path):
    storage = await open_storage(tmp_path)
    writes = [put(storage, f"k{i}", 1, i) for i in range(100)]
    await storage.close()
    assert all(w.done() and w.exception() is None for w in writes)
    storage = await open_storage(tmp_path)
    try:
        assert len(storage.loaded_entries) == 100
    finally:
        await storage.close()


async def test_the_opening_log_line_counts_live_keys_and_tombstones_apart(tmp_path, caplog):
    storage = await open_storage(tmp_path)
    await asyncio.gather(*(put(storage, f"k{i}", 1, i) for i in range(3)))
    await storage.write("gone", Version(2, "n1"), True, None, None)
    await storage.close()
    with caplog.at_level("INFO", logger="kvwire.storage"):
        await (await open_storage(tmp_path)).close()
    assert "3 keys and 1 tombstones" in caplog.text, caplog.text  # as kvwire backup counts them


async def test_a_start_that_may_have_lost_a_minted_tag_takes_a_new_incarnation_and_a_clean_one_keeps_it(
        tmp_path, caplog):
    """The name this node mints tags under (kvwire/server/core/minter.py): none on a
    new cluster's directory; a new one, written before the node can mint, after an
    unclean stop and on a directory joining with --join; the same after a clean stop."""
    storage = await open_storage(tmp_path)
    assert storage.incarnation == ""
    await storage.close()  # clean
    storage = await open_storage(tmp_path)
    assert storage.incarnation == ""
    with caplog.at_level("INFO", logger="kvwire.storage"):
        await storage.close(clean=False)  # as a kill -9 leaves it: 'running' stays
        storage = await open_storage(tmp_path)
    first = storage.incarnation
    assert re.fullmatch(r"[a-z2-7]{8}", first), first
    assert f"mints its version tags as n1@{first} from now on: it starts after an unclean stop" in caplog.text
    await storage.close()
    storage = await open_storage(tmp_path)
    assert storage.incarnation == first  # a clean stop lost no tag it sent
    await storage.close(clean=False)
    storage = await open_storage(tmp_path)
    assert storage.incarnation not in ("", first)
    await storage.close()
    joining = await open_storage(tmp_path / "new", join=True)
    assert joining.joining and re.fullmatch(r"[a-z2-7]{8}", joining.incarnation)
    await joining.close()
    # A restored backup's mark (kvwire.server.backup) joins too, so it takes one as well.
    last = storage.incarnation
    with sqlite3.connect(tmp_path / DATABASE_FILE_NAME) as db:
        db.execute(META_SET, (JOINING, "1"))
        db.execute(META_SET, (BACKUP_TAKEN_AT, "1000.0"))
        db.execute(META_SET, ("running", "1"))  # a backup of a running node says it was killed
    caplog.clear()
    with caplog.at_level("INFO", logger="kvwire.storage"):
        storage = await open_storage(tmp_path)
    assert storage.joining and storage.incarnation not in ("", first, last)
    assert "it starts from a restored backup" in caplog.text  # not "after an unclean stop"
    await storage.close()


async def test_join_is_ignored_only_on_a_directory_that_has_joined_and_is_not_joining_again(tmp_path, caplog):
    """--join on a joined directory is ignored, and says so; on a restored backup of it,
    which is joining again (its copied JOINED mark notwithstanding), it is not "ignored"."""
    storage = await open_storage(tmp_path, join=True)
    storage.clear_joining()  # caught up from every peer
    await storage.close()
    with caplog.at_level("INFO", logger="kvwire.storage"):
        storage = await open_storage(tmp_path, join=True)
    assert not storage.joining and "--join ignored" in caplog.text
    await storage.close()
    caplog.clear()
    with sqlite3.connect(tmp_path / DATABASE_FILE_NAME) as db:
        db.execute(META_SET, (JOINING, "1"))  # what kvwire backup marks its copy with
    with caplog.at_level("INFO", logger="kvwire.storage"):
        storage = await open_storage(tmp_path, join=True)
    assert storage.joining and "--join ignored" not in caplog.text, caplog.text
    await storage.close()


async def test_a_database_is_claimed_once_its_first_start_has_committed(tmp_path):
    """kvwire up gives --join to a node whose database is not claimed (is_claimed)."""
    path = tmp_path / DATABASE_FILE_NAME
    assert not is_claimed(path)  # no file
    path.touch()
    assert not is_claimed(path)  # an empty file
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
    assert not is_claimed(path)  # a first start killed before its first commit
    (tmp_path / "garbage.sqlite3").write_bytes(b"not a database at all" * 100)
    assert not is_claimed(tmp_path / "garbage.sqlite3")
    storage = await open_storage(tmp_path)
    assert is_claimed(path)  # open, in WAL mode
    await storage.close()
    assert is_claimed(path)  # stopped cleanly: its -shm is gone


@pytest.mark.parametrize("sync, level", [(SyncMode.FULL, 2), (SyncMode.NORMAL, 1), (SyncMode.OFF, 0)])
async def test_the_opening_commit_is_full_and_the_writes_then_take_the_configured_sync(tmp_path, sync, level):
    storage = await open_storage(tmp_path, sync=sync)
    try:
        async with storage._writer.execute("PRAGMA synchronous") as cursor:
            assert (await cursor.fetchone())[0] == level
    finally:
        await storage.close()


async def test_a_data_dir_is_tied_to_its_node_id(tmp_path):
    await (await open_storage(tmp_path)).close()
    with pytest.raises(DataDirError, match="belongs to node 'n1'"):
        await open_storage(tmp_path, node_id="n2")


async def test_a_data_dir_is_tied_to_its_cluster_id(tmp_path):
    await (await open_storage(tmp_path, cluster_id="staging")).close()
    with pytest.raises(DataDirError, match="belongs to cluster 'staging', not 'prod'; use --cluster-id staging"):
        await open_storage(tmp_path, cluster_id="prod")
    await (await open_storage(tmp_path, cluster_id="staging")).close()  # its own cluster opens it


async def test_a_data_dir_made_before_cluster_ids_were_recorded_takes_the_first_one_it_meets(tmp_path):
    await (await open_storage(tmp_path)).close()
    db = sqlite3.connect(tmp_path / DATABASE_FILE_NAME)
    with db:
        db.execute("DELETE FROM meta WHERE name = 'cluster_id'")
    db.close()
    await (await open_storage(tmp_path, cluster_id="prod")).close()
    with pytest.raises(DataDirError, match="belongs to cluster 'prod'"):
        await open_storage(tmp_path, cluster_id="kvwire")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"node_id": ""}, "node id"),
        ({"node_id": "n 1"}, "node id"),
        ({"cluster_id": "a,b"}, "cluster id"),
        ({"port": 70000}, "outside 0-65535"),
        ({"sync": "sometimes"}, "sometimes"),
        ({"max_connections": 0}, "max_connections"),
        ({"cache_entries": -1}, "cache_entries"),
        ({"shutdown_timeout": 0}, "shutdown_timeout"),
        ({"failure_timeout": float("nan")}, "failure_timeout"),
        ({"write_timeout": float("inf")}, "write_timeout"),
        ({"heartbeat_interval": 0.3, "failure_timeout": 0.5}, "must exceed twice heartbeat_interval"),
        ({"heartbeat_interval": 1e-6}, r"heartbeat_interval \(1e-06 s\) must be at least 0.01 s"),
        ({"node_id": "n4", "members": parse_cluster("n1=127.0.0.1:1,n2=127.0.0.2:1")}, "not among the cluster members"),
        ({"members": parse_cluster("n1=127.0.0.1:1,n1=127.0.0.2:1")}, "unique"),
    ],
)
def test_server_config_rejects_bad_values_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServerConfig(**kwargs)


async def test_a_failed_group_commit_refuses_its_whole_batch_and_the_next_commit_works(tmp_path):
    """SQLite itself refuses one row (a trigger, a real failure inside the transaction): every
    write of that batch fails, none is half-applied, and storage goes on."""
    from kvwire.server.storage import StorageError

    storage = await open_storage(tmp_path)
    try:
        await put(storage, "before", 1, "kept")
        refuse_rows(tmp_path, "kv", "key", "poison")
        batch = [put(storage, "k1", 1, "a"), put(storage, "poison", 1, "p"), put(storage, "k2", 1, "b")]
        outcomes = await asyncio.gather(*batch, return_exceptions=True)
        assert all(isinstance(outcome, StorageError) for outcome in outcomes), outcomes
        assert "injected failure" in str(outcomes[0])
        assert await storage.read("k1") is None
        # The same keys and versions are accepted again once the row is allowed.
        accept_rows(tmp_path, "kv")
        await asyncio.gather(put(storage, "k1", 1, "a"), put(storage, "poison", 1, "p"))
    finally:
        await storage.close()
    reopened = await open_storage(tmp_path)
    try:
        assert await reopened.read("before") == (Version(1, "n1"), False, stored("kept"))
        assert await reopened.read("k1") == (Version(1, "n1"), False, stored("a"))
        assert await reopened.read("k2") is None
    finally:
        await reopened.close()


async def test_request_records_copied_from_a_peer_survive_reopening(tmp_path):
    """A joining node keeps the request records it copies (SaveRequests) as durably
    as its own: a restart after it joined must not forget them (docs/design.md 1.9)."""
    storage = await open_storage(tmp_path)
    try:
        await put(storage, "k", 9, "later")
        storage.save_requests([("put-1", "k", Version(5, "n3"), False), ("put-2", "j", Version(2, "n2"), True)])
        storage.save_requests([("put-1", "k", Version(4, "n3"), False)])  # older: the newer stays
        # The same tag firm where it was kept tentative (a joining node's pull,
        # then the peer's firm record): firm, as the node's memory has it.
        storage.save_requests([("put-3", "m", Version(7, "n1"), True)])
        await put(storage, "m", 7, "x")
        storage.save_requests([("put-3", "m", Version(7, "n1"), False), ("put-3", "m", Version(7, "n1"), True)])
    finally:
        await storage.close()
    storage = await open_storage(tmp_path)
    try:
        loaded = {(request, key): (version, tentative) for request, key, version, _age, tentative in storage.loaded_requests}
        assert loaded == {("put-1", "k"): (Version(5, "n3"), False), ("put-2", "j"): (Version(2, "n2"), True),
                          ("put-3", "m"): (Version(7, "n1"), False)}
    finally:
        await storage.close()


async def test_stranded_marks_outlive_a_restart_until_the_keys_row_passes_them(tmp_path):
    """A key a write left undecided (core Strand): a clean restart forgot it, and the
    node minted two above what a majority held (docs/design.md 1.2, step 2)."""
    import sqlite3

    storage = await open_storage(tmp_path)
    try:
        await put(storage, "k", 2, "failed")
        await put(storage, "j", 3, "failed")
        storage.strand("k", Version(2, "n1"))
        storage.strand("j", Version(3, "n1"))
        storage.strand("j", Version(1, "n1"))  # an older mark: the newer stays
        storage.strand("gone", Version(5, "n1"))  # no row (collected, or its commit failed)
        await put(storage, "x", 1, "flush")  # the marks ride the next commit
    finally:
        await storage.close()
    storage = await open_storage(tmp_path)
    try:
        assert sorted(storage.loaded_stranded) == [("j", Version(3, "n1")), ("k", Version(2, "n1"))]
        await put(storage, "k", 4, "newer", node="n3")  # passes k's mark
    finally:
        await storage.close()
    storage = await open_storage(tmp_path)
    try:
        assert storage.loaded_stranded == [("j", Version(3, "n1"))]
    finally:
        await storage.close()
    with sqlite3.connect(tmp_path / "kvwire.sqlite3") as db:  # the passed marks were deleted
        assert db.execute("SELECT key FROM stranded").fetchall() == [("j",)]


async def test_the_request_log_is_appended_to_and_a_restart_keeps_each_requests_newest_record(tmp_path):
    """Each record a commit keeps is a row of its own (no update of a row keyed
    by random ids: storage.SCHEMA says what that cost); a restart keeps, of each
    (request, key), the record the node's memory keeps: the higher tag, and of
    one tag the firm record over the tentative one, whichever came last."""
    import sqlite3

    storage = await open_storage(tmp_path)
    try:
        storage.save_requests([("put-1", "k", Version(5, "n3"), False), ("put-1", "k", Version(4, "n3"), False),
                               ("put-2", "j", Version(3, "n1"), False), ("put-2", "j", Version(3, "n1"), True),
                               ("put-3", "m", Version(7, "n1"), True), ("put-3", "m", Version(7, "n1"), False),
                               ("put-4", "m", Version(1, "n2"), True), ("put-4", "m", Version(2, "n1"), True)])
        await put(storage, "k", 9, "v")
    finally:
        await storage.close()
    with sqlite3.connect(tmp_path / "kvwire.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM request_log").fetchone() == (8,)
    storage = await open_storage(tmp_path)
    try:
        loaded = {(request, key): (version, tentative) for request, key, version, _age, tentative in storage.loaded_requests}
        assert loaded == {("put-1", "k"): (Version(5, "n3"), False), ("put-2", "j"): (Version(3, "n1"), False),
                          ("put-3", "m"): (Version(7, "n1"), False), ("put-4", "m"): (Version(2, "n1"), True)}
    finally:
        await storage.close()


async def test_a_record_grown_too_old_is_not_replaced_at_load_by_a_later_row_it_outranks(tmp_path):
    """The upsert kept one row per (request, key): the winner, with its time. In the
    log a later row it outranks (its own tag tentative, or a lower tag) has a row of
    its own, younger: once the winner is too old, nothing is loaded, as before."""
    import sqlite3
    import time

    storage = await open_storage(tmp_path)
    await storage.close()
    now = time.time()
    with sqlite3.connect(tmp_path / "kvwire.sqlite3") as db:
        db.executemany("INSERT INTO request_log VALUES (?, ?, ?, ?, ?, ?)",
                       # 70 s older than the newest record, from which a start counts ages.
                       [("firm-then-tentative", "k", 5, "n1", now - 90, 0), ("firm-then-tentative", "k", 5, "n1", now - 20, 1),
                        ("higher-then-lower", "k", 9, "n2", now - 90, 0), ("higher-then-lower", "k", 8, "n2", now - 20, 0),
                        ("fresh", "k", 3, "n1", now - 20, 0)])
    storage = await open_storage(tmp_path)
    try:
        assert [(request, version) for request, _key, version, _age, _tentative in storage.loaded_requests] == [
            ("fresh", Version(3, "n1"))]
    finally:
        await storage.close()


async def test_a_record_stamped_by_a_wall_clock_then_ahead_does_not_age_the_others(tmp_path):
    """An older kvwire stamped records with the wall clock: one written while it was two
    days ahead, before a step back, must not carry the log's clock days forward at the
    next start, making the records written since look two days old (dropped, a retry
    then applied twice)."""
    import sqlite3
    import time

    storage = await open_storage(tmp_path)
    await storage.close()
    now = time.time()
    with sqlite3.connect(tmp_path / "kvwire.sqlite3") as db:
        db.executemany("INSERT INTO request_log VALUES (?, ?, ?, ?, ?, ?)",
                       [("while-ahead", "k", 1, "n1", now + 2 * 86400, 0), ("since", "k", 2, "n1", now - 5, 0)])
    storage = await open_storage(tmp_path)
    try:
        loaded = {request: age for request, _key, _version, age, _tentative in storage.loaded_requests}
        assert set(loaded) == {"while-ahead", "since"}
        assert loaded["since"] < 1 and loaded["while-ahead"] < 1  # a time ahead counts as now
    finally:
        await storage.close()
    # On disk too: left days ahead, it would outlive its minute until the log's clock got there.
    with sqlite3.connect(tmp_path / "kvwire.sqlite3") as db:
        (latest,) = db.execute("SELECT max(at) FROM request_log").fetchone()
    assert latest <= now - 5 + 1


async def test_a_data_directory_of_the_old_requests_table_is_moved_to_the_log_once(tmp_path):
    """Data directories written before the request log kept the records in
    ``requests``, keyed by (request, key): the first open moves them to the log
    and drops the table, and the records load as before."""
    import sqlite3
    import time

    storage = await open_storage(tmp_path)
    await put(storage, "k", 9, "v")
    await storage.close()
    now = time.time()
    with sqlite3.connect(tmp_path / "kvwire.sqlite3") as db:
        db.executescript("""
            DROP TABLE request_log;
            CREATE TABLE requests (
                request TEXT NOT NULL, key TEXT NOT NULL, counter INTEGER NOT NULL, node TEXT NOT NULL,
                at REAL NOT NULL, tentative INTEGER NOT NULL, PRIMARY KEY (request, key)) WITHOUT ROWID;
            CREATE INDEX requests_at ON requests (at);
        """)
        db.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?)",
                       [("put-1", "k", 9, "n1", now - 5, 0), ("put-2", "j", 3, "n2", now - 1, 1),
                        ("expired", "k", 2, "n1", now - 3600, 0)])
    for _ in range(2):  # the second open finds nothing to move
        storage = await open_storage(tmp_path)
        try:
            loaded = {(request, key): (version, tentative) for request, key, version, _age, tentative in storage.loaded_requests}
            assert loaded == {("put-1", "k"): (Version(9, "n1"), False), ("put-2", "j"): (Version(3, "n2"), True)}
            assert await storage.read("k") == (Version(9, "n1"), False, stored("v"))
        finally:
            await storage.close()
        with sqlite3.connect(tmp_path / "kvwire.sqlite3") as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
            assert "requests" not in tables and "requests_at" not in tables and "request_log" in tables
            assert db.execute("SELECT count(*) FROM request_log").fetchone() == (3,)


async def test_request_records_of_a_failed_commit_are_kept_for_the_next(tmp_path):

    storage = await open_storage(tmp_path)
    try:
        refuse_rows(tmp_path, "request_log", "request", "poison")
        storage.save_requests([("copied", "k", Version(3, "n2"), False), ("poison", "k", Version(1, "n2"), False)])
        failed = await asyncio.gather(put(storage, "k", 9, "v"), return_exceptions=True)
        assert "injected failure" in str(failed[0])
        accept_rows(tmp_path, "request_log")
        await put(storage, "k", 9, "v")  # the next commit carries the copied records too
    finally:
        await storage.close()
    storage = await open_storage(tmp_path)
    try:
        assert {request for request, *_rest in storage.loaded_requests} == {"copied", "poison"}
    finally:
        await storage.close()


def held_commits(monkeypatch, *, failing_with: Exception | None = None):
    """Each group commit waits in SQLite's thread until the second event is set (the first
    says one has begun), then runs, or raises ``failing_with``: a commit still running
    while the test does something, to make a race sure."""
    import threading

    from kvwire.server import storage as storage_module

    entered, go_on = threading.Event(), threading.Event()
    commit = storage_module._write_transaction

    def held_commit(*args):
        entered.set()
        go_on.wait(10)
        if failing_with is not None:
            raise failing_with
        return commit(*args)

    monkeypatch.setattr(storage_module, "_write_transaction", held_commit)
    return entered, go_on


async def put_held_while_the_file_is_deleted(storage: Storage, tmp_path, entered) -> asyncio.Future:
    """A PUT whose commit ``held_commits`` holds, its database files deleted and found gone
    (``check_file``) meanwhile; the PUT's future, the commit still held."""
    putting = asyncio.ensure_future(put(storage, "k", 1, "v"))
    assert await asyncio.to_thread(entered.wait, 10)
    for path in tmp_path.glob(f"{DATABASE_FILE_NAME}*"):
        path.unlink()
    storage.check_file()
    return putting


async def test_a_commit_landing_after_the_file_was_found_gone_does_not_say_writes_work_again(tmp_path, monkeypatch):
    """A commit already running when ``check_file`` found the database file deleted
    lands, in the deleted file: it used to clear the refusal (and log "storage takes
    writes again"), so a busy node went on taking writes it could not keep (a
    reviewer's finding). The commit is held in SQLite's thread to make the race sure."""
    from kvwire.server.storage import StorageError

    entered, go_on = held_commits(monkeypatch)
    storage = await open_storage(tmp_path)
    try:
        landing = await put_held_while_the_file_is_deleted(storage, tmp_path, entered)
        assert storage.write_error is not None
        go_on.set()
        await landing  # it landed, in the deleted file
        assert storage.write_error == storage.file_lost
        with pytest.raises(StorageError, match="was deleted, or its directory moved"):
            await put(storage, "k2", 1, "v")
    finally:
        go_on.set()
        await storage.close()


async def test_deleting_the_write_ahead_log_alone_makes_the_storage_refuse_writes(tmp_path):
    """Commits go on into a deleted -wal, and a restart finds the database at its last
    checkpoint: every write since then, acknowledged, lost. Found gone, the storage
    refuses writes for good, as it does for the database file itself."""
    from kvwire.server.storage import StorageError, wal_path

    storage = await open_storage(tmp_path)
    try:
        await put(storage, "before", 1, "kept")
        storage.check_file()
        assert storage.write_error is None  # the log of the open is the log now
        wal_path(storage.path).unlink()
        storage.check_file()
        assert "write-ahead log" in storage.write_error and "was deleted" in storage.write_error
        with pytest.raises(StorageError, match="write-ahead log .* was deleted"):
            await put(storage, "after", 1, "v")
    finally:
        await storage.close()


async def test_many_commits_and_checkpoints_keep_the_same_write_ahead_log(tmp_path):
    """SQLite's own checkpoints (every 1,000 pages) reset the log but keep its file:
    ``check_file`` must not take them for a replacement."""
    from kvwire.server.storage import wal_path

    storage = await open_storage(tmp_path)
    try:
        value = "x" * 3000  # about a page per row: past the automatic checkpoint's 1,000 pages
        for batch in range(6):
            await asyncio.gather(*(put(storage, f"k{batch}-{n}", 1, value) for n in range(300)))
            storage.check_file()
        assert storage.write_error is None, storage.write_error
        # The log was reset and reused: it never held all that was written.
        assert wal_path(storage.path).stat().st_size < 6 * 300 * len(value)
    finally:
        await storage.close()


async def test_a_rejoin_marker_makes_the_next_start_join_even_a_directory_that_joined(tmp_path):
    """REJOIN, left by a node that stopped because its files were lost under it: the
    next start joins whatever it finds, a database that had joined included, without
    --join, and the marker goes once the joining mark is durable."""
    from kvwire.server.storage import REJOIN_FILE_NAME, mark_for_rejoin

    storage = await open_storage(tmp_path, join=True)
    try:
        assert storage.joining
        storage.clear_joining()
        await put(storage, "k", 1, "v")
    finally:
        await storage.close()
    storage = await open_storage(tmp_path)
    assert not storage.joining  # joined: a plain start votes
    await storage.close()
    mark_for_rejoin(tmp_path, "the database file was deleted")
    storage = await open_storage(tmp_path)
    try:
        assert storage.joining
        assert not (tmp_path / REJOIN_FILE_NAME).exists()
    finally:
        await storage.close()
    storage = await open_storage(tmp_path)  # a restart before it has caught up: still joining
    try:
        assert storage.joining
    finally:
        await storage.close()


async def test_hint_rows_of_a_failed_commit_go_again_before_those_queued_after_it(tmp_path):
    """A failed commit's bookkeeping is taken back, ahead of what was queued since: a hint
    dropped after the failure must stay dropped, the retried add not landing after it."""

    storage = await open_storage(tmp_path)
    try:
        refuse_rows(tmp_path, "kv", "key", "poison")
        storage.add_hint("n2", "dropped", Version(1, "n1"))
        storage.add_hint("n2", "kept", Version(2, "n1"))
        failed = await asyncio.gather(put(storage, "poison", 1, "p"), return_exceptions=True)
        assert "injected failure" in str(failed[0])
        storage.drop_hint("n2", "dropped", Version(1, "n1"))
        storage.add_hint("n3", "later", Version(3, "n1"))
        accept_rows(tmp_path, "kv")
        await put(storage, "k", 4, "v")
    finally:
        await storage.close()
    storage = await open_storage(tmp_path)
    try:
        assert storage.loaded_hints == {"n2": {"kept": Version(2, "n1")}, "n3": {"later": Version(3, "n1")}}
    finally:
        await storage.close()


async def test_a_commit_failing_after_the_file_was_found_gone_leaves_the_refusal_naming_the_file(tmp_path, monkeypatch):
    """The same race, the commit failing instead: its error replaced the lost file's in
    ``write_error``, and no probe runs once the file is lost, so HEALTH named a disk
    error for good instead of the deleted file (a review)."""
    from kvwire.server.storage import StorageError

    storage = await open_storage(tmp_path)
    entered, go_on = held_commits(monkeypatch, failing_with=sqlite3.OperationalError("disk I/O error"))
    try:
        failing = await put_held_while_the_file_is_deleted(storage, tmp_path, entered)
        go_on.set()
        with pytest.raises(StorageError, match="disk I/O error"):
            await failing
        assert storage.write_error == storage.file_lost and "was deleted" in storage.write_error
    finally:
        go_on.set()
        await storage.close()
