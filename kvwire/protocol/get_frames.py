"""A GET and its reply by their bytes: a node's hot path, beside the codec.

Most of what a node reads is GETs, each alone in its read (a client waits for
one reply before it asks again), and most are answered from memory. Through
the codec each costs some forty Python calls: the buffer, the decoder's
Struct, the message, the checks, the reply's message and Struct.
:func:`parse_get_frame` recognises the frame kvwire's encoder writes for a GET
(``op``, ``id``, ``key``, then ``consistency`` if given, in that order) with a
few slices, and :func:`get_reply_frame` writes the bytes the encoder would
write for its reply.

It only ever accepts: anything else (another field order, a key the codec
would refuse, more or less than one whole frame) returns None and goes through
the codec, which says exactly what is wrong. So what it accepts must be
exactly what the codec accepts, decoded to the same request, and the reply
must be the encoder's byte for byte; tests/test_get_frames.py holds both to
the codec on generated frames.
"""

from __future__ import annotations

from msgspec import Raw
from msgspec.msgpack import Encoder

from .codec import HEADER
from .messages import Consistency, Op, Version

_pack = Encoder().encode
_unpack_length = HEADER.unpack_from

# Offsets in the frame: the 4-byte length, the map's header, "op" and its
# value, then "id".
_MAP_AT = 4
_BEGIN = _pack("op") + _pack(int(Op.GET)) + _pack("id")
_ID_AT = _MAP_AT + 1 + len(_BEGIN)
_KEY = _pack("key")
_WITHOUT_CONSISTENCY = 0x83  # fixmap of op, id, key
_WITH_CONSISTENCY = 0x84
_CONSISTENCIES = {_pack("consistency") + _pack(level.value): level for level in Consistency}
# How every GET frame of ``consistency=one`` ends: a node of a cluster, which
# answers no other GET from memory, can pass over the rest without parsing them.
CONSISTENCY_ONE_END = _pack("consistency") + _pack(Consistency.ONE.value)
# msgpack's unsigned integers: the format byte and how many bytes follow.
_UINT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_STR8 = 0xD9
_STR16 = 0xDA

_REPLY_BEGIN = bytes([0x84]) + _pack("op") + _pack(int(Op.GET_REPLY)) + _pack("id")
_VALUE = _pack("value")
_VERSION = _pack("version")


def parse_get_frame(frame: bytes, max_key_bytes: int) -> tuple[int, str, Consistency | None] | None:
    """``(id, key, consistency)`` when ``frame`` is exactly one whole GET frame
    as kvwire's encoder writes it, with a key within ``max_key_bytes``; else None."""
    if len(frame) < _ID_AT + 1 or frame[_MAP_AT + 1 : _ID_AT] != _BEGIN:
        return None
    size = frame[_MAP_AT]
    if size != _WITHOUT_CONSISTENCY and size != _WITH_CONSISTENCY:
        return None
    (length,) = _unpack_length(frame)
    if length != len(frame) - _MAP_AT:
        return None
    at = _ID_AT
    first = frame[at]
    if first < 0x80:
        request_id = first
        at += 1
    else:
        width = _UINT_SIZES.get(first)
        if width is None:
            return None
        request_id = int.from_bytes(frame[at + 1 : at + 1 + width], "big")
        at += 1 + width
    if frame[at : at + 4] != _KEY:
        return None
    at += 4
    if at >= len(frame):
        return None
    first = frame[at]
    if 0xA1 <= first <= 0xBF:  # fixstr, not empty: the codec refuses an empty key
        key_bytes = first & 0x1F
        at += 1
    elif first == _STR8 and at + 1 < len(frame):
        key_bytes = frame[at + 1]
        at += 2
    elif first == _STR16 and at + 2 < len(frame):
        key_bytes = int.from_bytes(frame[at + 1 : at + 3], "big")
        at += 3
    else:
        return None
    end = at + key_bytes
    if end > len(frame) or not 0 < key_bytes <= max_key_bytes:
        return None
    try:
        key = frame[at:end].decode()
    except UnicodeDecodeError:
        return None
    if size == _WITHOUT_CONSISTENCY:
        return (request_id, key, None) if end == len(frame) else None
    consistency = _CONSISTENCIES.get(frame[end:])
    if consistency is None:
        return None
    return request_id, key, consistency


def get_reply_frame(request_id: int, value: Raw, version: Version) -> bytes:
    """The frame of ``GetReply(request_id, value, version)``, as the encoder writes it."""
    payload = b"".join((_REPLY_BEGIN, _pack(request_id), _VALUE, value, _VERSION, _pack(version)))
    return HEADER.pack(len(payload)) + payload
