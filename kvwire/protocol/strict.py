"""msgpack read as the protocol allows it: no extension types, only string map
keys, no map that repeats a key (docs/protocol.md section 3).

Both decoders use it: the codec for a whole payload, and the compiled fast
path (kvwire.protocol.compiled) for a value that holds maps or arrays.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgpack


class DuplicateKey(Exception):
    """A map repeats a key: the codec then parses again, to find the request id and say where.
    ``key``: the first key repeated in the first map msgpack finished that repeats one (a
    map inside another is finished first). No message of its own (``str()`` is empty)."""

    def __init__(self, key: Any = None) -> None:
        super().__init__()
        self.key = key


def refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def unique_map(pairs: list[tuple[Any, Any]]) -> dict:
    # msgpack's object_pairs_hook, called for every map it decodes. Its own
    # dicts keep the last of two equal keys, so a value would not come back
    # as it was sent; a dict shorter than its pairs is how a repeat shows.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return result


# unpackb bounds every length it reads by the size of its input, which the
# frame limit already bounds, so no max_*_len option is tighter than that.
# It leaves the timestamp extension (-1) to the caller: msgpack decodes it
# itself, without calling ext_hook (see holds_timestamp, below).
unpack = functools.partial(
    msgpack.unpackb, raw=False, strict_map_key=True, ext_hook=refuse_ext, object_pairs_hook=unique_map
)
# The same checks but for repeated keys (a dict keeps the last of two), all in msgpack's
# C: for a payload already known to repeat one, where only the rest is still to check.
unpack_keeping_last = functools.partial(msgpack.unpackb, raw=False, strict_map_key=True, ext_hook=refuse_ext)


def top_level_keys(payload: bytes) -> list[Any]:
    """The keys of the map ``payload`` is, in order, repeats included, its values skipped
    unread; for a payload that unpack_keeping_last has read as a map."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, ext_hook=refuse_ext)
    unpacker.feed(payload)
    keys = []
    for _ in range(unpacker.read_map_header()):
        keys.append(unpacker.unpack())
        unpacker.skip()
    return keys


# The timestamp extension's headers: msgpack reads type -1 of 4, 8 or 12 bytes as
# a Timestamp in any ext form, the shortest (fixext 4, fixext 8, ext 8 of 12)
# and the longer ones alike (ext 8, 16 or 32 of any of the three lengths).
_TIMESTAMP_HEADER = re.compile(
    rb"\xd6\xff|\xd7\xff|\xc7[\x04\x08\x0c]\xff|\xc8\x00[\x04\x08\x0c]\xff|\xc9\x00\x00\x00[\x04\x08\x0c]\xff"
)


# msgpack decodes the timestamp extension (type -1) itself, without calling
# ext_hook, in any of its ext forms; only a payload holding one of their
# headers (may_hold_timestamp) is searched for it.
def holds_timestamp(value: Any) -> bool:
    """Whether the decoded ``value`` holds a msgpack Timestamp, at any depth."""
    # Iterative: a payload may nest 1024 deep, and recursing raised RecursionError
    # from about 330 levels (found by the fuzz targets, tests/fuzz).
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is msgpack.Timestamp:
            return True
        if type(item) is list:
            pending.extend(item)
        elif type(item) is dict:
            pending.extend(item.values())
    return False


def may_hold_timestamp(payload: bytes) -> bool:
    """Whether ``payload`` might hold the timestamp extension (one of its headers
    appears somewhere in it; the caller then searches what was decoded)."""
    return b"\xff" in payload and _TIMESTAMP_HEADER.search(payload) is not None
