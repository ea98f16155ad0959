"""Peer links come back by themselves: after a refused HELLO, and after the peer is found silent.

n1 is a real node process; its peer n2 is scripted in this process, so the
test decides exactly what n1's link meets.
"""

import asyncio

from kvwire.protocol import ErrorReply, Health, Hello, Ping, Pong
from kvwire.protocol.errors import ErrorCode
from kvwire.secret_file import read_secret_file
from kvwire.testing import NodeProcess, RawConnection, ScriptedNode, wait_for
from kvwire.testing.cluster import new_secret_file


def refusing_first_hellos(count):
    """Answers: the first ``count`` HELLOs get BAD_REQUEST, later ones are accepted; PINGs get PONG."""
    hellos = 0

    def answer(request):
        nonlocal hellos
        if isinstance(request, Hello):
            hellos += 1
            if hellos <= count:
                return ErrorReply(request.id, ErrorCode.BAD_REQUEST, "protocol version 1 is not supported")
            return None  # ScriptedNode's own HELLO_REPLY
        return Pong(request.id) if isinstance(request, Ping) else None

    return answer


def peer_state(node, peer):
    with RawConnection(node.address) as conn:
        health = conn.request(Health(1)).health
    return next(p for p in health["cluster"]["nodes"] if p["node_id"] == peer)


async def poll(condition, timeout, what):
    """wait_for in a thread: the scripted peer lives on this event loop and must keep answering."""
    await asyncio.to_thread(wait_for, condition, timeout=timeout, interval=0.05, what=what)


async def test_a_peer_that_refused_our_hello_is_linked_once_it_accepts(tmp_path):
    """Before, a BAD_REQUEST answer to HELLO ended the link task for good, silently."""
    secret_file = new_secret_file(tmp_path)
    async with ScriptedNode(refusing_first_hellos(2), node_id="n2", secret=read_secret_file(secret_file)) as n2:
        node = NodeProcess("n1", data_dir=tmp_path / "n1")
        node.extra_args += ["--cluster", f"n1={node.address},n2={n2.address}", "--cluster-secret-file", secret_file]
        await asyncio.to_thread(node.start)
        try:
            await asyncio.to_thread(node.wait_ready)
            await poll(lambda: peer_state(node, "n2")["state"] == "UP", 10, "n2 UP after two refused HELLOs")
            assert sum(isinstance(request, Hello) for request in n2.received) >= 3
        finally:
            await asyncio.to_thread(node.stop)
        assert "peer n2: handshake failed: protocol version 1 is not supported" in node.log()


async def test_a_silent_peer_link_is_closed_and_dialled_again(tmp_path):
    """A peer that keeps its connection open but answers nothing is marked DOWN, and the
    link is closed and reopened, rather than waiting on the silent TCP connection."""
    silent = asyncio.Event()

    def answer(request):
        if silent.is_set():
            return ScriptedNode.SILENT  # reads everything, answers nothing, keeps the connection
        return Pong(request.id) if isinstance(request, Ping) else None

    secret_file = new_secret_file(tmp_path)
    async with ScriptedNode(answer, node_id="n2", secret=read_secret_file(secret_file)) as n2:
        node = NodeProcess("n1", data_dir=tmp_path / "n1")
        node.extra_args += ["--cluster", f"n1={node.address},n2={n2.address}", "--cluster-secret-file", secret_file]
        await asyncio.to_thread(node.start)
        try:
            await asyncio.to_thread(node.wait_ready)
            await poll(lambda: peer_state(node, "n2")["state"] == "UP", 10, "n2 UP")
            assert n2.connections == 1
            silent.set()
            await poll(lambda: peer_state(node, "n2")["state"] == "DOWN", 5, "n2 DOWN once silent")
            await poll(lambda: n2.connections >= 2, 5, "n1 to dial n2 again")
            silent.clear()
            await poll(lambda: peer_state(node, "n2")["state"] == "UP", 5, "n2 UP on the new link")
        finally:
            await asyncio.to_thread(node.stop)
