"""A coordinator acknowledges a write only once its own commit is done (docs/protocol.md 6.10, steps 3-4).

Its REPLICATEs go out while it commits, so both peers may acknowledge first; a
success answered then, and a commit its disk refused after, would leave it
voting without the version. Here n1 is a real node; its two peers are scripted
in this process and acknowledge every REPLICATE at once, while the test holds
SQLite's write lock on n1's file, as a slow disk would hold its commit.
"""

import asyncio
import contextlib
import sqlite3

from kvwire import AsyncClient
from kvwire.protocol import NO_VERSION, Lookup, LookupReply, Ping, Pong, Replicate, ReplicateReply
from kvwire.secret_file import read_secret_file
from kvwire.testing import NodeProcess, ScriptedNode, wait_for_async
from kvwire.testing.cluster import new_secret_file


def committed_on(coordinator_db, key):
    """The tag n1's database holds for ``key`` now, or None."""
    with contextlib.closing(sqlite3.connect(f"file:{coordinator_db}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT counter, node FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else tuple(row)


def replicate_checker(coordinator_db, seen):
    """A peer's answers to n1: PING, LOOKUP, and each REPLICATE acknowledged at once,
    recorded with the tag n1's database held for that key when it arrived."""

    def answer(request):
        if isinstance(request, Ping):
            return Pong(request.id)
        if isinstance(request, Lookup):
            return LookupReply(request.id, NO_VERSION, False)
        if isinstance(request, Replicate):
            seen.append((request.key, tuple(request.version), committed_on(coordinator_db, request.key)))
            return ReplicateReply(request.id, True, request.version)
        return None

    return answer


async def test_a_put_is_acknowledged_only_once_the_coordinator_has_committed_it(tmp_path):
    seen = []
    db = tmp_path / "n1" / "kvwire.sqlite3"
    secret_file = new_secret_file(tmp_path)  # the scripted peers prove it, so n1 links to them
    secret = read_secret_file(secret_file)
    async with ScriptedNode(replicate_checker(db, seen), node_id="n2", secret=secret) as n2, \
            ScriptedNode(replicate_checker(db, seen), node_id="n3", secret=secret) as n3:
        node = NodeProcess("n1", data_dir=tmp_path / "n1")
        node.extra_args += ["--cluster", f"n1={node.address},n2={n2.address},n3={n3.address}",
                            "--cluster-secret-file", secret_file]
        await asyncio.to_thread(node.start)
        try:
            await asyncio.to_thread(node.wait_ready)
            async with AsyncClient([node.address], timeout=10) as client:
                # Peers start DOWN: writes need n1 to have heard both first.
                deadline = asyncio.get_running_loop().time() + 10
                while (await client.health())["cluster"]["healthy_nodes"] != 3:
                    assert asyncio.get_running_loop().time() < deadline, "n1 never saw its scripted peers UP"
                    await asyncio.sleep(0.02)
                # Hold SQLite's write lock, as a slow disk would hold n1's commit (its
                # busy timeout is 5 s): the REPLICATEs go out, both peers acknowledge.
                with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as lock:
                    lock.execute("BEGIN IMMEDIATE")
                    put = asyncio.create_task(client.put("k", "v"))
                    await wait_for_async(lambda: len(seen) >= 2, timeout=4, what="both peers' REPLICATEs")
                    assert [(key, held) for key, _tag, held in seen] == [("k", None)] * 2  # n1 has not committed
                    # Both acknowledged: only n1's own commit is missing, and the PUT waits for it.
                    done, _ = await asyncio.wait({put}, timeout=0.5)
                    assert not done, "acknowledged before the coordinator's own commit"
                    lock.execute("ROLLBACK")
                version = await put
                assert committed_on(db, "k") == tuple(version)
                assert {tag for _key, tag, _held in seen} == {tuple(version)}
        finally:
            await asyncio.to_thread(node.stop)
