"""Request bodies to stored values and stored values back to JSON, strictly.

JSON and msgpack overlap but are not the same; ``kvwire.client.json_values``
(shared with ``kvwire-cli``) says how kvwire reads and writes one as the other:
bytes as ``{"$bytes": "<base64>"}``, integers beyond msgpack's range and numbers
with a fraction as 64-bit floats, ``NaN`` and ``Infinity`` refused. A float of
that kind stored by another client cannot be shown as JSON
(:class:`UnrepresentableValueError`).

What a body can get wrong is an error of kvwire's one tree: ``BadRequestError``
(400) or ``TooLargeError`` (413), as a node would answer the same mistakes.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import msgpack
from msgspec import Raw

from kvwire.client import BadRequestError, KvwireError, TooLargeError, check_value
from kvwire.client.json_values import OFF_LOOP_BYTES, UnrepresentableJsonError, json_text, parse_json, shown_with_nan
from kvwire.protocol import Limits


class UnrepresentableValueError(KvwireError, ValueError):
    """A stored value that JSON cannot carry (a float NaN or infinity): HTTP 406.

    Neither the request nor the cluster is at fault, and asking again will not
    help: not ``transient``. It never travels on the wire, so it has no code of its own.
    """




class PreparedPut(NamedTuple):
    """A PUT body read off the loop: the value as msgpack, and as JSON for the answer."""

    packed: Raw
    value_text: str


def read_put_body(body: bytes, limits: Limits) -> tuple[Any, Raw]:
    """The value of a PUT body ``{"value": <JSON>}``, and the same packed as msgpack (what the
    nodes store); raises BadRequestError or TooLargeError."""
    if not body:
        raise BadRequestError('the request body must be a JSON object {"value": ...}; it is empty')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"the request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        document = parse_json(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    except ValueError as exc:  # a bad {"$bytes": ...} or number, a name twice, too deep
        raise BadRequestError(str(exc)) from None
    if not isinstance(document, dict):
        raise BadRequestError(f'the request body must be a JSON object {{"value": ...}}, not {_json_kind(document)}')
    if "value" not in document:
        raise BadRequestError('the request body has no "value" field')
    if len(document) > 1:
        # Dropped unnoticed, a typo or a "ttl" read as kept (a REST probe's finding).
        others = ", ".join(repr(name) for name in sorted(document) if name != "value")
        raise BadRequestError(f'the request body may hold only "value", not also {others}: kvwire keeps a value '
                              "per key and nothing else (no TTL, no metadata)")
    value = document["value"]
    try:
        check_value(value)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(str(exc)) from None
    packed = msgpack.packb(value)
    if len(packed) > limits.max_value_bytes:
        raise TooLargeError(f"value is {len(packed)} bytes encoded as msgpack; the limit is {limits.max_value_bytes} bytes")
    return value, Raw(packed)


def prepare_put(body: bytes, limits: Limits) -> PreparedPut:
    """What :func:`read_put_body` reads, with the value's JSON: all the work a large PUT
    body takes, in one call to run off the loop (OFF_LOOP_BYTES)."""
    value, packed = read_put_body(body, limits)
    return PreparedPut(packed, to_json_text(value))


def is_large(value: Any) -> bool:
    """Whether writing ``value`` as JSON is worth a thread (OFF_LOOP_BYTES): a container
    whose msgpack is larger than that. Strings and bytes are written by C code at once."""
    return type(value) in (list, dict) and len(msgpack.packb(value)) > OFF_LOOP_BYTES


def to_json_text(document: Any) -> str:
    """Compact JSON of a document holding stored values; UnrepresentableValueError
    for what JSON cannot carry (json_values.json_text)."""
    try:
        return json_text(document)
    except UnrepresentableJsonError as exc:
        readers = "kvwire-cli get (its text output) or the Python client" if shown_with_nan(document) else "the Python client"
        raise UnrepresentableValueError(f"{exc}; read it with {readers}") from None


def _json_kind(value: Any) -> str:
    if isinstance(value, bytes):
        return 'a {"$bytes": ...} object'
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
