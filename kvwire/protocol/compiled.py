"""msgspec's compiled encoding of every message, and its fast path of decoding
for the ops every read and write takes.

Encoding writes a Struct per op whose fields are the message's in order, ``op``
(the tag) first and each optional field left out when None, which is the
codec's layout byte for byte. A value (or a HEALTH_REPLY's map) that is not yet
msgpack bytes is packed by msgpack itself, which refuses what msgspec would
quietly convert (a set, a datetime).

msgspec decodes a payload straight into a typed Struct, checking every field's
type and bounds in C, where the codec's checks run in Python. It only ever
accepts: a payload it cannot take whole, for any reason, goes to the codec's
own path (kvwire.protocol.codec), which names exactly what is wrong and with
which code. So what it does accept must be exactly what that path accepts,
decoded to the same message; tests/test_compiled.py holds it to that on every
test vector and on generated payloads. Three rules keep it so:

- every Struct forbids unknown fields, and an optional field is typed without
  None, so an explicit nil (which the codec refuses) leaves the fast path;
- a map that repeats a key decodes, in msgspec, to its last entry: the
  entries counted in the map's header must equal the fields decoded;
- a value that holds a map or an array is read again by the codec's strict
  unpacker (kvwire.protocol.strict), and one that may hold a timestamp is
  left to the codec; no typed field can hold an extension type.
"""

from __future__ import annotations

import dataclasses
import operator
import typing
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple, Union

import msgpack

import msgspec
from msgspec import Meta, Raw
from msgspec.structs import astuple

from .limits import MAX_COUNTER, MAX_REQUEST_ID_CHARS
from .messages import (
    OPTIONAL_FIELDS,
    Consistency,
    Delete,
    DeleteReply,
    ErrorReply,
    Fetch,
    FetchReply,
    Get,
    GetReply,
    Lookup,
    LookupReply,
    Message,
    Ping,
    Pong,
    Put,
    PutReply,
    Replicate,
    ReplicateReply,
    Version,
)
from .values import checked_raw, python_value

_UInt = Annotated[int, Meta(ge=0)]  # msgpack itself bounds it by 2**64 - 1

# Each field's type on the wire, by name, as the codec's _CHECKS checks it.
_WIRE_TYPES: dict[str, Any] = {
    "key": str,  # non-empty and size: the codec's check_key, after either path
    "value": Raw,
    "version": Version,  # its counter's bounds are annotated on Version
    "consistency": Consistency,
    "request": Annotated[str, Meta(min_length=1, max_length=MAX_REQUEST_ID_CHARS)],
    "deleted": bool,
    "expect": Version,
    "retry": bool,
    "created": bool,
    "applied": bool,
    "prior": Version,
    "prior_deleted": bool,
    "joining": bool,
    "writable": bool,
    "observed": bool,
    "read": bool,
    "repair": bool,
    "floor": Annotated[int, Meta(ge=0, le=MAX_COUNTER)],
    "request_version": Version,
    "request_tentative": bool,
    "code": _UInt,
    "message": str,
    "maybe_applied": bool,
}

_REQUESTS = (Ping, Get, Put, Delete, Replicate, Lookup, Fetch)
_REPLIES = (ErrorReply, Pong, GetReply, PutReply, DeleteReply, ReplicateReply, LookupReply, FetchReply)


class _Shape(NamedTuple):
    message: type
    entries: int  # map entries with no optional field sent: op, id and every required field
    optional: tuple[int, ...]  # positions of the optional fields in the Struct's tuple
    value: int  # position of ``value``, or -1


def _wire_struct(cls: type) -> tuple[type, _Shape]:
    optional = OPTIONAL_FIELDS.get(cls.op, frozenset())
    spec: list[tuple] = []
    for field in dataclasses.fields(cls):
        if field.name == "id":
            # Only an ERROR about a frame whose id was unreadable carries nil.
            spec.append(("id", _UInt | None if cls is ErrorReply else _UInt))
        elif field.name in optional:
            # Typed without None, defaulting to it: a nil sent leaves the fast path.
            spec.append((field.name, _WIRE_TYPES[field.name], None))
        else:
            spec.append((field.name, _WIRE_TYPES[field.name]))
    struct = msgspec.defstruct(
        f"Wire{cls.__name__}", spec, tag_field="op", tag=int(cls.op), forbid_unknown_fields=True
    )
    names = [item[0] for item in spec]
    shape = _Shape(
        cls,
        1 + len(spec) - len(optional),  # "op" is the tag, outside the Struct's fields
        tuple(index for index, name in enumerate(names) if name in optional),
        names.index("value") if "value" in names else -1,
    )
    return struct, shape


_SHAPES: dict[type, _Shape] = {}


def _decoder(classes: tuple[type, ...]) -> msgspec.msgpack.Decoder:
    structs = []
    for cls in classes:
        struct, shape = _wire_struct(cls)
        _SHAPES[struct] = shape
        structs.append(struct)
    return msgspec.msgpack.Decoder(Union[tuple(structs)])  # noqa: UP007 - a runtime union of built types


_REQUEST_DECODER = _decoder(_REQUESTS)
_REPLY_DECODER = _decoder(_REPLIES)


def _map_entries(payload: bytes) -> int:
    """The entry count in the header of the map ``payload`` starts with (fixmap, map 16, map 32)."""
    first = payload[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F
    if first == 0xDE:
        return int.from_bytes(payload[1:3], "big")
    return int.from_bytes(payload[1:5], "big")  # 0xdf: a Struct decodes from nothing else


def decode_fast(payload: bytes, *, replies: bool, raw_values: bool) -> Message | None:
    """``payload``'s message, or None when the codec's own path must decide.

    ``raw_values``: leave a value as its msgspec.Raw bytes (a node), rather
    than unpack it (a client). The key's size is left to the caller: it
    depends on the limits, and the codec checks it after either path.
    """
    # Every request and reply passes here: locals, not attribute lookups.
    try:
        wire = (_REPLY_DECODER if replies else _REQUEST_DECODER).decode(payload)
    except Exception:  # noqa: BLE001 - whatever the reason, the codec's path says it exactly
        return None
    message, entries, optional, value_at = _SHAPES[type(wire)]
    fields = astuple(wire)
    for index in optional:
        if fields[index] is not None:
            entries += 1
    first = payload[0]
    if entries != (first & 0x0F if first <= 0x8F else _map_entries(payload)):  # a Struct is a map: first >= 0x80
        return None  # a key sent twice
    if value_at >= 0:
        fields = list(fields)
        try:
            raw = fields[value_at]
            fields[value_at] = checked_raw(raw) if raw_values else python_value(raw)
        except Exception:  # noqa: BLE001 - as above
            return None
    return message(*fields)


# --- encoding --------------------------------------------------------------------------


# Fields that hold any msgpack value, to any depth: packed by msgpack, which
# refuses what the protocol does and, unlike msgspec, does not run into
# Python's recursion limit on a value nested 1,023 deep.
_NESTED = frozenset({"value", "health"})


class _Encoding(NamedTuple):
    struct: type
    fields: Callable[[Message], tuple]  # the message's fields, ``id`` first
    nested: tuple[int, ...]  # positions of the _NESTED fields


def _encoding(cls: type) -> _Encoding:
    optional = OPTIONAL_FIELDS.get(cls.op, frozenset())
    names = [field.name for field in dataclasses.fields(cls)]
    spec = [(name, Any, None) if name in optional else (name, Any) for name in names]
    struct = msgspec.defstruct(f"Encode{cls.__name__}", spec, tag_field="op", tag=int(cls.op), omit_defaults=True)
    getter = operator.attrgetter(*names) if len(names) > 1 else (lambda message: (message.id,))
    return _Encoding(struct, getter, tuple(index for index, name in enumerate(names) if name in _NESTED))


_ENCODINGS: dict[int, _Encoding] = {cls.op: _encoding(cls) for cls in typing.get_args(Message)}
_encode = msgspec.msgpack.Encoder().encode


def encode_compiled(message: Message) -> bytes:
    """The msgpack map for ``message``; raises TypeError, ValueError or
    OverflowError for a field msgpack cannot carry."""
    struct, get_fields, nested = _ENCODINGS[message.op]
    fields = get_fields(message)
    for index in nested:
        value = fields[index]
        if value is not None and type(value) is not Raw:
            fields = list(fields)
            fields[index] = Raw(msgpack.packb(value))
    return _encode(struct(*fields))
