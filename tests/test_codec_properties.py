"""Properties of the codec, checked with hypothesis (docs/protocol.md sections 2 and 7).

(a) Any bytes, in any chunking, then end of stream, give only messages,
    NEED_DATA, CLOSED or ProtocolError: never another exception, never a hang.
(b) A byte stream gives the same messages and errors however it is chunked.
(c) Every message the strategies can build survives encode and decode intact.
"""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvwire.protocol import (
    CLOSED,
    DEFAULT_LIMITS,
    NEED_DATA,
    Connection,
    Consistency,
    Delete,
    DeleteReply,
    Digests,
    DigestsReply,
    ErrorCode,
    ErrorReply,
    Fetch,
    FetchReply,
    Get,
    GetReply,
    Health,
    HealthReply,
    Hello,
    HelloReply,
    Limits,
    Lookup,
    LookupReply,
    Op,
    Ping,
    Pong,
    ProtocolError,
    Put,
    PutReply,
    Replicate,
    ReplicateReply,
    Role,
    Side,
    Requests,
    RequestsReply,
    Sync,
    SyncReply,
    Version,
    encode,
    frame,
)
from kvwire.protocol.limits import MAX_SYNC_ENTRIES, REPAIR_BUCKETS

# Modest on purpose: the whole suite must stay fast (about a second per property).
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMALL_LIMITS = Limits(max_frame_bytes=1100, max_key_bytes=8, max_value_bytes=64)
limits_st = st.sampled_from([DEFAULT_LIMITS, SMALL_LIMITS])
sides = st.sampled_from([Side.NODE, Side.CLIENT])

# --- messages --------------------------------------------------------------------------

ids = st.integers(0, 2**64 - 1)
texts = st.text(max_size=12)
keys = st.text(min_size=1, max_size=8)  # at most 32 UTF-8 bytes: within the default key limit
counters = st.integers(0, 2**63 - 1)
versions = st.builds(Version, counters, texts)
# Anti-entropy (docs/protocol.md 6.12): 8 bytes per bucket, most of them zero as
# in a real DIGESTS; SYNC entries in ascending key order (str order is code point order).
bucket_numbers = st.integers(0, REPAIR_BUCKETS - 1)
digest_words = st.dictionaries(bucket_numbers, st.integers(0, 2**64 - 1), max_size=6).map(
    lambda words: b"".join(words.get(b, 0).to_bytes(8, "big") for b in range(REPAIR_BUCKETS))
)
sync_entries = st.dictionaries(keys, st.tuples(counters, texts, st.booleans()), max_size=6).map(
    lambda by_key: [[key, *by_key[key]] for key in sorted(by_key)]
)
key_lists = st.lists(keys, max_size=6)
# REQUESTS_REPLY records (docs/protocol.md 6.13): [request id, key, counter, node, tentative].
request_ids = st.text(min_size=1, max_size=12)
request_records = st.lists(st.tuples(request_ids, keys, counters, texts, st.booleans()).map(list), max_size=6)
# What a node can send in HELLO_REPLY: its own Limits, plus entries of a later version.
wire_limits = st.builds(
    lambda key, value, spare, extra: {
        **Limits(max_frame_bytes=min(key + value + 1024 + spare, 2**32 - 1), max_key_bytes=key, max_value_bytes=value).to_wire(),
        **extra,
    },
    st.integers(1, 2**20),
    st.integers(1, 2**31),
    st.integers(0, 2**31),
    st.dictionaries(st.sampled_from(["max_nesting", "max_inflight"]), st.integers(0, 2**64 - 1), max_size=2),
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)  # NaN != NaN would fail equality, not the codec
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), children, max_size=4),
    max_leaves=12,
)

# One strategy per message class; test_strategies_cover_every_op keeps this complete.
REQUEST_STRATEGIES = {
    Hello: st.builds(Hello, ids, st.integers(0, 2**64 - 1), st.sampled_from(Role), st.none() | texts, st.none() | texts),
    Ping: st.builds(Ping, ids),
    Get: st.builds(Get, ids, keys, st.none() | st.sampled_from(Consistency)),
    Put: st.builds(Put, ids, keys, values),
    Delete: st.builds(Delete, ids, keys),
    Health: st.builds(Health, ids),
    Replicate: st.builds(Replicate, ids, keys, versions, values, st.booleans(), st.none() | versions),
    Lookup: st.builds(Lookup, ids, keys),
    Fetch: st.builds(Fetch, ids, keys),
    Digests: st.builds(Digests, ids, digest_words, counters),
    Sync: st.builds(Sync, ids, bucket_numbers, texts, st.booleans(), sync_entries),
    Requests: st.builds(Requests, ids, counters),
}
REPLY_STRATEGIES = {
    ErrorReply: st.builds(
        ErrorReply, st.none() | ids, st.sampled_from(ErrorCode) | st.integers(0, 2**64 - 1), texts, st.none() | st.booleans()
    ),
    HelloReply: st.builds(HelloReply, ids, st.integers(0, 2**64 - 1), texts, texts, st.none() | wire_limits),
    Pong: st.builds(Pong, ids),
    GetReply: st.builds(GetReply, ids, values, versions),
    PutReply: st.builds(PutReply, ids, versions),
    DeleteReply: st.builds(DeleteReply, ids, versions),
    HealthReply: st.builds(HealthReply, ids, st.dictionaries(texts, values, max_size=4)),
    ReplicateReply: st.builds(ReplicateReply, ids, st.booleans(), versions),
    LookupReply: st.builds(LookupReply, ids, versions, st.booleans()),
    # Any combination, not only the ones a node sends (value nil when deleted):
    # the codec checks types, not the relation between fields.
    FetchReply: st.builds(FetchReply, ids, versions, st.booleans(), values),
    DigestsReply: st.builds(DigestsReply, ids, st.lists(bucket_numbers, max_size=6).map(sorted), counters),
    SyncReply: st.builds(SyncReply, ids, key_lists, key_lists),
    RequestsReply: st.builds(RequestsReply, ids, request_records, counters, st.booleans()),
}
requests = st.one_of(*REQUEST_STRATEGIES.values())
replies = st.one_of(*REPLY_STRATEGIES.values())
messages = requests | replies


def accepted_by(side: Side):
    return requests if side is Side.NODE else replies


# --- near-misses: maps that are almost messages, and frames that are not -------------

FIELD_NAMES = [
    "op", "id", "proto", "role", "cluster", "node", "key", "consistency",
    "value", "version", "deleted", "applied", "health", "code", "message",
    "expect", "maybe_applied", "limits", "created",
    "request", "request_version", "tombstones", "digests", "floor", "buckets", "bucket", "after", "last", "entries", "wanted", "offered",
    "cursor", "records",
]
fuzzy_field_values = (
    values
    | st.sampled_from([o.value for o in Op] + ["client", "peer", "quorum", "one", ""])
    | st.tuples(st.integers(-1, 2**64 - 1), st.text(max_size=3) | st.binary(max_size=3)).map(list)
    | st.lists(st.tuples(st.text(max_size=3), st.integers(-1, 2**63), st.text(max_size=2), st.booleans()).map(list),
               max_size=3)  # SYNC entries, in or out of order
    | st.sampled_from([bytes(8 * REPAIR_BUCKETS), bytes(8), REPAIR_BUCKETS - 1, REPAIR_BUCKETS, MAX_SYNC_ENTRIES])
    | ids
)
almost_messages = st.fixed_dictionaries(
    {"op": st.sampled_from([o.value for o in Op]) | st.integers(-1, 300), "id": ids | st.none()},
).flatmap(
    lambda head: st.dictionaries(st.sampled_from(FIELD_NAMES) | texts, fuzzy_field_values, max_size=6).map(
        lambda rest: {**head, **rest}
    )
)


def _deep(depth: int, field: str) -> bytes:
    """A frame whose ``field`` is a list nested ``depth`` deep (1024 containers is msgpack's cap).

    Hypothesis raises the recursion limit while it runs a test, so these cannot
    catch a repr() that recurses too deep; test_codec.py checks that at the
    normal limit.
    """
    head = {"op": 3, "id": 1, "key": "k", "proto": 1, "role": "client"}
    head[field] = "NEST"
    return frame(msgpack.packb(head).replace(msgpack.packb("NEST"), b"\x91" * depth + b"\xc0"))


pieces = st.one_of(
    st.binary(max_size=40),  # raw garbage, usually an absurd length prefix
    st.binary(max_size=40).map(frame),  # well framed, garbage inside
    almost_messages.map(lambda body: frame(msgpack.packb(body))),
    messages.map(encode),
    st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),  # a lone header
    st.builds(_deep, st.integers(1, 1030), st.sampled_from(["key", "op", "id", "role", "value"])),
)
streams = st.lists(pieces, max_size=8).map(b"".join)


# --- feeding ---------------------------------------------------------------------------


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def run(side: Side, limits: Limits, chunks: list[bytes]) -> list:
    """Feed ``chunks`` then end of stream; what came out, NEED_DATA left out.

    Errors are recorded as (code, fatal, request_id, text) so that two runs can
    be compared; reading stops at CLOSED or at the first fatal error.
    """
    conn = Connection(side, limits)
    out: list = []

    def drain() -> bool:
        for _ in range(100_000):  # no stream here holds this many frames: a bound, not a limit
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                out.append((exc.code, exc.fatal, exc.request_id, str(exc)))
                if exc.fatal:
                    return True
                continue
            if event is NEED_DATA:
                return False
            out.append(event)
            if event is CLOSED:
                return True
        raise AssertionError("next_event() never asked for more data")

    for chunk in chunks:
        conn.receive_data(chunk)
        if drain():
            return out
    conn.receive_data(b"")
    assert drain(), "after end of stream, reading must finish with CLOSED or a fatal error"
    return out


def assert_only_allowed_events(events: list) -> None:
    for event in events:
        if isinstance(event, tuple):
            code, fatal, request_id, text = event
            assert isinstance(code, int) and isinstance(fatal, bool) and text
            assert request_id is None or type(request_id) is int
        else:
            assert event is CLOSED or hasattr(event, "op"), event


def test_strategies_cover_every_op():
    assert {cls.op for cls in REQUEST_STRATEGIES} == {op for op in Op if op < Op.ERROR}
    assert {cls.op for cls in REPLY_STRATEGIES} == {op for op in Op if op >= Op.ERROR}


# --- (a) arbitrary bytes ---------------------------------------------------------------


@PROPERTY
@given(side=sides, limits=limits_st, data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=20))
def test_arbitrary_bytes_give_messages_or_protocol_errors(side, limits, data, cuts):
    assert_only_allowed_events(run(side, limits, chunked(data, cuts)))


@PROPERTY
@given(side=sides, limits=limits_st, data=streams, cuts=st.lists(st.integers(0, 2000), max_size=20))
def test_near_miss_streams_give_messages_or_protocol_errors(side, limits, data, cuts):
    assert_only_allowed_events(run(side, limits, chunked(data, cuts)))


# --- (b) chunking never changes the outcome ---------------------------------------------


@st.composite
def side_and_stream(draw):
    side = draw(sides)
    good = accepted_by(side).map(encode)
    bad = st.one_of(
        (replies if side is Side.NODE else requests).map(encode),  # the other half: UNKNOWN_OP
        almost_messages.map(lambda body: frame(msgpack.packb(body))),
        st.binary(min_size=1, max_size=30).map(frame),
    )
    parts = draw(st.lists(good | bad, max_size=10) if draw(st.booleans()) else st.lists(good, max_size=10))
    tail = draw(st.binary(max_size=12) | st.just(b""))  # garbage, or a cut-off frame, at the end
    return side, parts, tail


@PROPERTY
@given(case=side_and_stream(), limits=limits_st, cuts=st.lists(st.integers(0, 3000), max_size=30))
def test_chunking_does_not_change_the_events(case, limits, cuts):
    side, parts, tail = case
    data = b"".join(parts) + tail
    whole = run(side, limits, [data])
    assert run(side, limits, chunked(data, cuts)) == whole
    assert run(side, limits, [data[i : i + 1] for i in range(len(data))]) == whole


@PROPERTY
@given(data=st.data(), side=sides, cuts=st.lists(st.integers(0, 3000), max_size=30))
def test_valid_stream_in_any_chunking_gives_exactly_its_messages(data, side, cuts):
    sent = data.draw(st.lists(accepted_by(side), max_size=10))
    stream = b"".join(encode(m) for m in sent)
    assert run(side, DEFAULT_LIMITS, chunked(stream, cuts)) == [*sent, CLOSED]


# --- (c) round trip --------------------------------------------------------------------


@PROPERTY
@given(message=messages)
def test_encode_decode_round_trip(message):
    side = Side.NODE if message.op < Op.ERROR else Side.CLIENT
    wire = Connection(Side.CLIENT if side is Side.NODE else Side.NODE).send(message)
    conn = Connection(side)
    conn.receive_data(wire)
    decoded = conn.next_event()
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == wire  # same bytes again: e.g. -0.0 stays -0.0, bin stays bin
    assert conn.next_event() is NEED_DATA


# --- (d) a repeated map key never decodes -------------------------------------------------


@st.composite
def message_with_a_repeated_field(draw):
    """A valid frame whose message map holds one of its entries twice (the second
    copy with the same or another value), as no encoder of ours can write it."""
    message = draw(messages)
    body = msgpack.unpackb(encode(message)[4:])
    names = list(body)
    repeated = draw(st.sampled_from(names))
    again = draw(st.just(body[repeated]) | fuzzy_field_values)
    pairs = [(name, body[name]) for name in names]
    pairs.insert(draw(st.integers(names.index(repeated) + 1, len(pairs))), (repeated, again))
    packer = msgpack.Packer()
    payload = packer.pack_map_header(len(pairs)) + b"".join(packer.pack(k) + packer.pack(v) for k, v in pairs)
    return message, repeated, frame(payload)


@PROPERTY
@given(case=message_with_a_repeated_field())
def test_a_repeated_field_is_refused_fatally_only_when_it_leaves_the_id_unknown(case):
    message, repeated, data = case
    side = Side.NODE if message.op < Op.ERROR else Side.CLIENT
    conn = Connection(side)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except ProtocolError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST and "twice" in str(exc)
        # A nil id is valid in an ERROR only, so with two ops it is unknown too.
        assert exc.fatal is (repeated == "id" or (repeated == "op" and message.id is None))
        assert exc.request_id == (None if exc.fatal else message.id)
    else:
        raise AssertionError(f"decoded {event!r} from a map that repeats {repeated!r}")
