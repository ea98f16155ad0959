"""Request bodies to stored values and stored values back to JSON, strictly.

JSON and msgpack overlap but are not the same:
- bytes travel as ``{"$bytes": "<base64>"}``, as in ``kvwire-cli`` (the same
  helper); a bytes map key is shown as ``"$bytes:<base64>"``.
- an integer in msgpack's range (-2**63 to 2**64-1) is stored exactly; a
  larger one, like any number with a fraction or an exponent, is stored as a
  64-bit float, as JavaScript and most JSON libraries would read it. A number
  beyond the float range is refused.
- ``NaN`` and ``Infinity`` are not JSON and are refused; a float of that kind
  stored by another client cannot be shown as JSON (:class:`UnrepresentableValueError`).

What a body can get wrong is an error of kvwire's one tree: ``BadRequestError``
(400) or ``TooLargeError`` (413), as a node would answer the same mistakes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack

from kvwire.client import (
    MSGPACK_MAX_INT,
    MSGPACK_MIN_INT,
    BadRequestError,
    KvwireError,
    TooLargeError,
    check_value,
)
from kvwire.client.json_values import decode_bytes, jsonable
from kvwire.protocol import Limits


class UnrepresentableValueError(KvwireError, ValueError):
    """A stored value that JSON cannot carry (a float NaN or infinity): HTTP 406.

    Neither the request nor the cluster is at fault, and asking again will not
    help: not ``transient``. It never travels on the wire, so it has no code of its own.
    """


def parse_put_body(body: bytes, limits: Limits) -> Any:
    """The value of a PUT body ``{"value": <JSON>}``; raises BadRequestError or TooLargeError."""
    if not body:
        raise BadRequestError('the request body must be a JSON object {"value": ...}; it is empty')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"the request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        if text.startswith("\ufeff"):  # as json.loads says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        document = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("the request body is nested too deeply") from None
    except ValueError as exc:  # a bad {"$bytes": ...} or number, from the hooks
        raise BadRequestError(str(exc)) from None
    if not isinstance(document, dict):
        raise BadRequestError(f'the request body must be a JSON object {{"value": ...}}, not {_json_kind(document)}')
    if "value" not in document:
        raise BadRequestError('the request body has no "value" field')
    value = document["value"]
    try:
        check_value(value)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(str(exc)) from None
    size = len(msgpack.packb(value))
    if size > limits.max_value_bytes:
        raise TooLargeError(f"value is {size} bytes encoded as msgpack; the limit is {limits.max_value_bytes} bytes")
    return value


def to_json_text(document: Any) -> str:
    """Compact JSON of a document holding stored values; UnrepresentableValueError for NaN or infinity."""
    try:
        return _ENCODER.encode(jsonable(document))
    except ValueError:
        raise UnrepresentableValueError(
            "the stored value holds a float NaN or infinity, which JSON cannot carry; read it with kvwire-cli or the Python client"
        ) from None


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
# (about 2% of the bridge's CPU per PUT, py-spy). Both keep no state between calls.
_DECODER = json.JSONDecoder(
    object_hook=decode_bytes, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant
)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json_kind(value: Any) -> str:
    if isinstance(value, bytes):
        return 'a {"$bytes": ...} object'
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
