"""AsyncClient and Client against real node processes over real TCP."""

import asyncio
import re
import threading
import time

import pytest

from kvwire import (
    AsyncClient,
    Client,
    ConflictError,
    ErrorCode,
    ForbiddenError,
    KeyNotFoundError,
    KvwireConnectionError,
    KvwireError,
    KvwireTimeoutError,
    NoQuorumError,
    RetryPolicy,
    TooLargeError,
    Version,
)
from kvwire.client import ClientConnection
from kvwire.client.arguments import check_consistency, put_request_id
from kvwire.protocol import Delete, ErrorReply, Get, Limits, Ping, Pong, Put, PutReply, encode
from kvwire.protocol.limits import MIB
from kvwire.protocol.messages import Consistency
from kvwire.testing import NodeProcess, ScriptedNode, free_port, wait_for, wait_for_async

# One of every msgpack type, nested too; tuples travel as arrays and come back as lists.
VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.25,
    float("inf"),
    "",
    "héllo, wörld ✓",
    b"",
    b"\x00\xff\x80 binary",
    [],
    [1, "two", None, 3.0, b"\x04", [5]],
    {},
    {"nested": {"list": [1, {"deep": True}]}, "bytes": b"\x01", "none": None},
    {b"raw key": "bytes keys are allowed"},
]


def _dead_address() -> str:
    return f"127.0.0.1:{free_port()}"


# --- round trips ------------------------------------------------------------------------


async def test_every_value_type_round_trips(shared_node):
    async with AsyncClient([shared_node.address]) as client:
        for index, value in enumerate(VALUES):
            key = f"types/{index}"
            version = await client.put(key, value)
            assert isinstance(version, Version)
            got = await client.get(key)
            assert got == value and type(got) is type(value), (index, value, got)
            assert await client.get_with_version(key) == (value, version)
            deleted = await client.delete(key)
            assert deleted > version
            with pytest.raises(KeyNotFoundError):
                await client.get(key)


async def test_tuples_come_back_as_lists(shared_node):
    async with AsyncClient(shared_node.address) as client:
        await client.put("tuple", (1, (2, 3)))
        assert await client.get("tuple") == [1, [2, 3]]


@pytest.mark.parametrize("raw, reason", [
    (b"\x01\xa5extra\x92", "trailing characters"), (b"", "they are no value at all"),
    (b"\x01\x02", "trailing characters"), (b"\xc1", "invalid opcode"), (b"\x92\x01", "incomplete input"),
    (b"\x81\x01\x02", "for map key"), (b"\xd4\x05\x00", "extension type 5 is not allowed"),
    (b"\x82\xa1a\x01\xa1a\x02", "a map repeats a key"),
], ids=["trailing", "empty", "two", "invalid", "cut-short", "int-key", "ext", "key-twice"])
async def test_a_packed_value_must_be_one_value_a_node_accepts(shared_node, raw, reason):
    """A msgspec.Raw goes into the frame as it is: trailing bytes would be read as the frame's
    next field (the request id, lost), missing ones would break the frame, and a value the node
    refuses would close the connection, failing every other call on it."""
    import msgpack
    from msgspec import Raw

    async with AsyncClient(shared_node.address) as client:
        await client.put("packed-neighbour", 1)
        neighbours = [asyncio.ensure_future(client.get("packed-neighbour")) for _ in range(5)]
        # The reason in words, not msgspec's "index out of bounds" for b"" or a bare "DuplicateKey".
        with pytest.raises(ValueError, match=rf"must hold exactly one msgpack value a node accepts; "
                                             rf"these {len(raw)} bytes do not \(.*{reason}.*\)"):
            await client.put("packed", Raw(raw), request_id="packed-once")
        assert await asyncio.gather(*neighbours) == [1] * 5
        await client.put("packed", Raw(msgpack.packb({"a": [1, 2]})), request_id="packed-once")
        assert await client.get("packed") == {"a": [1, 2]}


def test_a_str_enum_key_is_stored_under_its_value(shared_node):
    """A (str, Enum) member's str() is "Field.NAME": the key was stored under that, so
    the CLI, the bridge and other clients looked for "name" and found nothing."""
    import enum

    class Field(str, enum.Enum):
        NAME = "enum-key-name"

    with Client(shared_node.address) as client:
        client.put(Field.NAME, "Ada")
        assert client.get("enum-key-name") == "Ada"


def test_a_str_enum_is_a_map_key_in_a_value_as_it_is_a_key_and_a_value(shared_node):
    """The same member was accepted as a key and as a value, and refused as a map key
    ("map keys must be str or bytes"), though it packs as its string there too."""
    import enum

    from kvwire.client.arguments import check_value

    class Field(str, enum.Enum):
        NAME = "name"

    with Client(shared_node.address) as client:
        client.put("enum-map-key", {Field.NAME: Field.NAME})
        assert client.get("enum-map-key") == {"name": "name"}

    class Text(str):
        pass

    for value in ({Text("\udcff"): 1}, [Text("\udcff")]):  # a lone surrogate in a subclass, checked as in a str
        with pytest.raises(ValueError, match="is not valid UTF-8"):
            check_value(value)


def test_a_packed_value_nested_too_deeply_says_why():
    """msgpack's StackError has no message: the refusal ended in empty parentheses."""
    from msgspec import Raw

    from kvwire.client.arguments import check_value

    with pytest.raises(ValueError, match=r"these 1024 bytes do not \(nested too deeply\)$"):
        check_value(Raw(b"\x91" * 1023 + b"\x90"))
    check_value(Raw(b"\x91" * 1022 + b"\x90"))  # 1,023 levels: as deep as a node takes


def test_sync_client_every_value_type_round_trips(shared_node):
    with Client(shared_node.address) as client:
        for index, value in enumerate(VALUES):
            key = f"sync-types/{index}"
            version = client.put(key, value)
            got, got_version = client.get_with_version(key)
            assert got == value and type(got) is type(value)
            assert got_version == version
            assert client.delete(key) > version
            with pytest.raises(KeyNotFoundError):
                client.get(key)


async def test_missing_key_raises_key_not_found_which_is_a_key_error(shared_node):
    async with AsyncClient(shared_node.address) as client:
        with pytest.raises(KeyError) as caught:
            await client.get("never-written")
        assert isinstance(caught.value, KeyNotFoundError)
        assert "never-written" in str(caught.value)
        with pytest.raises(KeyNotFoundError):
            await client.delete("never-written")


async def test_versions_increase_with_every_write(shared_node):
    async with AsyncClient(shared_node.address) as client:
        versions = [await client.put("counter", n) for n in range(5)]
        versions.append(await client.delete("counter"))
        versions.append(await client.put("counter", "back"))
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        assert (await client.get_with_version("counter")).version == versions[-1]


async def test_consistency_argument_is_sent_and_checked(shared_node):
    async with AsyncClient(shared_node.address) as client:
        await client.put("c", 1)
        assert await client.get("c", consistency="one") == 1
        assert await client.get("c", consistency="quorum") == 1
        with pytest.raises(ValueError, match="consistency"):
            await client.get("c", consistency="all")


async def test_health_and_ping(shared_node):
    async with AsyncClient(shared_node.address) as client:
        health = await client.health()
        assert health["node_id"] == "n1"
        assert "cluster" in health
        assert 0 < await client.ping() < 5


async def test_node_errors_arrive_as_their_exception_classes(shared_node):
    async with AsyncClient(shared_node.address) as client:
        with pytest.raises(TooLargeError, match="limit") as refused:
            await client.put("big", b"x" * (1024 * 1024 + 1))
        assert refused.value.maybe_applied is False  # the node wrote nothing
        # The refusal concerned one request; the connection carries on.
        await client.put("small", b"x")


async def test_cluster_id_is_checked_on_connect(shared_node):
    async with AsyncClient(shared_node.address, cluster="kvwire") as client:
        await client.ping()
    async with AsyncClient(shared_node.address, cluster="some-other-cluster") as client:
        with pytest.raises(ForbiddenError, match="some-other-cluster"):
            await client.ping()


# --- pipelining -------------------------------------------------------------------------


async def test_a_thousand_concurrent_requests_share_one_connection(node):
    async with AsyncClient(node.address) as client:
        # A GET of a missing key is answered at once while a PUT waits for its
        # commit, so these replies come back out of order; ids must match them.
        results = await asyncio.gather(
            *(client.put(f"pipelined/{i}", i) if i % 2 else client.get(f"missing/{i}") for i in range(1000)),
            return_exceptions=True,
        )
        assert all(isinstance(result, Version) for result in results[1::2]), results
        assert all(isinstance(result, KeyNotFoundError) for result in results[0::2]), results
        # Each key holds its own number, and each GET got its own key's reply.
        values = await asyncio.gather(*(client.get(f"pipelined/{i}") for i in range(1, 1000, 2)))
        assert values == list(range(1, 1000, 2))
        assert (await client.health())["connections"] == 1


def test_sync_client_is_safe_to_share_between_threads(shared_node):
    errors = []
    with Client(shared_node.address) as client:

        def work(thread: int) -> None:
            try:
                for i in range(50):
                    client.put(f"threads/{thread}/{i}", i)
                    assert client.get(f"threads/{thread}/{i}") == i
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
    assert errors == []


async def test_requests_wait_while_the_transport_pauses_writing(node):
    host, port = node.address.rsplit(":", 1)
    connection = await ClientConnection.open(host, int(port), connect_timeout=5)
    try:
        node.pause()  # it stops reading, so the socket buffers fill up
        value = b"x" * 500_000
        burst = [asyncio.ensure_future(connection.request(Put, f"big/{i}", value)) for i in range(40)]
        deadline = time.monotonic() + 10
        while not connection.writing_paused:
            assert time.monotonic() < deadline, "20 MB unread by the node never paused writing"
            await asyncio.sleep(0.01)
        late = asyncio.ensure_future(connection.request(Put, "late", 1))
        for _ in range(3):  # ample turns of the loop for it to be written, were it not held back
            await asyncio.sleep(0)
        assert not late.done()
        assert connection.in_flight == 40  # the late request waits to be written
        node.resume()
        replies = await asyncio.wait_for(asyncio.gather(*burst, late), timeout=30)
        assert all(isinstance(reply.version, Version) for reply in replies)
        assert not connection.writing_paused
    finally:
        node.resume()
        connection.close()
        await connection.wait_closed()


# --- send: a reply to a callback (a node's peer links) --------------------------------------


async def test_send_hands_each_reply_or_error_to_its_callback_as_it_is_read(node, caplog):
    """No future and no loop turn in between; a callback that raises is logged,
    and the replies after it still reach theirs."""
    host, port = node.address.rsplit(":", 1)
    connection = await ClientConnection.open(host, int(port), connect_timeout=5)
    got = []

    def failing(reply):
        got.append(reply)
        raise RuntimeError("a broken callback")

    try:
        connection.send(Ping, (), failing)
        connection.send(Get, ("never-written",), got.append)
        connection.send(Put, ("sent", 1), got.append)
        await wait_for_async(lambda: len(got) == 3, timeout=10, what="three replies")
    finally:
        connection.close()
    assert isinstance(got[0], Pong)
    assert isinstance(got[1], KeyNotFoundError) and got[1].code == ErrorCode.NOT_FOUND
    assert isinstance(got[2], PutReply) and isinstance(got[2].version, Version)
    assert "a reply's callback failed" in caplog.text and "a broken callback" in caplog.text


async def test_send_callbacks_of_a_lost_connection_fail_a_loop_turn_later(node):
    """The node is paused, so nothing is answered; aborting the connection fails
    both requests, but not inside abort(), which a node calls while it performs
    its effects (kvwire.server.node), and which must not be re-entered."""
    host, port = node.address.rsplit(":", 1)
    connection = await ClientConnection.open(host, int(port), connect_timeout=5)
    got = []
    node.pause()
    try:
        connection.send(Ping, (), got.append)
        connection.send(Get, ("k",), got.append)
        connection.abort()
        assert got == []
        await wait_for_async(lambda: len(got) == 2, timeout=10, what="both failures")
    finally:
        node.resume()
    assert all(isinstance(error, KvwireConnectionError) and "aborted" in str(error) for error in got)
    with pytest.raises(KvwireConnectionError):
        connection.send(Ping, (), got.append)  # refused before anything is sent, as submit is


async def test_send_calls_back_with_a_connection_error_for_a_reply_of_the_wrong_op():
    async with ScriptedNode(lambda request: Pong(request.id), answers_hello=False) as scripted:
        host, port = scripted.address.rsplit(":", 1)
        connection = await ClientConnection.open(host, int(port), connect_timeout=5)
        got = []
        try:
            connection.send(Get, ("k",), got.append)
            await wait_for_async(lambda: got, timeout=10, what="the invalid reply")
        finally:
            connection.close()
    (error,) = got
    assert isinstance(error, KvwireConnectionError) and "invalid reply" in str(error)


# --- timeouts and cancellation ------------------------------------------------------------


async def test_per_call_timeout_against_a_hung_node(node):
    async with AsyncClient(node.address, timeout=10) as client:
        await client.put("k", "v")
        node.pause()
        try:
            started = time.monotonic()
            with pytest.raises(KvwireTimeoutError) as caught:
                await client.get("k", timeout=0.3)
            assert 0.25 < time.monotonic() - started < 3
            assert isinstance(caught.value, TimeoutError)
        finally:
            node.resume()
        # The late reply is dropped and the connection stays usable.
        assert await client.get("k") == "v"


async def test_timeout_while_connecting_to_a_hung_node(node):
    node.pause()  # the kernel still accepts the connection; HELLO goes unanswered
    try:
        async with AsyncClient(node.address, timeout=0.3, connect_timeout=5) as client:
            with pytest.raises(KvwireTimeoutError):
                await client.ping()
    finally:
        node.resume()


def test_sync_client_timeout(node):
    with Client(node.address) as client:
        client.put("k", 1)
        node.pause()
        try:
            with pytest.raises(KvwireTimeoutError):
                client.get("k", timeout=0.3)
        finally:
            node.resume()
        assert client.get("k") == 1


async def test_cancelled_call_leaves_the_connection_usable(node):
    async with AsyncClient(node.address) as client:
        await client.put("k", 1)
        node.pause()
        try:
            task = asyncio.ensure_future(client.get("k"))
            await wait_for_async(node.unread_bytes, timeout=5, what="the GET waiting in the stopped node's socket")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            node.resume()
        assert await client.get("k") == 1


# --- connection failures and failover -----------------------------------------------------


async def test_connection_refused_raises_connection_error():
    async with AsyncClient(_dead_address(), retry=RetryPolicy(attempts=2, base_delay=0)) as client:
        with pytest.raises(KvwireConnectionError, match="refused") as caught:
            await client.get("k")
        assert isinstance(caught.value, ConnectionError)


def test_sync_connection_refused_raises_connection_error():
    with Client(_dead_address()) as client:
        with pytest.raises(KvwireConnectionError):
            client.put("k", 1)


async def test_fails_over_to_the_next_endpoint_when_the_first_is_down(node):
    async with AsyncClient([_dead_address(), node.address]) as client:
        await client.put("k", "via the second endpoint")
        assert await client.get("k") == "via the second endpoint"


async def test_fails_over_past_a_hung_node_while_connecting(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1") as hung, NodeProcess("n2", data_dir=tmp_path / "n2") as live:
        hung.pause()  # accepts the TCP connection, never answers HELLO
        try:
            async with AsyncClient([hung.address, live.address], timeout=5, connect_timeout=0.3) as client:
                started = time.monotonic()
                assert (await client.health())["node_id"] == "n2"
                assert time.monotonic() - started < 3
        finally:
            hung.resume()


async def test_fails_over_when_the_current_node_dies(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1") as first, NodeProcess("n2", data_dir=tmp_path / "n2") as second:
        async with AsyncClient([first.address, second.address]) as client:
            assert (await client.health())["node_id"] == "n1"
            first.kill()
            assert (await client.health())["node_id"] == "n2"
            await client.put("k", 1)  # and later calls stay on the node that works
            assert await client.get("k") == 1


async def test_requests_in_flight_fail_fast_when_the_node_dies(node):
    async with AsyncClient(node.address, timeout=20, retry=RetryPolicy(attempts=1)) as client:
        await client.ping()
        node.pause()
        calls = [asyncio.ensure_future(client.get(f"k{i}")) for i in range(10)]
        await wait_for_async(node.unread_bytes, timeout=5, what="the GETs waiting in the stopped node's socket")
        started = time.monotonic()
        node.kill()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(result, KvwireConnectionError) for result in results), results
        assert time.monotonic() - started < 5  # failed by the lost connection, not the timeout


async def test_reconnects_after_the_node_restarts(node):
    async with AsyncClient(node.address, retry=RetryPolicy(attempts=1)) as client:
        await client.put("k", "durable")
        node.kill()
        with pytest.raises(KvwireConnectionError):
            await client.get("k")
        restarted = NodeProcess("n1", data_dir=node.data_dir, port=node.port)
        with restarted:
            assert await client.get("k") == "durable"


async def test_node_refusing_the_connection_is_a_connection_error(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--max-connections", "1"]) as full:
        async with AsyncClient(full.address) as first, AsyncClient(full.address, retry=RetryPolicy(attempts=1)) as second:
            await first.ping()
            with pytest.raises(KvwireConnectionError, match="too many connections"):
                await second.ping()


@pytest.mark.parametrize(
    "bad_reply",
    [encode(Pong(2)), b"\x00\x00\x00\x02\xc1\xc1", b"\xff\xff\xff\xff"],
    ids=["wrong-op", "not-msgpack", "oversized-length"],
)
async def test_invalid_replies_fail_every_waiting_call(bad_reply):
    """A node that answers HELLO properly and then sends ``bad_reply``."""

    def misbehave(request):
        return bad_reply if request.id == 4 else None  # the third call after HELLO: all three are waiting

    async with ScriptedNode(misbehave, answers_hello=False) as node:
        async with AsyncClient(node.address, timeout=5, retry=RetryPolicy(attempts=1)) as client:
            results = await asyncio.gather(*(client.get(f"k{i}") for i in range(3)), return_exceptions=True)
    assert all(isinstance(result, KvwireConnectionError) for result in results), results
    assert all("invalid reply" in str(result) for result in results)


# --- closing ---------------------------------------------------------------------------


async def test_async_context_manager_closes_its_connections(shared_node):
    async with AsyncClient(shared_node.address) as observer:

        async def connections() -> int:
            return (await observer.health())["connections"]

        before = await connections()
        async with AsyncClient(shared_node.address) as client:
            await client.ping()
            assert await connections() == before + 1
        assert client.closed
        deadline = time.monotonic() + 5
        while await connections() != before:
            assert time.monotonic() < deadline, "the node still counts the closed client's connection"
            await asyncio.sleep(0.02)
    with pytest.raises(RuntimeError, match="closed"):
        await client.ping()


async def test_close_fails_calls_still_waiting(node):
    client = AsyncClient(node.address, timeout=20)
    await client.ping()
    node.pause()
    try:
        call = asyncio.ensure_future(client.get("k"))
        await wait_for_async(node.unread_bytes, timeout=5, what="the GET waiting in the stopped node's socket")
        await client.close()
        with pytest.raises(KvwireConnectionError, match="closed"):
            await call
    finally:
        node.resume()
    await client.close()  # twice is fine


def test_sync_context_manager_stops_its_thread(shared_node):
    def loop_threads() -> int:
        return sum(thread.name == "kvwire-client-loop" for thread in threading.enumerate())

    before = loop_threads()
    with Client(shared_node.address) as client:
        client.ping()
        assert loop_threads() == before + 1
    assert client.closed
    assert loop_threads() == before
    with pytest.raises(RuntimeError, match="closed"):
        client.ping()
    client.close()  # twice is fine


# --- arguments are checked before anything is sent ------------------------------------------


# a..b: the resolver's UnicodeError escaped the error tree on every call, and failover
# never reached the good endpoint after it. [127.0.0.1]: brackets that hold no IPv6 address.
@pytest.mark.parametrize("endpoints", ["nohost", "host:notaport", "host:0", "host:70000", "a:1,,b:2", "", [],
                                       "a..b:1,127.0.0.1:1", ".:1", "x" * 64 + ":1", "[127.0.0.1]:1", "[::1]]:1"])
def test_bad_endpoints_raise_value_error_naming_them(endpoints):
    with pytest.raises(ValueError) as caught:
        AsyncClient(endpoints)
    if endpoints:
        assert "endpoint" in str(caught.value)


def test_endpoints_accept_a_list_or_a_comma_separated_string():
    assert AsyncClient("a:1, b:2,[::1]:3").endpoints == ("a:1", "b:2", "[::1]:3")
    assert AsyncClient(["a:1", "b:2"]).endpoints == ("a:1", "b:2")


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"timeout": -1}, {"timeout": float("nan")}, {"connect_timeout": 0}, {"cluster": ""}],
)
def test_bad_client_options_raise_value_error(options):
    with pytest.raises(ValueError):
        AsyncClient("a:1", **options)


@pytest.mark.parametrize(
    "options",
    [{"attempts": 0}, {"attempts": 1.5}, {"base_delay": -1}, {"base_delay": float("inf")},
     {"base_delay": 2, "max_delay": 1}, {"retry_on": ()}, {"retry_on": (int,)}, {"retry_on": [KvwireError]},
     {"attempt_timeout": 0}, {"attempt_timeout": float("inf")}, {"cooldown": -1}],
)
def test_retry_policy_is_checked(options):
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**options)


def test_retry_policy_backs_off_exponentially_up_to_the_cap():
    policy = RetryPolicy(attempts=6, base_delay=0.1, max_delay=0.3)
    assert [policy.delay_before(n) for n in range(5)] == [0, 0.1, 0.2, 0.3, 0.3]


async def test_bad_keys_and_values_fail_before_sending():
    # A dead endpoint: if anything were sent, the error would be a connection error.
    async with AsyncClient(_dead_address()) as client:
        with pytest.raises(TypeError, match="key must be a str"):
            await client.get(b"bytes-key")
        with pytest.raises(ValueError, match="empty"):
            await client.put("", 1)
        with pytest.raises(ValueError, match="1024"):
            await client.delete("k" * 1025)
        with pytest.raises(TypeError, match="set"):
            await client.put("k", {1, 2})
        with pytest.raises(TypeError, match=r"value\['a'\]\[1\] has type object"):
            await client.put("k", {"a": [1, object()]})
        with pytest.raises(TypeError, match="map keys must be str or bytes"):
            await client.put("k", {1: "int keys would make the node drop the connection"})
        with pytest.raises(ValueError, match="64-bit"):
            await client.put("k", 2**64)
        with pytest.raises(ValueError, match="UTF-8"):
            await client.put("k", "\ud800")
        with pytest.raises(ValueError, match="timeout"):
            await client.get("k", timeout=-1)
        with pytest.raises(TypeError, match="not C-contiguous"):
            await client.put("k", memoryview(b"abcdef")[::2])
        deep: list = []
        deep.append(deep)  # a list holding itself: nested without end
        with pytest.raises(ValueError, match="nested deeper than 511 levels") as caught:
            await client.put("k", deep)
        assert len(str(caught.value)) < 200  # one readable line, not 511 levels of [0]


async def test_close_fails_a_call_waiting_to_try_again():
    """A call between attempts when the client closes fails as one waiting on a node does."""
    async with AsyncClient(_dead_address(), retry=RetryPolicy(attempts=3, base_delay=5, max_delay=5)) as client:
        call = asyncio.ensure_future(client.put("k", 1))
        [endpoint] = client._endpoints.all
        # The first attempt's refused connection marks the node failed; the call then waits 5 s.
        await wait_for_async(lambda: endpoint.unhealthy_until > 0, timeout=5, what="the first attempt to fail")
        await client.close()
        with pytest.raises(KvwireConnectionError, match="the client was closed during this call"):
            await asyncio.wait_for(call, 2)


def test_limits_are_importable_with_the_client():
    from kvwire.client import DEFAULT_LIMITS, Limits

    assert isinstance(DEFAULT_LIMITS, Limits)


def test_errors_share_one_root():
    for error in (KeyNotFoundError, KvwireConnectionError, KvwireTimeoutError, TooLargeError, ForbiddenError):
        assert issubclass(error, KvwireError)


# --- what a node says in its replies: maybe_applied, CONFLICT, its limits, a refusal ----------
# In-process scripted nodes, so these hold whatever the real node's code is doing.


@pytest.mark.parametrize("maybe_applied", [True, False, None])
async def test_a_put_retried_after_no_quorum_keeps_its_request_id_and_maybe_applied(maybe_applied):
    def no_quorum(request):
        return ErrorReply(request.id, ErrorCode.NO_QUORUM, "Failed to replicate to quorum of nodes", maybe_applied)

    async with ScriptedNode(no_quorum, answers_hello=False) as first, ScriptedNode(no_quorum, answers_hello=False) as second:
        async with AsyncClient([first.address, second.address], retry=RetryPolicy(base_delay=0)) as client:
            with pytest.raises(NoQuorumError) as caught:
                await client.put("k", 1)
    assert caught.value.maybe_applied is maybe_applied
    puts = [r for r in first.received + second.received if type(r) is Put]
    # Every attempt; the untried node second, and NO_QUORUM left the first one healthy to try again.
    assert [type(r) for r in first.received].count(Put) == 2 and [type(r) for r in second.received].count(Put) == 1
    assert len({put.request for put in puts}) == 1
    assert sorted(bool(put.retry) for put in puts) == [False, True, True]


async def test_a_write_whose_earlier_attempt_may_have_applied_never_says_nothing_was_written():
    answers = iter([True, False])

    def no_quorum(request):
        return ErrorReply(request.id, ErrorCode.NO_QUORUM, "Failed to replicate to quorum of nodes", next(answers))

    async with ScriptedNode(no_quorum, answers_hello=False) as node:
        async with AsyncClient(node.address, retry=RetryPolicy(attempts=2, base_delay=0)) as client:
            with pytest.raises(NoQuorumError, match="an earlier attempt of this call may have been applied") as caught:
                await client.put("k", 1)
    assert caught.value.maybe_applied is True
    assert caught.value.__cause__.maybe_applied is False  # what the last node said, kept as the cause


async def test_an_error_raised_without_retry_after_a_lost_connection_does_not_say_nothing_was_written():
    def no_quorum(request):
        return ErrorReply(request.id, ErrorCode.NO_QUORUM, "Failed to replicate to quorum of nodes", False)

    # The first node breaks the connection once the DELETE is sent: it may have been applied.
    async with ScriptedNode(lambda request: b"\xff\xff\xff\xff", answers_hello=False) as lost, \
            ScriptedNode(no_quorum, answers_hello=False) as refusing:
        retry = RetryPolicy(base_delay=0, retry_on=(KvwireConnectionError,))  # NO_QUORUM is not retried
        async with AsyncClient([lost.address, refusing.address], retry=retry) as client:
            with pytest.raises(NoQuorumError, match="an earlier attempt of this call may have been applied") as caught:
                await client.delete("k")
    assert caught.value.maybe_applied is None  # unknown, not False
    assert [type(r) for r in lost.received + refusing.received].count(Delete) == 2


@pytest.mark.parametrize("maybe_applied", [True, None])
async def test_conflict_is_raised_at_once_with_maybe_applied(maybe_applied):
    def conflict(request):
        return ErrorReply(request.id, ErrorCode.CONFLICT, "DELETE raced with a concurrent write", maybe_applied)

    async with ScriptedNode(conflict, answers_hello=False) as first, ScriptedNode(conflict, answers_hello=False) as second:
        async with AsyncClient([first.address, second.address], retry=RetryPolicy(base_delay=0)) as client:
            with pytest.raises(ConflictError, match="raced") as caught:
                await client.delete("k")
    assert caught.value.maybe_applied is True  # absent on the wire: CONFLICT always may have applied
    assert caught.value.code == ErrorCode.CONFLICT
    assert [type(r) for r in first.received + second.received].count(Delete) == 1
    assert not RetryPolicy().retries(caught.value)


async def test_the_connection_keeps_the_node_limits_from_hello():
    limits = Limits(max_frame_bytes=8192, max_key_bytes=64, max_value_bytes=4096)
    async with ScriptedNode(limits=limits.to_wire()) as node:
        host, port = node.address.rsplit(":", 1)
        connection = await ClientConnection.open(host, int(port), connect_timeout=5)
        try:
            assert connection.server_limits == limits
        finally:
            connection.close()
    async with ScriptedNode() as node:  # a node that predates the field
        host, port = node.address.rsplit(":", 1)
        connection = await ClientConnection.open(host, int(port), connect_timeout=5)
        try:
            assert connection.server_limits is None and connection.node_id == "scripted"
        finally:
            connection.close()


async def test_a_full_node_refusing_at_once_sends_the_call_to_the_next_node():
    # docs/protocol.md 8: one ERROR UNAVAILABLE with id nil before any request, then the close.
    refusal = encode(ErrorReply(None, ErrorCode.UNAVAILABLE, "too many connections; try another node or later"))

    def pong(request):
        return Pong(request.id)

    async with ScriptedNode(greeting=refusal) as full, ScriptedNode(pong, answers_hello=False) as free:
        async with AsyncClient([full.address], retry=RetryPolicy(attempts=1)) as client:
            with pytest.raises(KvwireConnectionError, match="too many connections"):
                await client.ping()
        async with AsyncClient([full.address, free.address], retry=RetryPolicy(base_delay=0)) as client:
            await client.ping()
    assert [type(r) for r in free.received].count(Ping) == 1


async def test_a_frame_over_the_nodes_limit_is_refused_before_sending(shared_node):
    # The node would drop the connection at the oversized header, which looks like a
    # lost node and would be retried elsewhere; the client knows the node's limits
    # from HELLO and refuses the request itself, keeping the connection.
    async with AsyncClient(shared_node.address) as client:
        await client.put("before", 1)
        with pytest.raises(TooLargeError, match="takes at most 1050624 from a client") as refused:
            await client.put("huge", b"x" * 5_000_000)
        assert refused.value.maybe_applied is False  # never sent
        assert await client.get("before") == 1


async def test_a_default_client_reads_a_value_as_large_as_the_nodes_limits_allow(tmp_path):
    # The node takes 6 MiB values; a client left at its 1 MiB defaults must read one
    # back, not drop the connection at the reply's header and call the node lost.
    big = ["--max-value-bytes", str(6 * MIB), "--max-frame-bytes", str(8 * MIB)]
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "normal", *big]) as node:
        value = b"v" * (5 * MIB)
        async with AsyncClient(node.address, limits=Limits(max_frame_bytes=8 * MIB, max_value_bytes=6 * MIB)) as big_client:
            await big_client.put("big", value)
        async with AsyncClient(node.address, retry=RetryPolicy(attempts=1)) as client:
            assert await client.get("big") == value
            # What it sends is still held to its own limits.
            with pytest.raises(ValueError, match="the limit is 1024"):
                await client.put("k" * 2000, 1)


def test_limits_widened_to_anothers_take_the_larger_of_each():
    mine = Limits(max_frame_bytes=3 * MIB, max_key_bytes=4096, max_value_bytes=2 * MIB)
    theirs = Limits(max_frame_bytes=8 * MIB, max_key_bytes=512, max_value_bytes=6 * MIB)
    assert mine.widened_to(theirs) == theirs.widened_to(mine) == Limits(8 * MIB, 4096, 6 * MIB)


async def test_a_put_sent_again_on_another_node_says_it_is_a_retry():
    def unavailable(request):
        return ErrorReply(request.id, ErrorCode.UNAVAILABLE, "node is stopping")

    def stored(request):
        return PutReply(request.id, Version(1, "n2"), True)

    async with ScriptedNode(unavailable, answers_hello=False) as first, ScriptedNode(stored, answers_hello=False) as second:
        async with AsyncClient([first.address, second.address], retry=RetryPolicy(base_delay=0)) as client:
            await client.put("k", 1)
            await client.put("k", 2, request_id="the-callers-id")
    puts = [r for r in first.received + second.received if isinstance(r, Put)]
    by_value = {value: [put for put in puts if put.value == value] for value in (1, 2)}
    # The first attempt goes out in one round trip; the retry, with the same id, says
    # it may have been sent before, so the node looks for that attempt (protocol 6.4).
    assert [put.retry for put in by_value[1]] == [None, True]
    assert len({put.request for put in by_value[1]}) == 1
    # An id the caller chose may have been used before: marked from the first attempt.
    # It goes with the value folded in (put_request_id), the same on every attempt.
    assert by_value[2] and all(put.retry is True and put.request == put_request_id("the-callers-id", b"\x02")
                               for put in by_value[2])


def test_a_host_name_that_does_not_resolve_is_said_in_words():
    # No lookup here: a test may not send DNS queries off this machine. The
    # error is what asyncio's getaddrinfo raises for a name with no address.
    import socket

    from kvwire.client.connection import _describe_os_error

    text = _describe_os_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert text == "cannot resolve the host name: Name or service not known"


# --- event loops and processes -----------------------------------------------------------------


def test_an_async_client_in_use_on_one_loop_refuses_a_call_from_another_before_sending(shared_node):
    """Its connections belong to the first loop: a call from a second loop wrote to them from the wrong
    thread, and its PUT was applied while the call failed with asyncio's own RuntimeError."""
    client = AsyncClient(shared_node.address)
    first = asyncio.new_event_loop()
    thread = threading.Thread(target=first.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(client.put("two-loops", "first"), first).result(10)

        async def from_another_loop() -> None:
            await client.put("two-loops", "second")

        with pytest.raises(RuntimeError, match="in use on another event loop.*nothing was sent"):
            asyncio.run(from_another_loop())
        assert asyncio.run_coroutine_threadsafe(client.get("two-loops"), first).result(10) == "first"
        asyncio.run(client.close())  # from the other loop too: left to the client's own loop
        assert client.closed
    finally:
        first.call_soon_threadsafe(first.stop)
        thread.join(10)
        first.close()


def test_an_async_client_carries_on_across_asyncio_run_calls(shared_node):
    """A script or a test suite with a loop per test: once the client's loop is closed, the next
    call starts afresh on the new one, and close() succeeds whichever loop is gone."""
    client = AsyncClient(shared_node.address)

    async def get() -> str:
        return await client.get("across-runs")

    asyncio.run(client.put("across-runs", "one"))
    assert asyncio.run(get()) == "one"
    assert asyncio.run(get()) == "one"
    asyncio.run(client.close())
    assert client.closed


def test_a_blocking_client_inherited_through_fork_refuses_in_the_child(shared_node):
    """fork() copies the Client but not its event loop's thread: a call in the child waited forever."""
    import os

    with Client(shared_node.address, timeout=1) as client:
        client.ping()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what the call did, and leave without running the parent's cleanup
            os.close(read)
            try:
                client.get("forked")
                outcome = b"answered"
            except RuntimeError as exc:
                outcome = str(exc).encode()
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                outcome = repr(exc).encode()
            try:
                client.close()  # the copy: nothing of the parent's is stopped
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                outcome += b"; close raised " + repr(exc).encode()
            os.write(write, outcome)
            os._exit(0)
        os.close(write)
        try:
            wait_for(lambda: os.waitpid(pid, os.WNOHANG) != (0, 0), timeout=20, what="the child's call to end")
        except TimeoutError:
            os.kill(pid, 9)  # hung on its call: not left behind
            os.waitpid(pid, 0)
            raise
        with os.fdopen(read, "rb") as reader:
            outcome = reader.read().decode()
        assert "made before fork()" in outcome and "nothing was sent" in outcome and "close raised" not in outcome, outcome
        client.ping()  # the parent's client is untouched


@pytest.mark.parametrize("arguments, error, fragment", [
    ({"endpoints": 7379}, TypeError, "endpoints must be a 'host:port,...' str or a list of 'host:port' str, not int"),
    ({"endpoints": None}, TypeError, "not NoneType"),
    ({"endpoints": {"127.0.0.1:7379": 1}}, TypeError, "not dict"),
    ({"endpoints": {"127.0.0.1:7379", "127.0.0.1:7380"}}, TypeError, "not set"),  # no order of the caller's
    ({"endpoints": ["127.0.0.1:7379", "127.0.0.1:7380", "127.0.0.1:7379"]}, ValueError,
     "endpoint '127.0.0.1:7379' is given twice"),
    # One address, written two ways, was two nodes to fail over between (a client probe's finding).
    ({"endpoints": ["[::1]:7379", "[0::1]:7379"]}, ValueError, "endpoint '[0::1]:7379' is given twice"),
    ({"endpoints": "[FE80::1]:7379,[fe80::1]:7379"}, ValueError, "endpoint '[fe80::1]:7379' is given twice"),
    ({"endpoints": ["db.example:7379", "DB.example:7379"]}, ValueError, "is given twice"),
    ({"endpoints": ["h1:7379,h2:7379"]}, ValueError, "holds a comma: give each 'host:port' as its own list item"),
    ({"endpoints": "127.0.0.1:7379", "timeout": 10**400}, ValueError, "timeout must be a positive number of seconds"),
    ({"endpoints": "127.0.0.1:7379", "token": "tok\ud800en-of-sixteen-chars"}, ValueError, "token must be text UTF-8"),
])
def test_constructor_arguments_are_refused_by_name(arguments, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        AsyncClient(**arguments)


def test_endpoints_may_come_from_a_generator_in_its_order():
    """The type says Iterable[str]; a generator was refused with TypeError (a client probe)."""
    client = AsyncClient(f"127.0.0.1:{port}" for port in (7381, 7379))
    assert client.endpoints == ("127.0.0.1:7381", "127.0.0.1:7379")


def test_a_number_no_float_can_hold_is_refused_as_a_bad_value_not_an_overflow():
    """10**400 passed the checks, then raised OverflowError where it was used."""
    with pytest.raises(ValueError, match="RetryPolicy.attempt_timeout must be a positive number of seconds"):
        RetryPolicy(attempt_timeout=10**400)
    with pytest.raises(ValueError, match="RetryPolicy.cooldown must be a finite number"):
        RetryPolicy(cooldown=10**400)


async def test_a_huge_integer_or_a_request_id_utf8_cannot_carry_is_refused_in_one_short_line(shared_node):
    async with AsyncClient(shared_node.address) as client:
        with pytest.raises(ValueError) as huge:
            await client.put("huge", 10**5000)
        assert str(huge.value) == "value = an integer of 16610 bits does not fit msgpack's 64-bit integers"
        with pytest.raises(ValueError, match="request_id must be text UTF-8 can carry"):
            await client.put("id", 1, request_id="\ud800")
        assert await client.ping() >= 0  # nothing was sent: the connection is as it was


def test_closing_a_sync_client_ends_every_call_other_threads_are_making(shared_node):
    """close() while other threads call: each call ends, with its answer or the closed
    client's error. A call handed to the loop just as it stopped was left on a loop that
    never ran again, and its thread waited forever (about one round in two hundred, with
    threads switching every 10 us)."""
    import sys

    ends: list[str] = []
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for round_number in range(120):
            client = Client(shared_node.address, timeout=3.0)
            client.ping()
            stop = threading.Event()
            answered = []

            def call() -> None:
                while not stop.is_set():
                    try:
                        client.get("never-written", consistency="one")
                    except KeyNotFoundError:
                        answered.append(1)
                        continue
                    except (RuntimeError, KvwireConnectionError) as exc:
                        ends.append(type(exc).__name__)  # closed: the documented errors
                        return

            threads = [threading.Thread(target=call, daemon=True) for _ in range(4)]
            for thread in threads:
                thread.start()
            # Close once the threads have had some calls answered, a number that varies by round,
            # so close() falls at different points of their calls.
            wait_for(lambda: len(answered) >= round_number % 5 * 4, timeout=10, interval=0.0005,
                     what="the threads calling")
            client.close()
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
            assert not any(thread.is_alive() for thread in threads), f"a call never ended (round {round_number})"
    finally:
        sys.setswitchinterval(switch_interval)
    assert ends


@pytest.mark.parametrize("make, error, fragment", [
    (lambda: AsyncClient("127.0.0.1:7379", timeout="1"), TypeError, "timeout must be a number of seconds (int or float), got str '1'"),
    (lambda: AsyncClient("127.0.0.1:7379", timeout=True), TypeError, "got bool True"),
    (lambda: AsyncClient("127.0.0.1:7379", connect_timeout=[1]), TypeError, "connect_timeout must be a number of seconds"),
    (lambda: AsyncClient("127.0.0.1:7379", timeout=0), ValueError, "timeout must be a positive number of seconds, got 0"),
    (lambda: RetryPolicy(attempt_timeout="0.5"), TypeError, "RetryPolicy.attempt_timeout must be a number of seconds"),
    (lambda: RetryPolicy(attempt_timeout=True), TypeError, "RetryPolicy.attempt_timeout must be a number of seconds"),
    (lambda: RetryPolicy(cooldown=None), TypeError, "RetryPolicy.cooldown must be a number of seconds"),
    (lambda: RetryPolicy(cooldown=-1), ValueError, "RetryPolicy.cooldown must be a finite number >= 0"),
])
def test_a_number_of_the_wrong_type_is_a_type_error_and_one_out_of_range_a_value_error(make, error, fragment):
    """timeout="1" raised ValueError, as timeout=0 does (a CLI probe's finding)."""
    with pytest.raises(error, match=re.escape(fragment)):
        make()


def test_a_consistency_that_is_no_str_is_a_type_error_before_anything_is_sent():
    with pytest.raises(TypeError, match=re.escape("consistency must be 'quorum' or 'one' (a str) or a Consistency, got int 1")):
        check_consistency(1)
    with pytest.raises(ValueError, match=re.escape("consistency must be 'quorum' or 'one', got 'all'")):
        check_consistency("all")
    assert check_consistency("one") is Consistency.ONE and check_consistency(Consistency.QUORUM) is Consistency.QUORUM
