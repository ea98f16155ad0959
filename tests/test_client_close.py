"""A closed client holds no sockets, even to a hung node.

A hung node (SIGSTOP) keeps its connections open but reads nothing and answers
nothing, so a graceful close, which waits for the write buffer to drain and,
over TLS, for the node's close_notify, never finishes. The client aborts its
connections instead: when it is closed, and when it gives one up as hung.
Each test checks the sockets this process holds (``own_sockets_to``) while the
node is still stopped.
"""

import asyncio
import contextlib
import gc
import sys
import threading
import warnings

import pytest
import uvloop

from kvwire import AsyncClient, Client, KvwireConnectionError, RetryPolicy
from kvwire.testing import DevCerts, NodeProcess, own_sockets_to, started_together, wait_for, wait_for_async

FAST = RetryPolicy(attempts=4, base_delay=0.02, attempt_timeout=0.5, cooldown=2.0)
# Far more than close() takes when it does not wait for the node (a few milliseconds).
PROMPTLY = 5.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> DevCerts:
    return DevCerts.create(tmp_path_factory.mktemp("tls") / "certs", hosts=["127.0.0.2"])


@pytest.fixture
def tls_nodes(tmp_path, certs):
    """n1 and n2 serving TLS, on 127.0.0.1 and .2."""
    nodes = [NodeProcess(f"n{i}", data_dir=tmp_path / f"n{i}", host=f"127.0.0.{i}", tls=certs,
                         extra_args=["--sync", "off"]) for i in (1, 2)]
    with started_together(nodes):
        yield nodes


async def close_promptly(client: AsyncClient) -> None:
    await asyncio.wait_for(client.close(), PROMPTLY)


async def test_close_lets_go_of_a_tls_connection_to_a_hung_node(tls_nodes):
    hung = tls_nodes[0]
    client = AsyncClient(hung.address, timeout=20, **hung.client_options)
    await client.ping()
    hung.pause()
    try:
        call = asyncio.ensure_future(client.get("k"))
        await wait_for_async(hung.unread_bytes, timeout=5, what="the GET waiting in the stopped node's socket")
        await close_promptly(client)
        await wait_for_async(lambda: own_sockets_to(hung.address) == 0, timeout=PROMPTLY,
                             what="no socket left to the stopped node")
        with pytest.raises(KvwireConnectionError, match="closed"):
            await call
    finally:
        hung.resume()


def test_sync_close_lets_go_of_a_tls_connection_to_a_hung_node(tls_nodes):
    hung = tls_nodes[0]
    client = Client(hung.address, timeout=20, **hung.client_options)
    client.ping()
    hung.pause()
    try:
        failures: list[BaseException] = []

        def call() -> None:
            try:
                client.get("k")
            except BaseException as exc:  # noqa: BLE001 - the test reads it below
                failures.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        wait_for(hung.unread_bytes, timeout=5, what="the GET waiting in the stopped node's socket")
        # In a thread of its own: a close() that waits for the node would wait until it resumes.
        closer = threading.Thread(target=client.close, daemon=True)
        closer.start()
        closer.join(PROMPTLY)
        assert not closer.is_alive(), "close() waits for the stopped node"
        wait_for(lambda: own_sockets_to(hung.address) == 0, timeout=PROMPTLY, what="no socket left to the stopped node")
        caller.join(PROMPTLY)
        assert [type(exc) for exc in failures] in ([KvwireConnectionError], [RuntimeError]), failures
    finally:
        hung.resume()


async def test_a_tls_connection_given_up_as_hung_is_let_go_at_once(tls_nodes):
    hung, other = tls_nodes
    async with AsyncClient([hung.address, other.address], timeout=5, retry=FAST, **hung.client_options) as client:
        assert (await client.health())["node_id"] == "n1"
        hung.pause()
        try:
            assert (await client.health())["node_id"] == "n2"  # after the attempt timeout on n1
            # The connection given up on was n1's last: nothing of the client holds it any more.
            await wait_for_async(lambda: own_sockets_to(hung.address) == 0, timeout=PROMPTLY,
                                 what="no socket left to the stopped node")
            await close_promptly(client)
            assert own_sockets_to(other.address) == 0
        finally:
            hung.resume()


async def test_close_drops_writes_buffered_for_a_hung_node(node):
    client = AsyncClient(node.address, timeout=20)
    await client.ping()
    [endpoint] = client._endpoints.all
    connection = await endpoint.connection()
    node.pause()
    try:
        calls = [asyncio.ensure_future(client.put(f"big/{i}", b"x" * 1_000_000)) for i in range(64)]
        # Bounded by the 64 MB sent: the kernel's buffers of both ends fill, and the rest waits in the client.
        await wait_for_async(lambda: connection.writing_paused, timeout=10,
                             what="writes the kernel would not take, held by the client")
        await close_promptly(client)
        await wait_for_async(lambda: own_sockets_to(node.address) == 0, timeout=PROMPTLY,
                             what="no socket left to the stopped node")
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(result, KvwireConnectionError) for result in results), results
    finally:
        node.resume()


@pytest.mark.parametrize("new_loop", [asyncio.SelectorEventLoop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_an_async_client_moved_to_a_new_loop_lets_go_of_the_old_loops_sockets(tmp_path, new_loop):
    """asyncio's own loop cannot close a transport once the loop is closed: the
    sockets of each earlier ``asyncio.run`` stayed open until garbage collected."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as node:
        client = AsyncClient(node.address, timeout=5)
        collected = gc.isenabled()
        gc.disable()  # the garbage collector would close them, sooner or later
        try:
            for _ in range(3):
                with asyncio.Runner(loop_factory=new_loop) as runner:
                    runner.run(client.ping())
                assert own_sockets_to(node.address) <= 1  # the last loop's, closed or not
            with asyncio.Runner(loop_factory=new_loop) as runner:
                runner.run(client.close())
            assert own_sockets_to(node.address) == 0
        finally:
            if collected:
                gc.enable()


def test_a_call_left_waiting_on_a_closed_loop_does_not_fail_the_next_loops_first_call(tmp_path):
    """Failing the old loop's waiters scheduled their wake-ups on that closed loop, which
    raised RuntimeError out of the new loop's first call (a review found it)."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as node:
        client = AsyncClient(node.address, timeout=30)
        old = asyncio.new_event_loop()
        old.run_until_complete(client.ping())
        node.pause()
        try:
            left = old.create_task(client.get("k"))
            old.run_until_complete(wait_for_async(node.unread_bytes, timeout=5, what="the GET in the stopped node's socket"))
        finally:
            node.resume()
        old.close()  # the GET still waiting
        assert not left.done()
        # Ended here rather than by the garbage collector, whenever it runs: its own exit
        # (the call's deadline) raises on the closed loop, and run from the collector in
        # the middle of a later compile() that confused CPython 3.11's AST recursion count.
        with contextlib.suppress(RuntimeError):
            left.get_coro().close()
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            assert runner.run(client.ping()) >= 0
            assert own_sockets_to(node.address) == 1  # the new loop's; the old one's closed
            runner.run(client.close())
        assert own_sockets_to(node.address) == 0


@pytest.mark.parametrize("new_loop", [asyncio.SelectorEventLoop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_an_async_client_closed_from_another_loop_while_its_own_is_idle_returns_at_once(tmp_path, new_loop):
    """Used with run_until_complete on one loop, then closed with asyncio.run: the close was
    handed to the idle loop and close() waited the client's timeout for it, in vain (a client
    probe). It returns at once now; the close runs at that loop's next turn, which fails the
    call left waiting there and lets go of the sockets."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as node:
        client = AsyncClient(node.address, timeout=30)
        used = new_loop()
        try:
            used.run_until_complete(client.ping())
            node.pause()
            try:
                left = used.create_task(client.get("k"))
                used.run_until_complete(wait_for_async(node.unread_bytes, timeout=5,
                                                       what="the GET in the stopped node's socket"))
                with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                    runner.run(asyncio.wait_for(client.close(), PROMPTLY))  # the client's timeout is 30 s
                with pytest.raises(KvwireConnectionError, match="connection closed by the client"):
                    used.run_until_complete(left)  # the loop's next turn: the close runs first
                assert own_sockets_to(node.address) == 0
            finally:
                node.resume()
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # nothing left unawaited on it
                used.close()


@pytest.mark.parametrize("new_loop", [asyncio.SelectorEventLoop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_an_async_client_closed_from_another_loop_as_its_own_loops_run_ends_returns_and_lets_go(node, new_loop):
    """Closed from another thread while its own loop was busy, and that loop's run then
    ended: asyncio.run cancelled the close it had been handed, close() raised CancelledError
    into its caller as if the caller had been cancelled, and the socket stayed open (a client
    probe: 10 of 10 trials). It returns now, and the socket is closed as that loop's run shuts down."""
    client = AsyncClient(node.address, timeout=5)
    used, release = threading.Event(), threading.Event()

    async def own_work() -> None:
        await client.ping()
        used.set()
        release.wait(PROMPTLY)  # busy: the close handed to this loop waits for its next turn

    def run_its_own_loop() -> None:
        with asyncio.Runner(loop_factory=new_loop) as runner:  # as asyncio.run: cancels what is left, closes
            runner.run(own_work())

    owner = threading.Thread(target=run_its_own_loop)
    owner.start()
    try:
        assert used.wait(PROMPTLY)

        async def close_while_it_is_busy() -> None:
            closing = asyncio.ensure_future(client.close())
            await wait_for_async(lambda: client.closed, timeout=PROMPTLY, what="the close handed to the busy loop")
            release.set()  # its run ends now, cancelling what it has not run
            await asyncio.wait_for(closing, PROMPTLY)

        asyncio.run(close_while_it_is_busy())  # raised CancelledError
    finally:
        release.set()
        owner.join(PROMPTLY)
    # Closed by the callback that loop's run took as it shut down, not by the collector.
    wait_for(lambda: own_sockets_to(node.address) == 0, timeout=PROMPTLY, what="no socket left to the node")


def test_a_client_dropped_without_close_is_closed_with_a_resource_warning(node):
    """A client probe made 30 blocking Clients in a loop and dropped each unclosed: 31
    threads stayed, each with its event loop and sockets. Collected, a Client now
    closes itself, and warns, as asyncio's transports and subprocess.Popen do."""
    def threads() -> int:
        return sum(thread.name == "kvwire-client-loop" for thread in threading.enumerate())

    before = threads()
    with pytest.warns(ResourceWarning, match="was never closed"):
        for _ in range(5):
            client = Client([node.address], timeout=5)
            client.ping()
            del client
            gc.collect()
    wait_for(lambda: threads() == before, timeout=10, what="the dropped clients' threads ending")
    assert own_sockets_to(node.address) == 0
    with Client([node.address], timeout=5) as closed_properly, warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        closed_properly.ping()


def test_a_client_dropped_or_closed_inside_a_running_event_loop_is_closed_too(node):
    """A reviewer dropped Clients inside asyncio.run: each finalizer failed ("Cannot run
    the event loop while another loop is running") and left its loop's descriptors
    open, as an explicit close() there did. The loop's own thread now cleans up."""
    def loop_threads() -> int:
        return sum(thread.name == "kvwire-client-loop" for thread in threading.enumerate())

    before = loop_threads()
    unraisable = []

    async def main() -> None:
        with pytest.warns(ResourceWarning, match="was never closed"):
            for _ in range(3):
                client = Client([node.address], timeout=5)
                client.put("inside-a-loop", 1)
                del client
                gc.collect()
        closed = Client([node.address], timeout=5)
        closed.ping()
        closed.close()

    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        asyncio.run(main())
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
    wait_for(lambda: loop_threads() == before, timeout=10, what="the clients' threads ending")
    assert own_sockets_to(node.address) == 0
