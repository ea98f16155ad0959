"""The compiled codec (kvwire.protocol.compiled) against the codec's own checks.

The fast path may only accept: whatever it takes must decode, on the codec's
path, to the same message, and whatever that path refuses it must leave to it.
A node keeps values as the bytes they came in (kvwire.protocol.values), so the
same holds with ``raw_values``, where a value stays a msgspec.Raw.
"""

from __future__ import annotations

import datetime

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import Raw

from kvwire import Client
from kvwire.protocol import (
    Connection,
    Delete,
    DeleteReply,
    ErrorCode,
    ErrorReply,
    Fetch,
    FetchReply,
    Get,
    GetReply,
    HealthReply,
    Hello,
    Lookup,
    LookupReply,
    Ping,
    Pong,
    ProtocolError,
    Put,
    PutReply,
    Replicate,
    ReplicateReply,
    Side,
    Version,
    encode,
    encode_payload,
)
from kvwire.protocol import codec
from kvwire.protocol.compiled import decode_fast
from kvwire.protocol.strict import may_hold_timestamp
from kvwire.protocol.values import python_value
from kvwire.testing import LocalCluster, RawConnection
from test_codec import INVALID, VALID, message_from_json
from test_codec_properties import almost_messages, messages

HOT = (Ping, Get, Put, Delete, Replicate, Lookup, Fetch,
       ErrorReply, Pong, GetReply, PutReply, DeleteReply, ReplicateReply, LookupReply, FetchReply)


def replies(message) -> bool:
    return message.op >= 0x80


def checked(payload: bytes, replies: bool):
    """The codec's own decoding, or the ProtocolError it raises."""
    try:
        return codec._decode_checked(payload, replies)
    except ProtocolError as exc:
        return exc


def as_python(message):
    """``message`` with a Raw value unpacked, to compare with the codec's."""
    if isinstance(getattr(message, "value", None), Raw):
        message.value = python_value(message.value)
    return message


def assert_only_accepts_what_the_codec_accepts(payload: bytes) -> None:
    for side_replies in (False, True):
        expected = checked(payload, side_replies)
        for raw_values in (False, True):
            fast = decode_fast(payload, replies=side_replies, raw_values=raw_values)
            if fast is None:
                continue
            assert not isinstance(expected, ProtocolError), f"fast path took what the codec refuses: {expected}"
            assert as_python(fast) == expected


# --- every vector ------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["name"])
def test_fast_path_takes_each_valid_vector_of_its_ops_as_the_codec_does(vector):
    message = message_from_json(vector["message"])
    payload = bytes.fromhex(vector["hex"])[4:]
    fast = decode_fast(payload, replies=replies(message), raw_values=False)
    if type(message) in HOT:
        assert fast == message
    else:
        assert fast is None  # HELLO, HEALTH, DIGESTS, SYNC and their replies: the codec's path
    assert_only_accepts_what_the_codec_accepts(payload)


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v["name"])
def test_each_invalid_vector_is_refused_alike_with_raw_values(vector):
    """A node (raw values) refuses every invalid vector with the same code as a client would."""
    side = Side.NODE if vector["side"] == "node" else Side.CLIENT
    outcomes = []
    for raw_values in (False, True):
        conn = Connection(side, raw_values=raw_values)
        conn.receive_data(bytes.fromhex(vector["hex"]))
        if vector["eof"]:
            conn.receive_data(b"")
        with pytest.raises(ProtocolError) as info:
            conn.next_event()
        outcomes.append((info.value.code, info.value.fatal, info.value.request_id, str(info.value)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == ErrorCode[vector["error"]["code"]]


# --- generated messages and near-misses --------------------------------------------------


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_fast_path_takes_every_hot_message_as_the_codec_does(message):
    payload = encode_payload(message)
    fast = decode_fast(payload, replies=replies(message), raw_values=False)
    # A payload holding bytes that read as a timestamp's start is left to the
    # codec's own search (strict.holds_timestamp), whatever they are.
    if type(message) in HOT and not may_hold_timestamp(payload):
        assert fast == checked(payload, replies(message))
        raw = decode_fast(payload, replies=replies(message), raw_values=True)
        assert as_python(raw) == fast
    assert_only_accepts_what_the_codec_accepts(payload)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(almost_messages)
def test_fast_path_leaves_every_near_miss_to_the_codec(body):
    assert_only_accepts_what_the_codec_accepts(msgpack.packb(body))


def damaged(data: st.DataObject, encoded: bytes) -> bytes:
    """``encoded`` with one to three of its bytes flipped a bit, set, inserted or deleted."""
    damaged = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(damaged) - 1))
        action = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if action == "flip":
            damaged[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "set":
            damaged[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            damaged.insert(at, data.draw(st.integers(0, 255)))
        elif len(damaged) > 1:
            del damaged[at]
    return bytes(damaged)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_fast_path_leaves_every_damaged_payload_to_the_codec(message, data):
    assert_only_accepts_what_the_codec_accepts(damaged(data, encode_payload(message)))


# --- the rules, one by one ---------------------------------------------------------------

PUT_HEAD = bytes.fromhex("84a26f7004a2696401a36b6579a16b")  # {op: 4, id: 1, key: "k", ...


@pytest.mark.parametrize("payload, why", [
    (bytes.fromhex("85a26f7004a2696401a36b6579a16ba576616c756501a36b6579a16a"), "key sent twice"),
    (bytes.fromhex("84a26f7004a2696401a26964") + bytes.fromhex("02a576616c756501"), "id sent twice"),
    (bytes.fromhex("85a26f7004a2696401a36b6579a16ba576616c756501a772657175657374c0"), "optional field sent as nil"),
    (bytes.fromhex("85a26f7004a2696401a36b6579a16ba576616c756501a27a7a01"), "an unknown field"),
    (PUT_HEAD + bytes.fromhex("a576616c756582a16101a16102"), "a value's map repeats a key"),
    (PUT_HEAD + bytes.fromhex("a576616c7565810101"), "a value's map has an integer key"),
    (PUT_HEAD + bytes.fromhex("a576616c7565d40500"), "a value is an extension type"),
    (PUT_HEAD + bytes.fromhex("a576616c7565d6ff00000001"), "a value is a timestamp"),
    (PUT_HEAD + bytes.fromhex("a576616c756591d6ff00000001"), "a value holds a timestamp"),
    (PUT_HEAD + bytes.fromhex("a576616c7565a2c328"), "a value's string is not UTF-8"),
], ids=lambda item: item if isinstance(item, str) else "")
def test_what_the_fast_path_leaves_to_the_codec(payload, why):
    for raw_values in (False, True):
        assert decode_fast(payload, replies=False, raw_values=raw_values) is None, why
    assert_only_accepts_what_the_codec_accepts(payload)


@pytest.mark.parametrize("timestamp", [
    "d6ff00000001", "c704ff00000001", "c708ff" + "00" * 8, "c70cff" + "00" * 12,
    "c80004ff00000001", "c8000cff" + "00" * 12, "c900000008ff" + "00" * 8,
], ids=lambda form: form[:4])
@pytest.mark.parametrize("nested", [False, True], ids=["value", "inside an array"])
def test_a_timestamp_in_any_ext_form_is_refused_on_both_sides(timestamp, nested):
    """msgpack reads type -1 of 4, 8 or 12 bytes as a timestamp in every ext form,
    not only the shortest; a node that kept one would send peers a REPLICATE
    they refuse, fatally (found by review, 2026-12-01)."""
    payload = PUT_HEAD + bytes.fromhex("a576616c7565" + ("91" if nested else "") + timestamp)
    for raw_values in (False, True):
        conn = Connection(Side.NODE, raw_values=raw_values)
        conn.receive_data(encode_frame(payload))
        with pytest.raises(ProtocolError, match="extension type -1 is not allowed") as info:
            conn.next_event()
        assert info.value.fatal


@pytest.mark.parametrize("depth, accepted", [(1023, True), (1024, False)])
def test_a_value_nests_at_most_1023_deep_on_both_sides(depth, accepted):
    payload = PUT_HEAD + bytes.fromhex("a576616c7565") + b"\x91" * depth + b"\xc0"
    for raw_values in (False, True):
        conn = Connection(Side.NODE, raw_values=raw_values)
        conn.receive_data(encode_frame(payload))
        if accepted:
            message = conn.next_event()
            if raw_values:
                assert bytes(message.value) == b"\x91" * depth + b"\xc0"
            else:
                value, levels = message.value, 0
                while isinstance(value, list) and len(value) == 1:
                    value, levels = value[0], levels + 1
                assert (levels, value) == (depth, None)
        else:
            with pytest.raises(ProtocolError):
                conn.next_event()


def test_a_value_off_the_fast_path_keeps_its_bytes_too():
    """An unknown field (which receivers ignore, 3.2) sends a PUT to the codec's own
    path; a node still keeps the value's bytes as sent, a float 32 included."""
    payload = bytes.fromhex("85a26f7004a2696401a36b6579a16ba576616c7565ca3fc00000a46e657874c3")
    assert decode_fast(payload, replies=False, raw_values=True) is None
    conn = Connection(Side.NODE, raw_values=True)
    conn.receive_data(encode_frame(payload))
    assert conn.next_event() == Put(1, "k", Raw(bytes.fromhex("ca3fc00000")))


def test_a_node_keeps_a_value_as_the_bytes_it_came_in():
    """Not re-packed: a non-shortest form (5 as uint 16) stays as sent, and goes on so."""
    payload = PUT_HEAD + bytes.fromhex("a576616c7565cd0005")
    conn = Connection(Side.NODE, raw_values=True)
    conn.receive_data(encode_frame(payload))
    message = conn.next_event()
    assert message == Put(1, "k", Raw(b"\xcd\x00\x05"))
    forwarded = encode(Replicate(2, "k", Version(1, "n1"), message.value))
    assert forwarded.endswith(b"\xa5value\xcd\x00\x05\xa7deleted\xc2")
    # A client reads the same bytes as the Python value.
    client = Connection(Side.CLIENT)
    client.receive_data(encode(GetReply(3, message.value, Version(1, "n1"))))
    assert client.next_event() == GetReply(3, 5, Version(1, "n1"))


def test_nil_is_none_on_both_sides():
    payload = PUT_HEAD + bytes.fromhex("a576616c7565c0")
    for raw_values in (False, True):
        conn = Connection(Side.NODE, raw_values=raw_values)
        conn.receive_data(encode_frame(payload))
        assert conn.next_event() == Put(1, "k", None)


@pytest.mark.parametrize("value", [{1, 2}, datetime.datetime(2026, 1, 1), object()], ids=lambda value: type(value).__name__)
def test_values_msgpack_cannot_carry_are_refused_when_encoding(value):
    """msgspec would write a set as an array and a datetime as a timestamp; a
    value is packed by msgpack, which refuses both, as before."""
    with pytest.raises(ProtocolError, match="cannot encode Put"):
        encode(Put(1, "k", value))


def encode_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


# --- a real cluster ----------------------------------------------------------------------


def test_a_cluster_stores_and_serves_the_bytes_a_client_sent(tmp_path):
    """Through real nodes: a value in a non-shortest form comes back, from every
    node, as the very bytes the writer sent; the Python client reads it as usual."""
    # --sync normal: not a durability test; a shared disk's fsync stall must not fail a write.
    with LocalCluster(3, data_dir=tmp_path, sync="normal") as cluster:
        writer = RawConnection(cluster["n1"].address, raw_values=True)
        writer.request(Hello(1))
        reply = writer.request(Put(2, "odd", Raw(b"\x92\xcd\x00\x05\xd9\x01x")))
        assert isinstance(reply, PutReply), reply
        for node in ("n1", "n2", "n3"):
            reader = RawConnection(cluster[node].address, raw_values=True)
            reader.request(Hello(1))
            got = reader.request(Get(2, "odd"))
            assert got == GetReply(2, Raw(b"\x92\xcd\x00\x05\xd9\x01x"), reply.version), node
        with Client(cluster.endpoints, timeout=5) as client:
            assert client.get("odd") == [5, "x"]


def test_a_health_map_nested_to_the_limit_round_trips():
    """msgspec's encoder stops at Python's recursion limit; a HEALTH_REPLY's map,
    like a value, is packed by msgpack, which goes to the protocol's 1,023 levels
    (found by tests/fuzz/codec.py)."""
    deep: dict = {}
    for _ in range(1022):
        deep = {"a": deep}
    frame = encode(HealthReply(7, deep))
    client = Connection(Side.CLIENT)
    client.receive_data(frame)
    again = client.next_event()
    assert type(again) is HealthReply and again.id == 7
    assert encode(again) == frame  # compared as bytes: == on 1,022 levels would recurse too deep
