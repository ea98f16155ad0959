"""Messages to frames and payloads to messages: docs/protocol.md in code.

A frame is a 4-byte big-endian payload length followed by one msgpack map.
The map always holds ``op`` (an unsigned integer) and ``id`` (an unsigned
integer the reply echoes); the other fields depend on the op. Encoding writes
``op``, ``id`` and then the fields in the order the message class declares
them, which is what makes the spec's hex examples reproducible byte for byte.
"""

from __future__ import annotations

import reprlib
import struct
from dataclasses import fields
from typing import Any, Callable, NamedTuple

import msgpack
from msgspec import Raw, defstruct
from msgspec.msgpack import Decoder

from .compiled import decode_fast, encode_compiled
from .errors import ErrorCode, ProtocolError
from .limits import WIRE_NAMES as LIMIT_NAMES
from .limits import MAX_COUNTER, MAX_REQUEST_ID_CHARS, MAX_REQUEST_RECORDS, MAX_SYNC_ENTRIES, REPAIR_BUCKETS, Limits
from .messages import (
    Consistency,
    Delete,
    DeleteReply,
    Digests,
    DigestsReply,
    ErrorReply,
    Get,
    GetReply,
    Health,
    HealthReply,
    Fetch,
    FetchReply,
    Hello,
    HelloReply,
    Lookup,
    LookupReply,
    OPTIONAL_FIELDS,
    Message,
    Op,
    Ping,
    Pong,
    Put,
    PutReply,
    Replicate,
    ReplicateReply,
    Requests,
    RequestsReply,
    Role,
    Sync,
    SyncReply,
    Version,
)
from .ids import is_valid_id
from .peer_auth import MAX_NONCE_BYTES, NONCE_BYTES, PROOF_BYTES
from .strict import DuplicateKey, may_hold_timestamp, top_level_keys, unpack, unpack_keeping_last
from .strict import holds_timestamp as _holds_timestamp  # a module global: tests/test_fuzz.py plants its own

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
_pack_header = HEADER.pack

MAX_REQUEST_ID = 2**64 - 1
MISSING_ID = object()

_short_repr = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40


class _Invalid(Exception):
    """A field failed its check; the decoder adds the field name and request id."""


def _repeated_keys(pairs: list[tuple[Any, Any]]) -> list[Any]:
    seen: set[Any] = set()
    repeated = []
    for key, _ in pairs:
        if key in seen:
            repeated.append(key)
        seen.add(key)
    return repeated


# --- field checks: each returns the field's Python value or raises _Invalid ------------


def _uint(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise _Invalid(f"must be an unsigned integer, got {_describe(value)}")
    return value


def _text(value: Any) -> str:
    if type(value) is not str:
        raise _Invalid(f"must be a string, got {_describe(value)}")
    return value


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _Invalid(f"must be true or false, got {_describe(value)}")
    return value


def _nonce(value: Any) -> bytes:
    if type(value) is not bytes or not NONCE_BYTES <= len(value) <= MAX_NONCE_BYTES:
        raise _Invalid(f"must be {NONCE_BYTES}-{MAX_NONCE_BYTES} bytes of msgpack bin, got {_describe(value)}")
    return value


def _proof(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != PROOF_BYTES:
        raise _Invalid(f"must be {PROOF_BYTES} bytes of msgpack bin, got {_describe(value)}")
    return value


def _mapping(value: Any) -> dict:
    if type(value) is not dict:
        raise _Invalid(f"must be a map, got {_describe(value)}")
    return value


def _anything(value: Any) -> Any:
    return value


def _limits(value: Any) -> dict:
    if type(value) is not dict:
        raise _Invalid(f"must be a map, got {_describe(value)}")
    for name in LIMIT_NAMES:
        if name not in value:
            raise _Invalid(f"lacks {name!r}")
        if type(value[name]) is not int or value[name] < 1:
            raise _Invalid(f"entry {name!r} must be a positive integer, got {_describe(value[name])}")
    try:
        Limits.from_wire(value)  # the relations between them, as a node checks its own
    except ValueError as exc:
        raise _Invalid(f"is not a node's limits: {exc}") from None
    return value


def _version(value: Any) -> Version:
    if (
        type(value) is not list
        or len(value) != 2
        or type(value[0]) is not int
        or not 0 <= value[0] <= MAX_COUNTER
        or type(value[1]) is not str
    ):
        raise _Invalid(f"must be [counter, node id] with 0 <= counter < 2**63, got {_describe(value)}")
    return Version(value[0], value[1])


def _request_id(value: Any) -> str:
    if type(value) is not str or not 1 <= len(value) <= MAX_REQUEST_ID_CHARS:
        raise _Invalid(f"must be a string of 1 to {MAX_REQUEST_ID_CHARS} characters, got {_describe(value)}")
    return value


def _digests(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != REPAIR_BUCKETS * 8:
        raise _Invalid(f"must be {REPAIR_BUCKETS * 8} bytes of msgpack bin, got {_describe(value)}")
    return value


def _counter(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNTER:
        raise _Invalid(f"must be an integer from 0 to 2**63 - 1, got {_describe(value)}")
    return value


def _bucket(value: Any) -> int:
    if type(value) is not int or not 0 <= value < REPAIR_BUCKETS:
        raise _Invalid(f"must be a bucket number from 0 to {REPAIR_BUCKETS - 1}, got {_describe(value)}")
    return value


def _buckets(value: Any) -> list:
    if type(value) is not list or len(value) > REPAIR_BUCKETS:
        raise _Invalid(f"must be an array of at most {REPAIR_BUCKETS} bucket numbers, got {_describe(value)}")
    for item in value:
        _bucket(item)
    return value


def _entries(value: Any) -> list:
    if type(value) is not list or len(value) > MAX_SYNC_ENTRIES:
        raise _Invalid(f"must be an array of at most {MAX_SYNC_ENTRIES} entries, got {_describe(value)}")
    previous = ""
    for item in value:
        if (
            type(item) is not list
            or len(item) != 4
            or type(item[0]) is not str
            or type(item[1]) is not int
            or not 0 <= item[1] <= MAX_COUNTER
            or type(item[2]) is not str
            or type(item[3]) is not bool
        ):
            raise _Invalid(f"entries must be [key, counter, node id, deleted], got {_describe(item)}")
        if item[0] <= previous:
            raise _Invalid(f"entries must have non-empty keys in ascending order, got {_describe(item[0])} "
                           f"after {_describe(previous)}")
        previous = item[0]
    return value


def _records(value: Any) -> list:
    if type(value) is not list or len(value) > MAX_REQUEST_RECORDS:
        raise _Invalid(f"must be an array of at most {MAX_REQUEST_RECORDS} records, got {_describe(value)}")
    for item in value:
        if (
            type(item) is not list
            or len(item) != 5
            or type(item[0]) is not str
            or not 1 <= len(item[0]) <= MAX_REQUEST_ID_CHARS
            or type(item[1]) is not str
            or not item[1]
            or type(item[2]) is not int
            or not 0 <= item[2] <= MAX_COUNTER
            or type(item[3]) is not str
            or type(item[4]) is not bool
        ):
            raise _Invalid(f"records must be [request id, non-empty key, counter, node id, tentative], "
                           f"got {_describe(item)}")
    return value


def _keys(value: Any) -> list:
    if type(value) is not list or len(value) > MAX_SYNC_ENTRIES or any(type(item) is not str for item in value):
        raise _Invalid(f"must be an array of at most {MAX_SYNC_ENTRIES} keys, got {_describe(value)}")
    return value


# Members of one cluster a HELLO_REPLY may list: far more than a quorum protocol runs with;
# and the longest address one may be given at (a host name of 253 characters, a port).
MAX_MEMBERS = 255
MAX_MEMBER_ADDRESS_CHARS = 300


def _members(value: Any) -> dict:
    if (type(value) is not dict or len(value) > MAX_MEMBERS
            or not all(is_valid_id(node) and type(address) is str and 0 < len(address) <= MAX_MEMBER_ADDRESS_CHARS
                       for node, address in value.items())):
        raise _Invalid(f"must be a map of at most {MAX_MEMBERS} node ids to their HOST:PORT, got {_describe(value)}")
    return value


def _choice(enum_type: type) -> Callable[[Any], Any]:
    allowed = ", ".join(repr(member.value) for member in enum_type)

    def check(value: Any) -> Any:
        if type(value) is str:
            try:
                return enum_type(value)
            except ValueError:
                pass
        raise _Invalid(f"must be one of {allowed}, got {_describe(value)}")

    return check


def _describe(value: Any) -> str:
    """A bounded repr: the value is hostile input, possibly nested 1,000 deep."""
    return _short_repr.repr(value)



_CHECKS: dict[str, Callable[[Any], Any]] = {
    "proto": _uint,
    "role": _choice(Role),
    "cluster": _text,
    "node": _text,
    "key": _text,  # non-empty and size are checked with the limits, below
    "consistency": _choice(Consistency),
    "value": _anything,
    "version": _version,
    "deleted": _boolean,
    "request_version": _version,
    "created": _boolean,
    "applied": _boolean,
    "health": _mapping,
    "code": _uint,
    "message": _text,
    "maybe_applied": _boolean,
    "expect": _version,
    "limits": _limits,
    "token": _text,
    "nonce": _nonce,
    "instance": _nonce,  # random bytes, as a nonce is, and as long
    "members": _members,
    "proof": _proof,
    "digests": _digests,
    "floor": _counter,
    "buckets": _buckets,
    "bucket": _bucket,
    "after": _text,
    "last": _boolean,
    "entries": _entries,
    "wanted": _keys,
    "request": _request_id,
    "tombstones": _boolean,
    "offered": _keys,
    "records": _records,
    "cursor": _counter,
    "retry": _boolean,
    "request_tentative": _boolean,
    "joining": _boolean,
    "writable": _boolean,
    "observed": _boolean,
    "read": _boolean,
    "repair": _boolean,
    "prior": _version,
    "prior_deleted": _boolean,
}

_CLASSES: dict[int, type] = {
    cls.op: cls
    for cls in (
        Hello, Ping, Get, Put, Delete, Health, Replicate, Lookup, Fetch, Digests, Sync, Requests,
        ErrorReply, HelloReply, Pong, GetReply, PutReply, DeleteReply, HealthReply, ReplicateReply,
        LookupReply, FetchReply, DigestsReply, SyncReply, RequestsReply,
    )
}

class _Schema(NamedTuple):
    cls: type
    name: str  # the op's name, for error messages
    fields: tuple[tuple[str, Callable[[Any], Any], bool], ...]  # (name, check, required)


# Built once from the dataclasses; requests and replies apart, since a side
# accepts only one of the two.
_REQUEST_SCHEMAS: dict[int, _Schema] = {}
_REPLY_SCHEMAS: dict[int, _Schema] = {}
_FIELD_NAMES: dict[int, tuple[str, ...]] = {}
for _op, _cls in _CLASSES.items():
    _names = tuple(f.name for f in fields(_cls) if f.name != "id")
    _FIELD_NAMES[_op] = _names
    _optional = OPTIONAL_FIELDS.get(_op, frozenset())
    _schema = _Schema(_cls, Op(_op).name, tuple((name, _CHECKS[name], name not in _optional) for name in _names))
    (_REPLY_SCHEMAS if _op >= Op.ERROR else _REQUEST_SCHEMAS)[int(_op)] = _schema

_ERROR_OP = int(Op.ERROR)
_KEYED = frozenset(cls for cls in _CLASSES.values() if "key" in _FIELD_NAMES[cls.op])
_VALUED = frozenset(cls for cls in _CLASSES.values() if "value" in _FIELD_NAMES[cls.op])
# Only the value's bytes, other fields ignored: for a message the codec has already accepted.
_value_field = Decoder(defstruct("ValueField", [("value", Raw)])).decode


def _parse_after_repeat(payload: bytes, first_repeated: Any) -> tuple[Any, Any, bool]:
    """For a payload with a repeated map key (``first_repeated``, the first the strict
    unpacker met): parse it whole (a later error in it may be fatal) and return it, the
    repeated key that decides, and whether that key is in the message map itself rather
    than in a value. msgpack's C does the parse, and the message map's own keys are
    read with their values skipped: parsed again with a Python hook on every map, a
    frame of a million empty maps took a node 2 s, four times the first parse (a
    security probe's finding)."""
    body = unpack_keeping_last(payload)
    if type(body) is not dict:
        return body, None, False  # not a message map: refused as such
    here = _repeated_keys([(key, None) for key in top_level_keys(payload)])
    # A repeated id or op decides (it can make the error fatal), whatever else repeats.
    for name in ("id", "op"):
        if name in here:
            return body, name, True
    if here:
        return body, here[0], True
    return body, first_repeated, False


# --- encoding --------------------------------------------------------------------------


def encode_payload(message: Message) -> bytes:
    """The msgpack map for ``message``, without the length prefix."""
    try:
        return encode_compiled(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {type(message).__name__}: {exc}", fatal=False) from exc


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 4-byte big-endian length."""
    return HEADER.pack(len(payload)) + payload


def encode(message: Message) -> bytes:
    """One complete frame carrying ``message``."""
    payload = encode_payload(message)
    return _pack_header(len(payload)) + payload


# --- decoding --------------------------------------------------------------------------

# A peer that speaks HTTP instead of kvwire (someone pointed a client at the
# REST bridge's port, or curl at a node's) sends ASCII where a length belongs.
# Read as a length, each of these is over a billion bytes, so the length check
# refuses it; these say why, from the 4 bytes alone.
_HTTP_REPLY_START = b"HTTP"  # "HTTP/1.1 400 Bad Request"
_HTTP_REQUEST_STARTS = frozenset({b"GET ", b"POST", b"PUT ", b"DELE", b"HEAD", b"OPTI", b"PATC"})
# A TLS record starts with its content type (22 a handshake, 21 an alert) and
# the version's major byte, 3; as a length, over 350 million bytes.
_TLS_RECORD_TYPES = frozenset({0x15, 0x16})
# An SSH server greets every connection first: "SSH-2.0-OpenSSH_9.2p1".
_SSH_GREETING_START = b"SSH-"


def oversized_frame_message(header: bytes, length: int, limit: int, *, replies: bool) -> str:
    """What to say about a frame length over ``limit``, given its 4 ``header`` bytes.

    ``replies`` is the receiver's side, as for :func:`decode_payload`: a client
    whose header reads ``HTTP`` is talking to an HTTP server, and a node whose
    header reads as the start of an HTTP method is being sent an HTTP request.
    """
    too_large = f"frame of {length} bytes exceeds the limit of {limit} bytes"
    if replies and header == _HTTP_REPLY_START:
        return (
            "this looks like an HTTP server, not a kvwire node: its reply starts with 'HTTP' "
            f"({too_large}); the kvwire port is the node's --listen port (7379 by default), "
            "and the REST API is on the bridge's port"
        )
    if not replies and header in _HTTP_REQUEST_STARTS:
        return (
            f"this looks like an HTTP request, not a kvwire frame: it starts with "
            f"{header.decode('ascii')!r} ({too_large}); this port speaks the kvwire protocol, and the REST API is served "
            "by the HTTP bridge (kvwire serve --http-listen, or kvwire bridge)"
        )
    if replies and header == _SSH_GREETING_START:
        return (f"this looks like an SSH server, not a kvwire node: it greets with 'SSH-' ({too_large}); "
                "the kvwire port is the node's --listen port (7379 by default)")
    if header[0] in _TLS_RECORD_TYPES and header[1] == 0x03:
        if replies:
            return (f"this looks like TLS, not a kvwire reply ({too_large}): the node serves TLS; connect with "
                    "--tls (kvwire-cli), tls=True (the Python client) or --tls-ca")
        return (f"this looks like TLS, not a kvwire frame ({too_large}): the other side speaks TLS "
                "and this node does not; give every node --tls-cert and --tls-key, or connect without TLS")
    return too_large



def decode_payload(payload: bytes, limits: Limits, *, replies: bool, raw_values: bool = False) -> Message:
    """Parse one frame's payload into a message.

    ``replies`` says which half of the protocol this side accepts: a node takes
    requests (ops below 0x80), a client takes replies. ``raw_values``: a value
    stays the msgpack bytes it came as, a msgspec.Raw (None for nil), as a node
    keeps it (kvwire.protocol.values); else it is unpacked. Raises ProtocolError;
    its ``fatal`` flag is set when even the request id could not be read.
    """
    message = decode_fast(payload, replies=replies, raw_values=raw_values)
    if message is None:
        message = _decode_checked(payload, replies)
        if raw_values and type(message) in _VALUED and message.value is not None:
            message.value = _value_as_sent(payload, message)
    if type(message) in _KEYED:
        check_key(message.key, limits, message.id)
    return message


def _value_as_sent(payload: bytes, message: Message) -> Raw:
    """The bytes that carried an accepted message's value, for a node that keeps
    them (an unknown field, say, sends a PUT off the fast path)."""
    try:
        return _value_field(payload).value
    except Exception:  # noqa: BLE001 - the codec accepted it; packing the decoded value is the fallback
        pass
    try:
        return Raw(msgpack.packb(message.value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"value cannot be kept: {exc}", request_id=message.id, fatal=False) from None


def _decode_checked(payload: bytes, replies: bool) -> Message:
    """The codec's own path: every check in Python, each failure named exactly."""
    repeated, in_message_map = None, False
    try:
        try:
            body = unpack(payload)
        except DuplicateKey as repeat:
            body, repeated, in_message_map = _parse_after_repeat(payload, repeat.key)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"payload is not one valid msgpack value: {str(exc) or type(exc).__name__}") from None
    if type(body) is not dict:
        raise ProtocolError(f"payload must be a msgpack map, got {type(body).__name__}")
    if may_hold_timestamp(payload) and _holds_timestamp(body):
        raise ProtocolError("payload is not one valid msgpack value: msgpack extension type -1 is not allowed")

    op = body.get("op")
    request_id = body.get("id", MISSING_ID)
    if in_message_map and (repeated == "id" or (repeated == "op" and request_id is None)):
        # Two ids: answering either would be a guess. A nil id is allowed in
        # an ERROR only, which two ops leave undecided.
        raise ProtocolError(f"field {repeated!r} appears twice in the message map")
    if not (type(request_id) is int and 0 <= request_id <= MAX_REQUEST_ID):
        # Only an ERROR about a frame whose id was unreadable carries nil.
        if not (replies and request_id is None and type(op) is int and op == _ERROR_OP):
            shown = "nothing" if request_id is MISSING_ID else _describe(request_id)
            raise ProtocolError(f"field 'id' must be an unsigned 64-bit integer, got {shown}")
    if repeated is not None:
        where = "the message map" if in_message_map else "a map inside the message"
        raise ProtocolError(
            f"key {_describe(repeated)} appears twice in {where}; a map may not repeat a key",
            request_id=request_id,
            fatal=False,
        )

    schema = (_REPLY_SCHEMAS if replies else _REQUEST_SCHEMAS).get(op) if type(op) is int else None
    if schema is None:
        sent_back = _REQUEST_SCHEMAS.get(op) if replies and type(op) is int else None
        raise ProtocolError(
            f"unknown {'reply' if replies else 'request'} op {_describe(op)}"
            + (f" ({sent_back.name}, a request's: the other side sends back what it is sent, as an echo server "
               "does, and is no kvwire node)" if sent_back is not None else ""),
            code=ErrorCode.UNKNOWN_OP,
            request_id=request_id,
            fatal=False,
        )
    args = [request_id]
    for name, check, required in schema.fields:
        if name in body:
            try:
                args.append(check(body[name]))
            except _Invalid as exc:
                raise ProtocolError(
                    f"{schema.name} field '{name}' {exc}", request_id=request_id, fatal=False
                ) from None
        elif required:
            raise ProtocolError(f"{schema.name} is missing field '{name}'", request_id=request_id, fatal=False)
        else:
            args.append(None)
    return schema.cls(*args)


def check_key(key: str, limits: Limits, request_id: int | None = None) -> None:
    """Raise ProtocolError unless ``key`` is a non-empty string within the limit."""
    if not key:
        raise ProtocolError("key must not be empty", request_id=request_id, fatal=False)
    # UTF-8 takes at most 4 bytes a character, so short keys skip the encode.
    if len(key) * 4 > limits.max_key_bytes and len(key.encode("utf-8", "surrogatepass")) > limits.max_key_bytes:
        raise ProtocolError(
            f"key is longer than {limits.max_key_bytes} bytes",
            code=ErrorCode.TOO_LARGE,
            request_id=request_id,
            fatal=False,
        )
