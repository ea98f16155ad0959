"""A value as the bytes its writer packed (docs/protocol.md section 4.3).

A node never rebuilds a value. It keeps the msgpack bytes a PUT carried as a
``msgspec.Raw``, checks them (reading them once), stores them, and sends those
same bytes on in REPLICATE, FETCH_REPLY and GET_REPLY; only a client keeps the
Python objects. nil is the one exception: it is None on both sides, so a node tells
"no value" (a tombstone, a key never written) apart without unpacking anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgpack
from msgspec import Raw
from msgspec.msgpack import Decoder

from .strict import holds_timestamp, may_hold_timestamp, refuse_ext, unpack

NIL = b"\xc0"

# Decodes any msgpack value: it checks UTF-8 and refuses extension types but
# the timestamp (-1, which it decodes to a datetime itself). It would keep the
# last of two equal map keys and take any map key, so a value that is a map or
# an array is read by the strict unpacker instead.
_any_value = Decoder(ext_hook=refuse_ext)
# First bytes of a map or an array: fixmap, fixarray, array 16/32, map 16/32.
_CONTAINERS = frozenset([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])


def _read(raw: Raw) -> Any:
    if memoryview(raw)[0] in _CONTAINERS:
        packed = bytes(raw)
        # Repeated map keys, keys that are not strings. Inside an array, as in
        # the message: msgpack's nesting limit counts the message map too.
        value = unpack(b"\x91" + packed)[0]
        # Only what holds a timestamp's header is searched; the header alone is no
        # timestamp: [55039] packs as 91 cd d6 ff, and was refused here.
        if may_hold_timestamp(packed) and holds_timestamp(value):
            raise ValueError("msgpack extension type -1 is not allowed")
        return value
    value = _any_value.decode(raw)
    if type(value) is datetime:
        raise ValueError("msgpack extension type -1 is not allowed")
    return value


def pack_value(value: Any) -> bytes:
    """The msgpack bytes of ``value``: a Raw's own, or msgpack's packing of a
    Python object (which refuses what msgpack cannot carry, such as a set)."""
    if type(value) is Raw:
        return bytes(value)
    return msgpack.packb(value)


def stored_value(packed: bytes) -> Raw | None:
    """A stored value as a node holds it: its bytes, or None for nil."""
    return None if packed == NIL else Raw(packed)


def structure_error(packed: bytes) -> str | None:
    """Why ``packed`` is not one whole msgpack value, or None. The structure only (its
    type bytes and lengths), not what :func:`checked_raw` refuses of a whole value: a
    stored value read back from disk, each checked whole when it was written.

    msgpack's C unpacker skips the value, making no Python objects (about 1 ms a
    MiB), with a stack of its own as deep as the protocol's 1,023 levels: msgspec's
    decoder recursed, and raised RecursionError at about 1,000."""
    if not isinstance(packed, bytes):
        return f"a {type(packed).__name__}, not bytes"
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max(len(packed), 1))
    try:
        unpacker.feed(packed)
        unpacker.skip()
    except (ValueError, msgpack.UnpackException) as exc:  # FormatError, StackError, OutOfData
        return f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
    if unpacker.tell() != len(packed):
        return f"{len(packed) - unpacker.tell()} bytes after the value"
    return None


def checked_raw(raw: Raw) -> Raw | None:
    """``raw`` once it is known to be one value the protocol allows (None for
    nil); raises ValueError, TypeError or msgspec's errors otherwise. The bytes
    are kept as sent."""
    return None if _read(raw) is None else raw


def python_value(raw: Raw) -> Any:
    """The Python object ``raw`` packs; raises as :func:`checked_raw` does."""
    return _read(raw)
