"""A node's GET hot path (kvwire.protocol.get_frames and NodeProtocol._answer_cached_get).

The parser may only accept: whatever it takes must decode, through the codec,
to the same GET, alone in its bytes; the reply it writes must be the encoder's
byte for byte. Then real nodes: a GET answered from memory keeps every rule a
GET through the codec keeps (tokens, key prefixes, the hello timeout, frames
split or joined in one read, --max-inflight), and gives the same reply bytes
and moves the same counters as the same GET read through the codec.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import Raw

from kvwire import Client
from kvwire.protocol import (
    Connection,
    Consistency,
    ErrorCode,
    ErrorReply,
    Get,
    GetReply,
    Hello,
    HelloReply,
    Ping,
    ProtocolError,
    Side,
    Version,
    encode,
)
from kvwire.protocol.codec import MAX_REQUEST_ID
from kvwire.protocol.get_frames import CONSISTENCY_ONE_END, get_reply_frame, parse_get_frame
from kvwire.protocol.limits import DEFAULT_LIMITS, MAX_COUNTER, Limits
from kvwire.protocol.errors import ForbiddenError
from kvwire.testing import (
    LocalCluster,
    NodeProcess,
    RawConnection,
    free_port,
    unread_bytes,
    wait_for,
    write_auth_file,
)
from test_compiled import damaged
from test_metrics import scrape

MAX_KEY = DEFAULT_LIMITS.max_key_bytes
consistencies = st.sampled_from([None, Consistency.ONE, Consistency.QUORUM])
keys = st.text(min_size=1, max_size=300).filter(lambda key: len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY)
gets = st.builds(Get, st.integers(0, MAX_REQUEST_ID), keys, consistencies)


def through_the_codec(frame: bytes, limits: Limits = DEFAULT_LIMITS):
    """The codec's reading of ``frame`` as a node's: its one message and whether
    bytes are left over, or the ProtocolError it raises."""
    codec = Connection(Side.NODE, limits, raw_values=True)
    codec.receive_data(frame)
    try:
        return codec.next_event(), codec.buffered_bytes
    except ProtocolError as exc:
        return exc


def assert_parsed_only_as_the_codec_decodes(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    parsed = parse_get_frame(frame, limits.max_key_bytes)
    if parsed is None:
        return
    decoded = through_the_codec(frame, limits)
    assert not isinstance(decoded, ProtocolError), f"the hot path took what the codec refuses: {decoded}"
    message, left_over = decoded
    assert left_over == 0, "the hot path took a frame with bytes after it"
    assert type(message) is Get and (message.id, message.key, message.consistency) == parsed


# --- the parser against the codec ------------------------------------------------------------


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(gets)
def test_every_get_the_encoder_writes_is_parsed_as_the_codec_decodes_it(get):
    frame = encode(get)
    assert parse_get_frame(frame, MAX_KEY) == (get.id, get.key, get.consistency)
    assert_parsed_only_as_the_codec_decodes(frame)
    assert frame.endswith(CONSISTENCY_ONE_END) == (get.consistency is Consistency.ONE)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(gets, st.data())
def test_a_damaged_get_is_parsed_only_as_the_codec_decodes_it(get, data):
    assert_parsed_only_as_the_codec_decodes(damaged(data, encode(get)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(gets, st.integers(1, 40))
def test_the_key_limit_is_the_codecs(get, max_key_bytes):
    limits = Limits(max_key_bytes=max_key_bytes)
    frame = encode(get)
    parsed = parse_get_frame(frame, max_key_bytes)
    fits = len(get.key.encode("utf-8", "surrogatepass")) <= max_key_bytes
    assert (parsed is not None) == fits
    if not fits:
        refused = through_the_codec(frame, limits)
        assert isinstance(refused, ProtocolError) and refused.code == ErrorCode.TOO_LARGE
    assert_parsed_only_as_the_codec_decodes(frame, limits)


def _get(*fields: tuple[str, object], after: bytes = b"") -> bytes:
    payload = msgpack.packb(dict(fields)) + after
    return len(payload).to_bytes(4, "big") + payload


OP, ID, KEY = ("op", 3), ("id", 7), ("key", "k")


def _counting(entries: int, frame: bytes) -> bytes:
    """``frame`` with its map's header counting ``entries`` entries, whatever it holds."""
    return frame[:4] + bytes([0x80 | entries]) + frame[5:]


@pytest.mark.parametrize("frame, why", [
    (_get(OP, ID, ("key", "")), "an empty key, which the codec refuses"),
    (_get(OP, ID) , "no key"),
    (_get(OP, ("key", "k"), ID), "the fields in another order"),
    (_get(OP, ID, KEY, ("consistency", "ONE")), "a consistency the codec refuses"),
    (_get(OP, ID, KEY, ("consistency", "one"), ("extra", 1)), "an unknown field"),
    (_get(OP, ("id", -1), KEY), "a negative id"),
    (_get(("op", 4), ID, KEY), "another op"),
    (_get(OP, ID, ("key", b"k")), "a key sent as bytes"),
    (_get(OP, ID, KEY)[:-1], "a frame cut short"),
    (_get(OP, ID, KEY) + _get(OP, ("id", 8), KEY), "two frames in one read"),
    (_get(OP, ID, KEY) + b"\x00\x00", "a frame and the start of another"),
    (_get(OP, ID, KEY, after=b"\xc0"), "a byte after the map, inside the frame"),
    (_counting(5, _get(OP, ID, KEY, ("consistency", "one"))), "a map header counting more entries than sent"),
    (_counting(2, _get(OP, ID, KEY)), "a map header counting fewer entries than sent"),
    (_get(OP, ID, KEY, ("consistency", "one"), after=b"\xc0"), "a byte after the consistency"),
], ids=lambda item: item if isinstance(item, str) else "")
def test_what_the_hot_path_leaves_to_the_codec(frame, why):
    assert parse_get_frame(frame, MAX_KEY) is None, why


def test_a_key_not_in_utf8_goes_to_the_codec_which_refuses_it():
    payload = bytes.fromhex("83a26f7003a2696407a36b6579a2eda0")  # "\ud800" in UTF-8's surrogate range
    frame = len(payload).to_bytes(4, "big") + payload
    assert parse_get_frame(frame, MAX_KEY) is None
    assert isinstance(through_the_codec(frame), ProtocolError)


@pytest.mark.parametrize("frame", [
    bytes.fromhex("83a26f7003a269" "64cc05" "a36b6579a16b"),  # id 5 as uint 8
    bytes.fromhex("83a26f7003a269" "64cf0000000000000005" "a36b6579a16b"),  # id 5 as uint 64
    bytes.fromhex("83a26f7003a2696405a36b6579" "d9016b"),  # key "k" as str 8
    bytes.fromhex("83a26f7003a2696405a36b6579" "da00016b"),  # key "k" as str 16
], ids=["id uint 8", "id uint 64", "key str 8", "key str 16"])
def test_a_longer_form_than_needed_is_parsed_as_the_codec_decodes_it(frame):
    frame = len(frame).to_bytes(4, "big") + frame
    assert parse_get_frame(frame, MAX_KEY) == (5, "k", None)
    assert_parsed_only_as_the_codec_decodes(frame)


@pytest.mark.parametrize("key_bytes", [1, 31, 32, 255, 256, 1024])
def test_each_string_format_of_a_key_is_parsed_up_to_the_limit(key_bytes):
    """fixstr (up to 31 bytes), str 8 (up to 255) and str 16, the encoder's three for a key."""
    get = Get(2**64 - 1, "k" * key_bytes, Consistency.ONE)
    assert parse_get_frame(encode(get), MAX_KEY) == (get.id, get.key, Consistency.ONE)
    assert parse_get_frame(encode(get), key_bytes - 1) is None


# --- the reply ---------------------------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=50) | st.binary(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, MAX_REQUEST_ID), values, st.integers(0, MAX_COUNTER), st.text(min_size=1, max_size=64))
def test_the_reply_is_the_encoders_byte_for_byte(request_id, value, counter, node):
    raw = Raw(msgpack.packb(value))
    version = Version(counter, node)
    assert get_reply_frame(request_id, raw, version) == encode(GetReply(request_id, raw, version))


# --- real nodes ----------------------------------------------------------------------------------

TOKENS = {"root": "root-token-0123456789abcdef", "scoped": "scoped-token-0123456789abcdef",
          "reader": "reader-token-0123456789abcdef"}
AUTH_FILE = f"""\
root      admin  {TOKENS["root"]}
scoped    read   {TOKENS["scoped"]}    app/
reader    read   {TOKENS["reader"]}
"""


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("hot-path")
    with NodeProcess("n1", data_dir=root / "n1", extra_args=["--auth-file", write_auth_file(root, AUTH_FILE)]) as node:
        with Client(node.address, token=TOKENS["root"]) as client:
            client.put("app/x", "in app")
            client.put("other", "outside app")
            # Read back, so both values are in the node's cache: the hot path's case.
            assert client.get("app/x") == "in app" and client.get("other") == "outside app"
        yield node


def _hello(conn: RawConnection, token: str) -> None:
    assert isinstance(conn.request(Hello(1, token=token)), HelloReply)


@pytest.mark.parametrize("consistency", [None, Consistency.ONE])
def test_a_cached_get_keeps_the_key_prefix_of_its_token(auth_node, consistency):
    with RawConnection(auth_node.address) as conn:
        _hello(conn, TOKENS["scoped"])
        refused = conn.request(Get(2, "other", consistency))
        assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.FORBIDDEN
        assert "only use keys starting with 'app/'" in refused.message
        answered = conn.request(Get(3, "app/x", consistency))
        assert isinstance(answered, GetReply) and answered.value == "in app"
    with Client(auth_node.address, token=TOKENS["scoped"]) as client, pytest.raises(ForbiddenError):
        client.get("other", consistency="one")


def test_a_cached_get_without_a_token_is_refused(auth_node):
    with RawConnection(auth_node.address) as conn:
        refused = conn.request(Get(1, "app/x"))
        assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.UNAUTHENTICATED
        _hello(conn, TOKENS["reader"])
        answered = conn.request(Get(2, "other"))
        assert isinstance(answered, GetReply) and answered.value == "outside app" and answered.id == 2


def test_gets_split_and_joined_in_reads_are_answered_in_order(auth_node):
    frames = [encode(Get(request_id, "app/x" if request_id % 2 else "other")) for request_id in range(10, 14)]
    with RawConnection(auth_node.address) as conn:
        _hello(conn, TOKENS["reader"])
        joined = b"".join(frames)
        conn.send_bytes(joined[:-3])  # three whole GETs and most of the fourth, in one write
        first = conn.receive(3)
        conn.send_bytes(joined[-3:])
        (last,) = conn.receive(1)
    assert [reply.id for reply in [*first, last]] == [10, 11, 12, 13]
    assert [reply.value for reply in [*first, last]] == ["outside app", "in app"] * 2


def test_a_connection_that_only_makes_cached_gets_has_spoken(tmp_path):
    """The hello timeout closes a connection that has made no request; GETs
    answered from memory are requests too."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--hello-timeout", "0.5"]) as node:
        with Client(node.address) as client:
            client.put("k", "v")
            assert client.get("k") == "v"
        with RawConnection(node.address, timeout=5) as conn:
            assert conn.request(Get(1, "k")).value == "v"
            # Three hello timeouts: a connection counted as silent is closed within one.
            assert not conn.closed_by_peer(timeout=1.5)
            assert conn.request(Get(2, "k", Consistency.ONE)).value == "v"


def test_a_cached_get_waits_like_any_request_while_max_inflight_are_in_flight(tmp_path):
    """--max-inflight 2, and two quorum GETs in flight (both peers hung, not yet
    DOWN, so each waits out its deadline): a GET of a cached value that arrives
    alone is held back until they are answered, as every request is. (The
    connection stops reading at the cap, FlowControl: the GET is not read, so
    the hot path never sees it before then.)"""
    options = ["--max-inflight", "2", "--failure-timeout", "30", "--write-timeout", "1"]
    with LocalCluster(3, data_dir=tmp_path, node_args=options) as cluster:
        n1 = cluster["n1"]
        with Client(cluster.endpoints_of("n1"), **cluster.client_options) as client:
            client.put("hot", "v")
            assert client.get("hot", consistency="one") == "v"
        cluster.pause("n2")
        cluster.pause("n3")
        try:
            with cluster.raw("n1", timeout=10) as conn:
                conn.send(Get(1, "a", Consistency.QUORUM), Get(2, "b", Consistency.QUORUM))
                wait_for(lambda: unread_bytes(n1.address) == 0, timeout=5, what="n1 reading both GETs")
                conn.send(Get(3, "hot", Consistency.ONE))
                replies = conn.receive(3)
        finally:
            cluster.resume("n2")
            cluster.resume("n3")
    assert [reply.id for reply in replies][2] == 3, replies
    assert all(reply.code == ErrorCode.NO_QUORUM for reply in replies[:2]), replies
    assert replies[2].value == "v"


# --- the hot path beside the codec's, on a real node ------------------------------------------


def _reply_frames(conn: RawConnection, count: int) -> list[bytes]:
    """The next ``count`` frames the node sends, as bytes."""
    received, frames = b"", []
    while len(frames) < count:
        if len(received) >= 4 and len(received) >= 4 + int.from_bytes(received[:4], "big"):
            end = 4 + int.from_bytes(received[:4], "big")
            frames.append(received[:end])
            received = received[end:]
            continue
        chunk = conn.sock.recv(1 << 16)
        if not chunk:
            raise EOFError(f"the node closed the connection after {len(frames)} of {count} frames")
        received += chunk
    assert not received
    return frames


def _get_counters(http: str) -> dict:
    """The node's GET and value cache counters, from its /metrics."""
    return {(name, labels): sample for (name, labels), sample in scrape(http).items()
            if name.startswith("kvwire_cache_") or (name == "kvwire_requests_total" and ("op", "get") in labels)}


def _moved(before: dict, after: dict) -> dict:
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


def test_the_hot_path_and_the_codec_answer_and_count_alike(tmp_path):
    """A GET alone in its write takes the hot path; the same GET with a PING
    after it in one write takes the codec's. Both must give the same bytes and
    count the same: the GET's result and latency, and a cache hit or miss."""
    http = f"127.0.0.1:{free_port()}"
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--http-listen", http]) as node:
        with Client(node.address) as client:
            client.put("text", "a value")
            client.put("nil", None)  # a nil value: its reply is written by the encoder
            client.put("gone", 1)
            client.delete("gone")
        cases = [("text", None, "a value"), ("text", Consistency.ONE, "a value"), ("text", Consistency.QUORUM, "a value"),
                 ("nil", None, None), ("absent", None, ErrorCode.NOT_FOUND), ("gone", Consistency.ONE, ErrorCode.NOT_FOUND)]
        with RawConnection(node.address) as conn:
            for key, consistency, expected in cases:
                get = encode(Get(9, key, consistency))
                before = _get_counters(http)
                conn.send_bytes(get)
                (alone,) = _reply_frames(conn, 1)
                between = _get_counters(http)
                conn.send_bytes(get + encode(Ping(10)))
                with_the_codec, _pong = _reply_frames(conn, 2)
                after = _get_counters(http)
                assert alone == with_the_codec, key
                counted = _moved(before, between)
                assert counted == _moved(between, after), key
                assert sum(moved for (name, _), moved in counted.items() if name == "kvwire_requests_total") == 1
                reply = _decoded(alone)
                if isinstance(expected, ErrorCode):
                    assert isinstance(reply, ErrorReply) and reply.code == expected, reply
                else:
                    assert isinstance(reply, GetReply) and reply.value == expected, reply


def _decoded(frame: bytes):
    codec = Connection(Side.CLIENT)
    codec.receive_data(frame)
    return codec.next_event()


def test_a_get_answered_from_memory_keeps_its_key_in_the_cache(tmp_path):
    """--cache-entries 2: a GET answered from memory makes its key the most
    recently used, so the next value cached evicts the other key, not it."""
    http = f"127.0.0.1:{free_port()}"
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--http-listen", http, "--cache-entries", "2"]) as node:
        with Client(node.address) as client:
            client.put("first", 1)
            client.put("second", 2)
            with RawConnection(node.address) as conn:
                assert conn.request(Get(1, "first", Consistency.ONE)).value == 1
            client.put("third", 3)  # the cache holds two values: one of the others goes
            before = _get_counters(http)
            assert client.get("first", consistency="one") == 1
            assert _moved(before, _get_counters(http)).get(("kvwire_cache_hits_total", ())) == 1
            before = _get_counters(http)
            assert client.get("second", consistency="one") == 2
            assert _moved(before, _get_counters(http)).get(("kvwire_cache_misses_total", ())) == 1
