"""Checks on what callers pass in, so mistakes fail early and say what was wrong.

A node would refuse a bad key too, but only after a round trip, and a value
with, say, integer map keys would make the node drop the whole connection
(its decoder only accepts str and bytes map keys), failing every other request
pipelined on it. Checking here keeps one caller's mistake its own.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

from msgspec import Raw

from kvwire.protocol import Consistency, Limits
from kvwire.protocol.limits import MSGPACK_MAX_INT, MSGPACK_MIN_INT
from kvwire.protocol.values import checked_raw, pack_value

# msgpack itself refuses to pack deeper nesting than this (its default nest_limit).
_MAX_DEPTH = 511

_SUPPORTED = "None, bool, int, float, str, bytes, list/tuple or dict"


def check_key(key: Any, limits: Limits) -> str:
    """Return ``key`` if it is a non-empty str within the limit, or raise TypeError/ValueError."""
    if type(key) is not str:
        if isinstance(key, str):
            # e.g. a str enum: send the plain string. str.__str__, not str(): a subclass's
            # own __str__ ("Field.NAME" for a (str, Enum)) is not the key's text.
            key = str.__str__(key)
        else:
            raise TypeError(f"key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"key {key!r} is not valid UTF-8: {exc.reason}") from None
    if size > limits.max_key_bytes:
        raise ValueError(f"key is {size} bytes in UTF-8; the limit is {limits.max_key_bytes}")
    return key


# 96 random bits: unique among every PUT any client sends within the minute
# a node remembers request ids for.
_REQUEST_ID_BYTES = 12
_MAX_REQUEST_ID_CHARS = 128


def new_request_id() -> str:
    """A fresh id for one PUT (docs/protocol.md 6.4), 16 URL-safe characters."""
    return secrets.token_urlsafe(_REQUEST_ID_BYTES)


def put_request_id(caller_id: str, packed: Any) -> str:
    """The request id a PUT goes to the nodes with when its caller named it ``caller_id``:
    a digest of that id and ``packed``, the value's msgpack bytes.

    The nodes remember an id's version, not its value, so a caller reusing an id for
    another value (``request_id=f"order-{n}"`` for each update of one key) had that
    PUT answered as a retry of the first, with its version, and the value never
    stored. With the value in the id it is another write, and its answer true; a
    retry sends the same value, so the same id, and is applied once. The client
    library (both kinds) and the HTTP bridge's PUTs with an Idempotency-Key make
    their ids here, so a call the node's own bridge hands on to a peer keeps its id."""
    caller = check_request_id(caller_id).encode()
    digest = hashlib.sha256(len(caller).to_bytes(2, "big") + caller)
    digest.update(packed)
    # "rest-": the HTTP bridge's ids were made so before the client library made them, and
    # a retry crossing from a bridge of then to one of now must find its first attempt.
    return "rest-" + base64.urlsafe_b64encode(digest.digest()[:24]).decode("ascii")


def prepared_put(value: Any, caller_id: str | None) -> tuple[Raw, str, bool | None]:
    """A PUT's value, checked and packed once (the bytes the nodes keep), its request id
    and its ``retry`` flag: a caller's own id may have been sent before (the caller's
    retry), and the node then looks for that earlier attempt first (docs/protocol.md 6.4)."""
    check_value(value)
    raw = value if type(value) is Raw else Raw(pack_value(value))
    if caller_id is None:
        return raw, new_request_id(), None
    return raw, put_request_id(caller_id, raw), True


def check_request_id(request_id: Any) -> str:
    """Return ``request_id`` if it is a str of 1 to 128 characters, or raise TypeError/ValueError."""
    if type(request_id) is not str:
        raise TypeError(f"request_id must be a str, got {type(request_id).__name__}")
    if not 1 <= len(request_id) <= _MAX_REQUEST_ID_CHARS:
        raise ValueError(f"request_id must be 1 to {_MAX_REQUEST_ID_CHARS} characters, got {len(request_id)}")
    if not is_utf8(request_id):
        raise ValueError("request_id must be text UTF-8 can carry (it holds a lone surrogate)")
    return request_id


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be sent as UTF-8 (a str with a lone surrogate cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_UNSAID = {"StackError": "nested too deeply", "DuplicateKey": "a map repeats a key"}


def check_value(value: Any) -> None:
    """Raise TypeError (or ValueError) unless msgpack can carry ``value`` and a node will accept it.

    A ``msgspec.Raw`` is a value already packed (the HTTP bridge packs its values): it goes
    into the frame as it is, so it is read here as the node will read it. Bytes that are not
    exactly one value would break the frame (a second value read as its next field, the
    request id lost), and a value the node refuses (a map key that is not a string) would
    close the connection under every other call on it; both are ValueError here."""
    if type(value) is Raw:
        try:
            if not len(value):
                raise ValueError("they are no value at all")  # msgspec's own words: "index out of bounds"
            checked_raw(value)
        except Exception as exc:  # noqa: BLE001 - msgpack's, msgspec's or the protocol's own refusal
            # msgpack's StackError (nested past its 1,023 levels) and the strict unpacker's
            # DuplicateKey have no message of their own.
            reason = str(exc) or _UNSAID.get(type(exc).__name__, type(exc).__name__)
            raise ValueError(f"a msgspec.Raw value must hold exactly one msgpack value a node accepts; "
                             f"these {len(value)} bytes do not ({reason})") from None
        return
    _check(value, "value", 0)


# A path into the value, for messages only: "value", (the container's path, an
# index or a key), or (_KEY_OF, the map's path). Made a string only when a message
# needs it: an f-string per element made checking a list of a million ints take
# 0.3-0.6 s, 100 times msgspec's packing of it, on the thread every call of a
# blocking Client shares.
Path = Any
_KEY_OF = "a key of"


def _check(value: Any, where: Path, depth: int) -> None:
    # Exact type checks first: they are the common case and cost almost nothing.
    kind = type(value)
    if value is None or kind is bool or kind is float or kind is bytes:
        return
    if kind is str:
        _check_str(value, where)
        return
    if kind is int:
        if not MSGPACK_MIN_INT <= value <= MSGPACK_MAX_INT:
            shown = value if value.bit_length() <= 256 else f"an integer of {value.bit_length()} bits"
            raise ValueError(f"{_shown(where)} = {shown} does not fit msgpack's 64-bit integers")
        return
    if depth >= _MAX_DEPTH:
        raise ValueError(f"{_shown(where)} is nested deeper than {_MAX_DEPTH} levels")
    # Items are looked at here, not each in a call of its own: most need no more than a
    # glance, and the recursion stays one frame a level (511 levels, under Python's 1,000).
    if isinstance(value, (list, tuple)):
        items: Any = enumerate(value)
    elif isinstance(value, dict):
        for item_key in value:
            if isinstance(item_key, str):  # a str enum too: it packs as its string, as a value does
                if not (type(item_key) is str and item_key.isascii()):
                    _check_str(item_key, (_KEY_OF, where))
            elif not isinstance(item_key, bytes):
                raise TypeError(
                    f"{_shown(where)} has a key {item_key!r} of type {type(item_key).__name__}; "
                    "map keys must be str or bytes"
                )
        items = value.items()
    else:
        items = None
    if items is not None:
        for step, item in items:
            kind = type(item)
            if (item is None or kind is bool or kind is float or kind is bytes
                    or (kind is int and MSGPACK_MIN_INT <= item <= MSGPACK_MAX_INT)
                    or (kind is str and item.isascii())):
                continue
            _check(item, (where, step), depth + 1)
        return
    if isinstance(value, memoryview) and not value.c_contiguous:
        raise TypeError(f"{_shown(where)} is a memoryview that is not C-contiguous; pass bytes(view) instead")
    if isinstance(value, (bool, int, float, str, bytes, bytearray, memoryview)):
        # Subclasses (IntEnum, str enums) and buffer types pack as their base type.
        if isinstance(value, str):
            _check_str(value, where)
        return
    raise TypeError(f"{_shown(where)} has type {kind.__name__}, which kvwire cannot store; use {_SUPPORTED}")


def _path(where: Path) -> str:
    """A path as the messages show it: ``value[0]['name']``, or ``a key of value[3]``."""
    if type(where) is tuple and where[0] is _KEY_OF:
        return f"{_KEY_OF} {_path(where[1])}"
    steps = []
    while type(where) is tuple:
        where, step = where
        steps.append(f"[{step!r}]")
    return where + "".join(reversed(steps))


def _shown(where: Path) -> str:
    """``where`` (a path into the value) short enough for a one-line message: 511 levels of ``[0]`` are not."""
    where = _path(where)
    if len(where) <= 100:
        return where
    return f"{where[:60]}...{where[-30:]}"


def _check_str(text: str, where: Path) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{_shown(where)} is not valid UTF-8: {exc.reason}") from None


def check_consistency(consistency: Any) -> Consistency | None:
    """A GET's consistency level from a Consistency or its name; None (the node's default) stays None."""
    if consistency is None:
        return None
    allowed = " or ".join(repr(level.value) for level in Consistency)
    if not isinstance(consistency, str):  # a Consistency is a str too
        raise TypeError(f"consistency must be {allowed} (a str) or a Consistency, got {type(consistency).__name__} "
                        f"{consistency!r}")
    try:
        return Consistency(consistency)
    except ValueError:
        raise ValueError(f"consistency must be {allowed}, got {consistency!r}") from None
