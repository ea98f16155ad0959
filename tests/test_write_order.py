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
from kvwire.protocol import (
    NEED_DATA, NO_VERSION, Connection, Hello, HelloReply, Lookup, LookupReply, Ping, Pong, Replicate, ReplicateReply,
    Side, encode,
)
from kvwire.testing import NodeProcess


@contextlib.asynccontextmanager
async def scripted_peer(node_id, coordinator_db, seen):
    """A peer answering n1's HELLO, PING and LOOKUP; for each REPLICATE, records whether n1's
    database already held that key at that tag when it arrived."""

    def committed_on_coordinator(key):
        with contextlib.closing(sqlite3.connect(f"file:{coordinator_db}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT counter, node FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else tuple(row)

    async def serve(reader, writer):
        codec = Connection(Side.NODE)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                codec.receive_data(data)
                while (request := codec.next_event()) is not NEED_DATA:
                    if isinstance(request, Hello):
                        reply = HelloReply(request.id, 1, node_id, "kvwire")
                    elif isinstance(request, Ping):
                        reply = Pong(request.id)
                    elif isinstance(request, Lookup):
                        reply = LookupReply(request.id, NO_VERSION, False)
                    elif isinstance(request, Replicate):
                        held = committed_on_coordinator(request.key)
                        seen.append((request.key, tuple(request.version), held))
                        reply = ReplicateReply(request.id, True, request.version)
                    else:
                        continue
                    writer.write(encode(reply))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield "127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_no_peer_sees_a_tag_before_the_coordinator_has_committed_it(tmp_path):
    seen = []
    db = tmp_path / "n1" / "kvwire.sqlite3"
    async with scripted_peer("n2", db, seen) as n2, scripted_peer("n3", db, seen) as n3:
        node = NodeProcess("n1", data_dir=tmp_path / "n1")
        node.extra_args += ["--cluster", f"n1={node.address},n2={n2},n3={n3}"]
        await asyncio.to_thread(node.start)
        try:
            await asyncio.to_thread(node.wait_ready)
            async with AsyncClient([node.address], timeout=10) as client:
                versions = await asyncio.gather(*(client.put(f"k{n}", n) for n in range(40)))
        finally:
            await asyncio.to_thread(node.stop)
    assert len(versions) == 40
    replicated = {(key, tag) for key, tag, _ in seen}
    assert {(f"k{n}", tuple(version)) for n, version in enumerate(versions)} <= replicated
    early = [(key, tag, held) for key, tag, held in seen if held != tag]
    assert not early, f"REPLICATE arrived before the coordinator's commit: {early[:5]}"
