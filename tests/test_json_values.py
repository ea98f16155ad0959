"""kvwire.client.json_values, which the REST bridge and kvwire-cli share: the strict
reader, and the writer whose iterative fallback takes values too deep for recursion."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvwire.client.json_values import (
    _ENCODERS,
    UnrepresentableJsonError,
    _iterative_json,
    json_text,
    jsonable,
    parse_json,
)

# What a stored value may hold (msgpack's types; map keys str or bytes), NaN and infinities included.
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8) | st.binary(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | st.binary(max_size=4), inner,
                                                                max_size=4),
    max_leaves=20,
)


def outcome(write, document):
    try:
        return write(document)
    except (UnrepresentableJsonError, ValueError) as exc:
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(document=VALUES)
def test_the_iterative_writer_writes_what_the_recursive_one_does(document):
    for (compact, allow_nan), encoder in _ENCODERS.items():
        recursive = outcome(lambda doc: encoder.encode(jsonable(doc)), document)
        iterative = outcome(lambda doc: _iterative_json(doc, encoder), document)
        if recursive is ValueError:  # the encoder's own word for NaN, which json_text renames
            recursive = UnrepresentableJsonError
        assert iterative == recursive, (compact, allow_nan)


def test_a_value_as_deep_as_a_node_takes_is_written():
    deep: object = 0
    for _ in range(1023):
        deep = [deep]
    text = json_text({"value": deep})
    assert text == '{"value":' + "[" * 1023 + "0" + "]" * 1023 + "}"
    deep_nan: object = math.nan
    for _ in range(1000):
        deep_nan = [deep_nan]
    with pytest.raises(UnrepresentableJsonError, match="NaN"):
        json_text(deep_nan)
    assert json_text(deep_nan, allow_nan=True).endswith("[NaN" + "]" * 1000)


def test_colliding_map_keys_are_unrepresentable_at_any_depth():
    colliding = {b"a": 1, "$bytes:YQ==": 2}
    with pytest.raises(UnrepresentableJsonError, match="lose one of them"):
        json_text(colliding)
    nested: object = colliding
    for _ in range(1000):
        nested = [nested]
    with pytest.raises(UnrepresentableJsonError, match="lose one of them"):
        json_text(nested)


@pytest.mark.parametrize("value", [
    {"$bytes": "YWI="},  # would be read back as b"ab"
    [1, {"k": {"$bytes": "YWI="}}],
    {b"key": {"$bytes": "YWI="}},  # the walk of bytes keys
    {"$bytes": ""},  # b""
], ids=["alone", "nested", "under-bytes-key", "empty"])
def test_a_map_whose_only_key_is_the_bytes_tag_is_unrepresentable(value):
    with pytest.raises(UnrepresentableJsonError, match='only key is "\\$bytes"'):
        json_text(value)
    nested: object = value
    for _ in range(1000):  # the iterative writer
        nested = [nested]
    with pytest.raises(UnrepresentableJsonError, match='only key is "\\$bytes"'):
        json_text(nested)


@pytest.mark.parametrize("value", [{"$bytes": 5}, {"$bytes": "not base64!"}, {"$bytes": None}])
def test_a_bytes_tag_map_that_could_not_pass_for_bytes_is_shown(value):
    """Shown as it is; read back, it is refused as a malformed $bytes, never taken for bytes."""
    text = json_text(value)
    with pytest.raises(ValueError, match="must hold a base64 string"):
        parse_json(text)


def test_a_value_with_bytes_and_such_maps_is_judged_by_the_maps_alone():
    assert json_text([b"ab", b"cd", {"$bytes": 5}]) == '[{"$bytes":"YWI="},{"$bytes":"Y2Q="},{"$bytes":5}]'
    with pytest.raises(UnrepresentableJsonError, match="holding base64"):
        json_text([b"ab", {"$bytes": "Y2Q="}])  # two openings, one bytes value: the walk finds the map
    with pytest.raises(UnrepresentableJsonError, match="holding base64"):
        json_text([b"ab", {"$bytes": "Y2Q="}], compact=False)


def test_bytes_are_still_written_by_every_writer():
    # Not alone in its map, the tag is a plain member: shown as it is, and read back as a map.
    assert parse_json(json_text({"$bytes": "YWI=", "then": b"\x00"})) == {"$bytes": "YWI=", "then": b"\x00"}
    assert parse_json(json_text({"b": b"ab", "s": "$bytes", "l": ["$bytes"]})) == {"b": b"ab", "s": "$bytes", "l": ["$bytes"]}
    assert parse_json(json_text({b"k": b"ab"})) == {"$bytes:aw==": b"ab"}
    deep: object = b"ab"
    for _ in range(1000):
        deep = [deep]
    assert json_text(deep) == "[" * 1000 + '{"$bytes":"YWI="}' + "]" * 1000


@pytest.mark.parametrize("text, message", [
    ('{"a": 1, "a": 2}', "names 'a' twice"),
    ("NaN", "NaN is not JSON"),
    ("-Infinity", "-Infinity is not JSON"),
    ("1e400", "beyond the range of a 64-bit float"),
    ('{"$bytes": "A"}', "must hold a base64 string"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
])
def test_the_reader_refuses_what_json_values_cannot_store(text, message):
    with pytest.raises(ValueError, match=message):
        parse_json(text)


def test_the_reader_keeps_integers_exact_in_msgpack_range_and_reads_bytes():
    assert parse_json('{"n": 18446744073709551615, "m": -9223372036854775808, "b": {"$bytes": "AP8="}}') == {
        "n": 2**64 - 1, "m": -(2**63), "b": b"\x00\xff"}
    assert parse_json("18446744073709551616") == 1.8446744073709552e19
    with pytest.raises(json.JSONDecodeError):
        parse_json("{nope")


@pytest.mark.parametrize("value, held", [
    ([{"$bytes": b"\x00"}], 'another {"$bytes": ...} map'),
    ({"$bytes": 1}, "got 1"),
    ({"$bytes": None}, "got null"),
    ({"$bytes": [1]}, "got an array"),
    ({"$bytes": "notb64!"}, "'notb64!', not base64"),
])
def test_a_tag_map_shown_but_not_readable_is_refused_naming_what_json_held(value, held):
    """A REST probe read such a value (200) and PUT it back: the refusal showed Python's
    repr of the inner map already decoded, b'\\x00', which no one had sent."""
    with pytest.raises(ValueError, match="must hold a base64 string") as refused:
        parse_json(json_text(value))
    assert held in str(refused.value) and "b'" not in str(refused.value)
