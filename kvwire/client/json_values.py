"""Stored values and versions as JSON, shared by ``kvwire-cli`` and the HTTP bridge.

msgpack has bytes and JSON has not, so bytes travel as ``{"$bytes": "<base64>"}``
in both directions, and bytes map keys (output only) as ``"$bytes:<base64>"``.
A version is ``{"counter": C, "node": N}``. The module is part of the client
library (public, but not re-exported by ``kvwire.client``) so that the bridge
and the CLI share it without the bridge importing the CLI.

Both read JSON the same strict way (:func:`parse_json`) and write it the same
way (:func:`json_text`), so a value one accepts the other can show:
- an integer in msgpack's range (-2**63 to 2**64-1) is read exactly; a larger
  one, like any number with a fraction or an exponent, as a 64-bit float, as
  JavaScript and most JSON libraries would read it. A number beyond the float
  range is refused, and so are ``NaN`` and ``Infinity``, which are not JSON.
- an object naming a member twice is refused (a msgpack map may not repeat a key).
- a value nested as deep as a node accepts can be written out: past what the
  recursive encoder can take, an iterative one takes over.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

from kvwire.protocol import Version
from kvwire.protocol.limits import MSGPACK_MAX_INT, MSGPACK_MIN_INT

BYTES_TAG = "$bytes"
_TAG_NAME = json.dumps(BYTES_TAG)  # as it appears in JSON text
# How a map whose first key is "$bytes" opens, bytes values included, by compact or not.
_TAGGED = {True: "{" + _TAG_NAME + ":", False: "{" + _TAG_NAME + ": "}
# Values larger than this (as msgpack, or their JSON) are converted between the
# two off the event loop (the HTTP bridge, a node's own bridge). Python's JSON of
# a value of a million small items (about 1 MiB as msgpack) takes about a second
# of CPU (parsing 0.8 s, checking 0.4 s, reading the msgpack 0.2 s; 2026-12-05):
# on a node's own bridge that would hold the node's event loop, and its peers
# would mark it DOWN after 0.5 s without a heartbeat. A thread lets the loop run
# between its bytecodes (msgpack and the C JSON encoder hold it for tens of ms
# at most on a 2 MB value); below this size the hop to it (tens of µs) would cost
# more than the work.
OFF_LOOP_BYTES = 64 * 1024

# Standard base64 with exact padding. Python 3.11's b64decode(validate=True)
# also takes padding after a complete quantum ("AAAA="): almost right, refused.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_BASE64 = re.compile(BASE64_PATTERN)


class UnrepresentableJsonError(ValueError):
    """A stored value JSON cannot carry: a float NaN or infinity, a map with
    both a bytes key and the str key that bytes key would be shown as, or a map
    whose only key is ``"$bytes"``, holding base64 (it would be shown, and read
    back, as bytes)."""


def decode_bytes(obj: dict[str, Any]) -> Any:
    """``json.loads`` object hook: ``{"$bytes": "<base64>"}`` becomes bytes; ValueError if malformed."""
    if len(obj) == 1 and BYTES_TAG in obj:
        encoded = obj[BYTES_TAG]
        if not isinstance(encoded, str) or not _BASE64.fullmatch(encoded):
            raise ValueError(f'{{"{BYTES_TAG}": ...}} must hold a base64 string, got {_as_json_sees_it(encoded)}')
        return base64.b64decode(encoded, validate=True)
    return obj


def _as_json_sees_it(item: Any) -> str:
    """What the JSON read held, for a message: ``item`` is already decoded (an inner
    ``{"$bytes": ...}`` is bytes by now, and its repr, b'...', was never sent)."""
    if isinstance(item, bytes):
        return f'another {{"{BYTES_TAG}": ...}} map (such a map cannot hold bytes, so it has no JSON form)'
    if isinstance(item, str):
        return f"{item[:40]!r}, not base64"
    if isinstance(item, dict):
        return "an object"
    if isinstance(item, list):
        return "an array"
    return "null" if item is None else json.dumps(item)


def object_from_pairs(pairs: list[tuple[str, Any]]) -> Any:
    """``json.loads`` object_pairs_hook: :func:`decode_bytes`, refusing a member named twice."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(name for name, _ in pairs if name in seen or seen.add(name))
        raise ValueError(f"a JSON object names {twice!r} twice; a stored map may not repeat a key")
    return decode_bytes(obj)


def parse_json(text: str) -> Any:
    """A JSON text read strictly (the module's docstring); ValueError says what is wrong.

    ``json.JSONDecodeError`` (a ValueError) for text that is not JSON; a plain
    ValueError for a number out of range, ``NaN``, a member named twice, a bad
    ``$bytes`` object, or nesting too deep to read."""
    if text.startswith("\ufeff"):  # as json.loads says it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def jsonable(value: Any) -> Any:
    """``value`` with bytes (values and map keys) in their JSON form.

    Recursive: for a value nested deeper than a few hundred levels, use
    :func:`json_text`, which falls back to an iterative walk."""
    if isinstance(value, (bytes, bytearray)):
        return _bytes_json(value)
    if isinstance(value, dict):
        if _passes_for_bytes(value):
            raise _bytes_tag_map()
        shown = {_json_key(key): jsonable(item) for key, item in value.items()}
        if len(shown) != len(value):
            raise _colliding_keys()
        return shown
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def json_text(document: Any, *, compact: bool = True, allow_nan: bool = False) -> str:
    """``document`` (holding stored values) as JSON text, UTF-8 characters as
    they are: compact for the bridge, with ``", "`` and ``": "`` for people.

    Raises UnrepresentableJsonError for map keys that would collide
    (:func:`jsonable`), and for a float NaN or infinity unless ``allow_nan``
    (then written ``NaN``, ``Infinity``: not JSON, but what Python and
    JavaScript print, for people to read)."""
    encoder = _ENCODERS[compact, allow_nan]
    try:
        # The C encoder alone, bytes values given to it as {"$bytes": ...} (its default):
        # about ten times faster than the walk below on a large value. A bytes map key
        # is a TypeError to it; the walk shows those and checks they collide with no str key.
        _bytes_written.count = 0
        text = encoder.encode(document)
    except TypeError:
        pass
    except RecursionError:
        return _iterative_json(document, encoder)
    except ValueError as exc:  # the encoder's "Out of range float values are not JSON compliant"
        if "Circular reference" in str(exc):  # a Python caller's own object, never a stored value
            raise
        raise UnrepresentableJsonError("the value holds a float NaN or infinity, which JSON cannot carry") from None
    else:
        # Each bytes value opens as {"$bytes": ; more such openings are stored maps whose
        # first key is "$bytes", which the walk looks at (most documents never get there).
        if text.count(_TAGGED[compact]) > _bytes_written.count:
            _refuse_bytes_tag_maps(document)
        return text
    try:
        return encoder.encode(jsonable(document))
    except RecursionError:
        # Python's recursion limit (1,000 frames) is below what a node takes
        # (1,023 levels); the walk below has no limit of its own.
        return _iterative_json(document, encoder)
    except UnrepresentableJsonError:
        raise
    except ValueError:  # the encoder's "Out of range float values are not JSON compliant"
        raise UnrepresentableJsonError("the value holds a float NaN or infinity, which JSON cannot carry") from None


def shown_with_nan(document: Any) -> bool:
    """Whether :func:`json_text` writes ``document`` with ``allow_nan``, as kvwire-cli's
    text output does: a value refused only for a float NaN or infinity."""
    try:
        json_text(document, allow_nan=True)
    except UnrepresentableJsonError:
        return False
    return True


def version_json(version: Version) -> dict[str, Any]:
    return {"counter": version.counter, "node": version.node}


# --- helpers --------------------------------------------------------------------------------


def _bytes_json(value: bytes | bytearray) -> dict[str, str]:
    return {BYTES_TAG: base64.b64encode(value).decode("ascii")}


def _json_key(key: Any) -> Any:
    if isinstance(key, (bytes, bytearray)):
        return f"{BYTES_TAG}:{base64.b64encode(key).decode('ascii')}"
    return key


def _passes_for_bytes(mapping: dict) -> bool:
    """Whether JSON would show ``mapping`` exactly as it shows bytes: its only key
    ``"$bytes"``, holding base64 (anything else there reads back as an error, not bytes)."""
    if len(mapping) != 1 or BYTES_TAG not in mapping:
        return False
    encoded = mapping[BYTES_TAG]
    return isinstance(encoded, str) and _BASE64.fullmatch(encoded) is not None


def _bytes_tag_map() -> UnrepresentableJsonError:
    return UnrepresentableJsonError(
        f"the value holds a map whose only key is \"{BYTES_TAG}\", holding base64, which JSON would show as it "
        "shows bytes, and which would be read back as bytes"
    )


def _refuse_bytes_tag_maps(document: Any) -> None:
    """UnrepresentableJsonError if ``document`` holds a map that would pass for bytes."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if _passes_for_bytes(item):
                raise _bytes_tag_map()
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _colliding_keys() -> UnrepresentableJsonError:
    return UnrepresentableJsonError(
        f"the value holds a map with a bytes key and the str key \"{BYTES_TAG}:...\" that bytes key "
        "would be shown as, so JSON would lose one of them"
    )


class _Text(str):
    """Output already encoded, on :func:`_iterative_json`'s stack beside values still to encode."""


def _iterative_json(document: Any, encoder: json.JSONEncoder) -> str:
    """What ``encoder.encode(jsonable(document))`` gives, without recursion."""
    string = encode_basestring_ascii if encoder.ensure_ascii else encode_basestring
    item_separator, key_separator = encoder.item_separator, encoder.key_separator
    out: list[str] = []
    stack: list[Any] = [document]
    while stack:
        item = stack.pop()
        if type(item) is _Text:
            out.append(item)
        elif isinstance(item, str):
            out.append(string(item))
        elif item is None:
            out.append("null")
        elif item is True:
            out.append("true")
        elif item is False:
            out.append("false")
        elif isinstance(item, int):
            out.append(int.__repr__(item))
        elif isinstance(item, float):
            if math.isfinite(item):
                out.append(float.__repr__(item))
            elif not encoder.allow_nan:
                raise UnrepresentableJsonError("the value holds a float NaN or infinity, which JSON cannot carry")
            else:
                out.append("NaN" if item != item else "Infinity" if item > 0 else "-Infinity")
        elif isinstance(item, (bytes, bytearray)):
            # Written here, not pushed as the map it is shown as: the maps below refuse that one.
            out.append("{" + _TAG_NAME + key_separator + string(base64.b64encode(item).decode("ascii")) + "}")
        elif isinstance(item, (list, tuple)):
            stack.append(_Text("]"))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(_Text(item_separator))
            out.append("[")
        elif isinstance(item, dict):
            if _passes_for_bytes(item):
                raise _bytes_tag_map()
            names = [_json_key(key) for key in item]
            if len(set(names)) != len(names):
                raise _colliding_keys()
            members = list(zip(names, item.values()))
            stack.append(_Text("}"))
            for index in range(len(members) - 1, -1, -1):
                name, value = members[index]
                if not isinstance(name, str):
                    raise TypeError(f"a map key of type {type(name).__name__} cannot be a JSON object's name")
                stack.append(value)
                stack.append(_Text(string(name) + key_separator))
                if index:
                    stack.append(_Text(item_separator))
            out.append("{")
        else:
            raise TypeError(f"Object of type {type(item).__name__} is not JSON serializable")
    return "".join(out)


def _parse_int(text: str) -> int | float:
    # 2**64 has 20 digits; longer texts are out of range, and int() of
    # thousands of digits costs quadratic time (and raises past 4300).
    if len(text) <= 21:
        number = int(text)
        if MSGPACK_MIN_INT <= number <= MSGPACK_MAX_INT:
            return number
    return _parse_float(text)


def _parse_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]}{'...' if len(text) > 40 else ''} is beyond the range of a 64-bit float")
    return number


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; numbers must be finite")


# Made once: json.loads and json.dumps with options build a new one per call
# (about 2% of the bridge's CPU per PUT, py-spy). None keeps state between calls.
_DECODER = json.JSONDecoder(
    object_pairs_hook=object_from_pairs, parse_int=_parse_int, parse_float=_parse_float,
    parse_constant=_refuse_constant,
)
# How many bytes values the encoder's ``default`` wrote in this thread's json_text (the
# bridge writes large values' JSON in threads, several at once).
class _Count(threading.local):
    count = 0


_bytes_written = _Count()


def _bytes_default(value: Any) -> Any:
    """The encoders' ``default``: bytes values as ``{"$bytes": ...}``; anything else is not JSON."""
    if isinstance(value, (bytes, bytearray)):
        _bytes_written.count += 1
        return _bytes_json(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODERS = {
    (compact, allow_nan): json.JSONEncoder(ensure_ascii=False, allow_nan=allow_nan, default=_bytes_default,
                                           separators=(",", ":") if compact else (", ", ": "))
    for compact in (True, False) for allow_nan in (True, False)
}
