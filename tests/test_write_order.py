"""A coordinator commits a write before any peer sees its tag (docs/protocol.md 6.10, step 3).

Otherwise a crash between the send and the fsync could leave a peer holding a
tag the restarted coordinator does not know, and mint again for another value.
Here n1 is a real node; its two peers are scripted in this process, and each
REPLICATE they receive is checked against n1's SQLite file at that moment.
"""

import asyncio
import contextlib
import sqlite3

from kvwire import AsyncClient
from kvwire.protocol import NO_VERSION, Lookup, LookupReply, Ping, Pong, Replicate, ReplicateReply
from kvwire.secret_file import read_secret_file
from kvwire.testing import NodeProcess, ScriptedNode
from kvwire.testing.cluster import new_secret_file


def replicate_checker(coordinator_db, seen):
    """A peer's answers to n1: PING, LOOKUP, and each REPLICATE recorded with whether
    n1's database already held that key at that tag when it arrived."""

    def committed_on_coordinator(key):
        with contextlib.closing(sqlite3.connect(f"file:{coordinator_db}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT counter, node FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else tuple(row)

    def answer(request):
        if isinstance(request, Ping):
            return Pong(request.id)
        if isinstance(request, Lookup):
            return LookupReply(request.id, NO_VERSION, False)
        if isinstance(request, Replicate):
            seen.append((request.key, tuple(request.version), committed_on_coordinator(request.key)))
            return ReplicateReply(request.id, True, request.version)
        return None

    return answer


async def test_no_peer_sees_a_tag_before_the_coordinator_has_committed_it(tmp_path):
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
                versions = await asyncio.gather(*(client.put(f"k{n}", n) for n in range(40)))
        finally:
            await asyncio.to_thread(node.stop)
    assert len(versions) == 40
    replicated = {(key, tag) for key, tag, _ in seen}
    assert {(f"k{n}", tuple(version)) for n, version in enumerate(versions)} <= replicated
    early = [(key, tag, held) for key, tag, held in seen if held != tag]
    assert not early, f"REPLICATE arrived before the coordinator's commit: {early[:5]}"
