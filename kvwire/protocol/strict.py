"""msgpack read as the protocol allows it: no extension types, only string map
keys, no map that repeats a key (docs/protocol.md section 3).

Both decoders use it: the codec for a whole payload, and the compiled fast
path (kvwire.protocol.compiled) for a value that holds maps or arrays.
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack


class DuplicateKey(Exception):
    """A map repeats a key: the codec then parses again, to find the request id and say where."""


def refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def unique_map(pairs: list[tuple[Any, Any]]) -> dict:
    # msgpack's object_pairs_hook, called for every map it decodes. Its own
    # dicts keep the last of two equal keys, so a value would not come back
    # as it was sent; a dict shorter than its pairs is how a repeat shows.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise DuplicateKey
    return result


# unpackb bounds every length it reads by the size of its input, which the
# frame limit already bounds, so no max_*_len option is tighter than that.
# It leaves the timestamp extension (-1) to the caller: msgpack decodes it
# itself, without calling ext_hook (see codec._holds_timestamp).
unpack = functools.partial(
    msgpack.unpackb, raw=False, strict_map_key=True, ext_hook=refuse_ext, object_pairs_hook=unique_map
)


def may_hold_timestamp(payload: bytes) -> bool:
    """Whether ``payload`` might hold the timestamp extension: its three encodings
    begin d6 ff, d7 ff and c7 0c ff (fixext 4, fixext 8, ext 8 of length 12)."""
    return b"\xd6\xff" in payload or b"\xd7\xff" in payload or b"\xc7\x0c\xff" in payload
