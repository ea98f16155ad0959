"""Peer links come back by themselves: after a refused HELLO, and after the peer is found silent.

n1 is a real node process; its peer n2 is scripted in this process, so the
test decides exactly what n1's link meets.
"""

import asyncio
import contextlib

from kvwire.protocol import NEED_DATA, Connection, ErrorReply, Hello, HelloReply, Ping, Pong, Side, encode
from kvwire.protocol.errors import ErrorCode
from kvwire.testing import NodeProcess, RawConnection


@contextlib.asynccontextmanager
async def scripted_peer(node_id, *, refuse_hellos=0, stop_answering=None):
    """Answers HELLO (the first ``refuse_hellos`` with BAD_REQUEST) and PING. While
    ``stop_answering`` (an asyncio.Event) is set, it reads everything and answers nothing."""
    counts = {"hellos": 0, "connections": 0}

    async def serve(reader, writer):
        counts["connections"] += 1
        codec = Connection(Side.NODE)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                codec.receive_data(data)
                while (request := codec.next_event()) is not NEED_DATA:
                    if stop_answering is not None and stop_answering.is_set():
                        continue
                    if isinstance(request, Hello):
                        counts["hellos"] += 1
                        if counts["hellos"] <= refuse_hellos:
                            reply = ErrorReply(request.id, ErrorCode.BAD_REQUEST, "protocol version 1 is not supported")
                        else:
                            reply = HelloReply(request.id, 1, node_id, "kvwire")
                    elif isinstance(request, Ping):
                        reply = Pong(request.id)
                    else:
                        continue
                    writer.write(encode(reply))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield "127.0.0.1:%d" % server.sockets[0].getsockname()[1], counts
    finally:
        server.close()


def peer_state(node, peer):
    with RawConnection(node.address) as conn:
        from kvwire.protocol import Health

        health = conn.request(Health(1)).health
    return next(p for p in health["cluster"]["nodes"] if p["node_id"] == peer)


async def poll(condition, timeout, what):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(condition):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_peer_that_refused_our_hello_is_linked_once_it_accepts(tmp_path):
    """Before, a BAD_REQUEST answer to HELLO ended the link task for good, silently."""
    async with scripted_peer("n2", refuse_hellos=2) as (n2, counts):
        node = NodeProcess("n1", data_dir=tmp_path / "n1")
        node.extra_args += ["--cluster", f"n1={node.address},n2={n2}"]
        await asyncio.to_thread(node.start)
        try:
            await asyncio.to_thread(node.wait_ready)
            await poll(lambda: peer_state(node, "n2")["state"] == "UP", 10, "n2 UP after two refused HELLOs")
            assert counts["hellos"] >= 3
        finally:
            await asyncio.to_thread(node.stop)
        assert "refused our HELLO" in node.log()


async def test_a_silent_peer_link_is_closed_and_dialled_again(tmp_path):
    """A peer that keeps its connection open but answers nothing is marked DOWN, and the
    link is closed and reopened, rather than waiting on the silent TCP connection."""
    silent = asyncio.Event()
    async with scripted_peer("n2", stop_answering=silent) as (n2, counts):
        node = NodeProcess("n1", data_dir=tmp_path / "n1")
        node.extra_args += ["--cluster", f"n1={node.address},n2={n2}"]
        await asyncio.to_thread(node.start)
        try:
            await asyncio.to_thread(node.wait_ready)
            await poll(lambda: peer_state(node, "n2")["state"] == "UP", 10, "n2 UP")
            assert counts["connections"] == 1
            silent.set()
            await poll(lambda: peer_state(node, "n2")["state"] == "DOWN", 5, "n2 DOWN once silent")
            await poll(lambda: counts["connections"] >= 2, 5, "n1 to dial n2 again")
            silent.clear()
            await poll(lambda: peer_state(node, "n2")["state"] == "UP", 5, "n2 UP on the new link")
        finally:
            await asyncio.to_thread(node.stop)
