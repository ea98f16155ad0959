"""A stopping node waits for the requests it left pending (``Node.wait_answered``),
and no longer than ``shutdown_timeout``.

The node runs in this process (``kvwire.server.app.serve``) so that the test can
give it a short shutdown timeout; its peer n2 is scripted on the same event loop.
n2 answers PING, so it stays UP, and answers the PUT's write only as each test
says, so the PUT is still pending when the node is told to stop.
"""

import asyncio
import gc
import logging
import socket

import pytest

from kvwire.client import ClientConnection
from kvwire.protocol import (CLOSED, NEED_DATA, Connection, ErrorCode, ErrorReply, Get, GetReply, Lookup, LookupReply, Ping,
                             Pong, Put, PutReply, Replicate, ReplicateReply, Side, encode)
from kvwire.protocol.errors import KeyNotFoundError, UnavailableError
from kvwire.protocol.messages import NO_VERSION, Version
from kvwire.secret_file import read_secret_file
from kvwire.server import app
from kvwire.server.app import serve
from kvwire.server.connection import GOING_AWAY
from kvwire.server.config import ServerConfig, SyncMode, parse_cluster
from kvwire.server.in_process import NodeSlot
from kvwire.server.storage import Storage
from kvwire.testing import ScriptedNode, accepts_connections, free_port, wait_for_async
from kvwire.testing.cluster import new_secret_file


@pytest.fixture(autouse=True)
def garbage_collector_as_it_was():
    """``serve`` tunes the collector for a node process (gc.freeze, higher
    thresholds); this process goes on to run other tests."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


async def serve_here(config: ServerConfig, caplog, ready: str) -> tuple[asyncio.Event, asyncio.Task]:
    """The node of ``config`` served on this event loop, once its log says
    ``ready``: the event that stops it, and its task."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop=stop))
    try:
        await wait_for_async(lambda: ready in caplog.text, timeout=10, what=f"the node's log saying {ready!r}")
    except BaseException:
        stop.set()
        raise
    return stop, task


def only_pings(request):
    """n2's answers: PONGs, so that it stays UP, and nothing else."""
    return Pong(request.id) if isinstance(request, Ping) else ScriptedNode.SILENT


async def stop_with_a_put_pending(tmp_path, caplog, n2_answer, *, shutdown_timeout: float,
                                  on_stop=lambda port, connection, n2: None) -> tuple[asyncio.Future, float]:
    """Start n1 beside the scripted n2, send a PUT, stop n1 once n2 has the PUT's
    LOOKUP or REPLICATE (calling ``on_stop(n1's port, the connection, n2)`` then, and
    awaiting what it returns, if anything); the PUT's future, and the seconds n1 took
    to stop."""
    caplog.set_level(logging.INFO)
    secret = read_secret_file(new_secret_file(tmp_path))
    async with ScriptedNode(n2_answer, answers_hello=False, node_id="n2", secret=secret) as n2:
        port = free_port("127.0.0.1")
        config = ServerConfig(node_id="n1", port=port, data_dir=tmp_path / "n1", cluster_secret=secret,
                              members=parse_cluster(f"n1=127.0.0.1:{port},n2={n2.address}"),
                              shutdown_timeout=shutdown_timeout, write_timeout=30.0)
        stop, task = await serve_here(config, caplog, "quorum available")  # n2 UP
        connection = None
        try:
            connection = await ClientConnection.open("127.0.0.1", port, connect_timeout=5)
            put = connection.submit(Put, "k", 1)
            await wait_for_async(lambda: any(isinstance(r, (Lookup, Replicate)) for r in n2.received),
                                 timeout=10, what="the PUT's LOOKUP or REPLICATE at n2")
            loop = asyncio.get_running_loop()
            stopping_at = loop.time()
            stop.set()
            stopped = on_stop(port, connection, n2)
            if stopped is not None:
                await stopped
            await asyncio.wait_for(task, timeout=20)
            return put, loop.time() - stopping_at
        finally:
            stop.set()
            if connection is not None:
                connection.close()


async def test_a_request_unanswered_past_the_shutdown_timeout_is_counted_and_the_node_stops(tmp_path, caplog):
    put, stopped_after = await stop_with_a_put_pending(tmp_path, caplog, only_pings, shutdown_timeout=0.3)
    assert "shutdown timeout: 1 requests unanswered" in caplog.text
    assert stopped_after < 5  # the shutdown timeout, not the write's 30 s
    assert put.done() and put.exception() is not None  # unanswered: its connection closed


async def test_a_request_answered_during_the_shutdown_wait_reaches_its_client(tmp_path, caplog):
    """n2 applies the REPLICATE only once n1 is stopping: the PUT is answered
    within the wait, and its reply written before the connection closes."""
    stopping = asyncio.Event()

    def answer(request):
        if isinstance(request, Ping):
            return Pong(request.id)
        if isinstance(request, Lookup):  # a write's first round may be a LOOKUP: never written
            return LookupReply(request.id, NO_VERSION, False)
        if isinstance(request, Replicate):
            return applied_once_stopping(request)
        return ScriptedNode.SILENT

    async def applied_once_stopping(request):
        await stopping.wait()
        return ReplicateReply(request.id, True, request.version, NO_VERSION, False)

    put, _ = await stop_with_a_put_pending(tmp_path, caplog, answer, shutdown_timeout=10.0,
                                           on_stop=lambda *_: stopping.set())
    assert isinstance(put.result(), PutReply)
    assert "shutdown timeout" not in caplog.text


async def test_a_request_read_while_the_node_stops_is_refused_not_started(tmp_path, caplog):
    """The node waits for the requests it started before it began to stop, then closes
    every connection: one it started during the wait could be applied with its answer
    never written (DELETEs applied under rolling restarts, their clients told only that
    the connection closed; found by an operations probe). It is refused instead."""
    async def send_one_more(port, connection, n2):
        await wait_for_async(lambda: not accepts_connections(f"127.0.0.1:{port}", timeout=1), timeout=5,
                             what="n1 no longer accepting")
        late = connection.submit(Put, "late", 2)  # read during the shutdown's wait
        with pytest.raises(UnavailableError, match="shutting down; request not started") as refused:
            await asyncio.wait_for(late, 5)
        assert refused.value.maybe_applied is False
        assert not any(getattr(request, "key", None) == "late" for request in n2.received)

    # The first PUT stays pending: n2 never answers its write.
    first, _ = await stop_with_a_put_pending(tmp_path, caplog, only_pings, shutdown_timeout=3.0,
                                             on_stop=send_one_more)
    assert first.done()


async def test_requests_still_arriving_do_not_hold_the_stop_to_its_timeout(tmp_path, caplog):
    """The wait is for the requests pending when it began, as a snapshot of
    futures was: clients that keep PUTs in flight while the node stops (their
    connections are read until closed) do not make it sit out the timeout."""
    caplog.set_level(logging.INFO)
    port = free_port("127.0.0.1")
    config = ServerConfig(node_id="n1", port=port, data_dir=tmp_path / "n1", shutdown_timeout=6.0)
    stop, task = await serve_here(config, caplog, "listening on")
    connections = []
    answered = 0

    def keep_one_in_flight(connection, number):
        def again(done):
            nonlocal answered
            if not done.cancelled() and done.exception() is None:
                answered += 1
                keep_one_in_flight(connection, number + 1)
        try:
            connection.submit(Put, f"k{number % 100}", number).add_done_callback(again)
        except Exception:  # noqa: BLE001 - the connection is closing: stop
            pass

    def one_each_loop_turn(connection, number=0):
        """A PUT every turn of the loop, answered or not, until the connection
        closes (at most 40,000): some request is then pending at nearly every
        instant, so a wait for none at all would last the whole timeout."""
        if number == 40_000:
            return
        try:
            connection.submit(Put, f"o{number % 100}", number).add_done_callback(
                lambda done: done.cancelled() or done.exception())
        except Exception:  # noqa: BLE001 - the connection is closing: stop
            return
        asyncio.get_running_loop().call_soon(one_each_loop_turn, connection, number + 1)

    try:
        connections = [await ClientConnection.open("127.0.0.1", port, connect_timeout=5) for _ in range(4)]
        for connection in connections:
            for slot in range(16):
                keep_one_in_flight(connection, slot * 10_000)
        one_each_loop_turn(connections[0])
        await wait_for_async(lambda: answered > 2_000, timeout=20, what="2,000 PUTs answered")
        loop = asyncio.get_running_loop()
        stopping_at = loop.time()
        stop.set()
        await asyncio.wait_for(task, timeout=20)
        stopped_after = loop.time() - stopping_at
    finally:
        stop.set()
        for connection in connections:
            connection.close()
    assert "shutdown timeout" not in caplog.text
    assert stopped_after < 3  # half the timeout: the PUTs pending at the stop take a group commit or two


async def test_a_stopping_node_says_it_read_nothing_more_ends_its_stream_and_waits_for_the_other_end(
        tmp_path, caplog, monkeypatch):
    """Once it has answered every request it read, a stopping node sends one ERROR
    UNAVAILABLE whose id is nil and whose maybe_applied is false: what it has not
    answered it did not read, so a client may send that to another node, a DELETE
    included (docs/protocol.md 8). Before, a request on its way as the node closed
    was lost with no word, and a DELETE then failed as undecided though it was never
    read (a client probe: DELETEs failing under rolling restarts of n1). The node
    then ends its stream and discards what comes, until the other end closes: a
    close with unread bytes resets the connection, and the reset can destroy the
    replies not read yet."""
    monkeypatch.setattr(app, "GO_AWAY_LINGER", 60.0)  # the stop can then end only because this end closed
    caplog.set_level(logging.INFO)
    port = free_port("127.0.0.1")
    config = ServerConfig(node_id="n1", port=port, data_dir=tmp_path / "n1", shutdown_timeout=10.0)
    stop, task = await serve_here(config, caplog, "listening on")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = Connection(Side.CLIENT)

    async def read_replies(until) -> list:
        events = []
        while not until(events):
            data = await asyncio.wait_for(reader.read(65536), timeout=10)
            replies.receive_data(data)
            while (event := replies.next_event()) not in (NEED_DATA, CLOSED):
                events.append(event)
            if not data:
                break
        return events

    try:
        unread = encode(Put(2, "unread", 2))
        writer.write(encode(Put(1, "answered", 1)) + unread[:7])  # the second frame begun, not finished
        answered = await read_replies(lambda events: events)
        assert [type(event) for event in answered] == [PutReply]
        stop.set()
        notice = await read_replies(lambda events: False)  # to the end of the node's stream
        assert [(type(event), event.id, event.code, event.message, event.maybe_applied) for event in notice] == [(ErrorReply, None, ErrorCode.UNAVAILABLE, GOING_AWAY, False)]
        writer.write(unread[7:])  # discarded: the node said it reads nothing more
        await writer.drain()
        assert not task.done()  # it waits for this end (GO_AWAY_LINGER is 60 s here)
        writer.close()
        await asyncio.wait_for(task, timeout=10)
    finally:
        stop.set()
        writer.close()
        await asyncio.wait_for(task, timeout=20)
    caplog.clear()  # the next start's own "listening on"
    stop, task = await serve_here(config, caplog, "listening on")
    connection = None
    try:
        connection = await ClientConnection.open("127.0.0.1", port, connect_timeout=5)
        assert (await connection.request(Get, "answered")).value == 1
        with pytest.raises(KeyNotFoundError):
            await connection.request(Get, "unread")
    finally:
        stop.set()
        if connection is not None:
            connection.close()
        await asyncio.wait_for(task, timeout=20)


async def test_a_reply_callback_that_raises_is_logged_and_the_node_serves_on(tmp_path, caplog, monkeypatch):
    """``Node._respond`` calls a pending reply's callback inside ``_perform``: one
    that raises is logged there, as the loop logs a failing callback, and must
    not take the node's later work with it. (Nothing found makes the real
    callback, ``NodeProtocol._finish``, raise; this one is made to, once.)"""
    from kvwire.server.connection import NodeProtocol

    finish = NodeProtocol._finish
    raised = []

    def finish_failing_once(self, *args):
        if not raised:
            raised.append(True)
            raise RuntimeError("a reply callback failed")
        return finish(self, *args)

    monkeypatch.setattr(NodeProtocol, "_finish", finish_failing_once)
    caplog.set_level(logging.INFO)
    port = free_port("127.0.0.1")
    config = ServerConfig(node_id="n1", port=port, data_dir=tmp_path / "n1", shutdown_timeout=0.5)
    stop, task = await serve_here(config, caplog, "listening on")
    connection = None
    try:
        connection = await ClientConnection.open("127.0.0.1", port, connect_timeout=5)
        lost = connection.submit(Put, "first", 1)  # a lone node's PUT waits on its commit: pending
        lost.add_done_callback(lambda done: done.cancelled() or done.exception())  # failed at the close
        await wait_for_async(lambda: "internal error queueing a reply" in caplog.text, timeout=10,
                             what="the failing callback logged")
        assert "a reply callback failed" in caplog.text and not lost.done()
        second = await asyncio.wait_for(connection.submit(Put, "second", 2), timeout=10)
        assert isinstance(second, PutReply) and second.created
    finally:
        stop.set()
        if connection is not None:
            connection.close()
        await asyncio.wait_for(task, timeout=20)


@pytest.mark.parametrize("lost", [False, True], ids=["nothing-lost", "a-sent-tag-lost"])
async def test_a_stop_while_a_lost_sent_tag_is_unpassed_is_marked_unclean(tmp_path, caplog, lost):
    """The core keeps a tag it sent and then lost (its disk refused it) in memory
    only, and a peer's request record may still name it after the node has caught
    up. A SIGTERM then must not count as a clean stop, or the next start would
    forget the tag and could mint it again under the same name: the data directory
    keeps its 'running' mark, so the next start joins again under a new
    incarnation (kvwire/server/core/minter.py). The loss is handed to the core as
    the shell hands it a failed commit; the stop and the files are the real ones."""
    caplog.set_level(logging.INFO)
    secret = read_secret_file(new_secret_file(tmp_path))
    slot = NodeSlot()
    async with ScriptedNode(lambda request: Pong(request.id) if isinstance(request, Ping) else ScriptedNode.SILENT,
                            answers_hello=False, node_id="n2", secret=secret) as n2:
        port = free_port("127.0.0.1")
        config = ServerConfig(node_id="n1", port=port, data_dir=tmp_path / "n1", cluster_secret=secret,
                              members=parse_cluster(f"n1=127.0.0.1:{port},n2={n2.address}"))
        stop = asyncio.Event()
        task = asyncio.create_task(serve(config, stop=stop, slot=slot))
        try:
            await wait_for_async(lambda: "quorum available" in caplog.text, timeout=10, what="n1 seeing n2 UP")
            core = slot.node.core
            if lost:
                core.lost_a_sent_tag("k", Version(4, "n1"))
                assert core.joining
                core.repair_round_completed("n2", core.join_generation)  # caught up: n2 held nothing of k
            assert not core.joining and core.stops_cleanly is not lost
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=20)
    assert ("its next start catches up from every peer" in caplog.text) is lost
    storage = await Storage.open(tmp_path / "n1", node_id="n1", sync=config.sync)
    try:
        assert storage.unclean is lost
        assert (storage.incarnation != "") is lost
    finally:
        await storage.close()


async def test_a_start_that_fails_to_listen_keeps_what_its_opening_found(tmp_path):
    """The last run was killed; this start opens the files, then cannot bind its
    port. Closing them on the way out must not record a clean stop: the next start
    still catches up first, as the killed run's REPLICATEs may be out there."""
    storage = await Storage.open(tmp_path / "n1", node_id="n1", sync=SyncMode.FULL)
    await storage.close(clean=False)  # as kill -9 leaves it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServerConfig(node_id="n1", port=port, data_dir=tmp_path / "n1", insecure=True)
        with pytest.raises(OSError):
            await serve(config, stop=asyncio.Event())
    storage = await Storage.open(tmp_path / "n1", node_id="n1", sync=SyncMode.FULL)
    try:
        assert storage.unclean
    finally:
        await storage.close()


async def test_a_lone_node_on_a_restored_backup_has_joined_once_it_starts(tmp_path, caplog):
    """kvwire backup marks its copy joining; a node with no peers has nothing to
    catch up from, so its first start ends the mark (and takes one incarnation,
    not one per start)."""
    storage = await Storage.open(tmp_path / "n1", node_id="n1", sync=SyncMode.FULL, join=True)  # the mark
    await storage.close()
    caplog.set_level(logging.INFO)
    config = ServerConfig(node_id="n1", port=free_port("127.0.0.1"), data_dir=tmp_path / "n1", insecure=True)
    stop, task = await serve_here(config, caplog, "running alone")
    stop.set()
    await asyncio.wait_for(task, timeout=20)
    storage = await Storage.open(tmp_path / "n1", node_id="n1", sync=SyncMode.FULL)
    try:
        assert not storage.joining and not storage.unclean
        first = storage.incarnation
    finally:
        await storage.close()
    storage = await Storage.open(tmp_path / "n1", node_id="n1", sync=SyncMode.FULL)
    try:
        assert first and storage.incarnation == first
    finally:
        await storage.close()
