"""What the fuzz targets assert about each input; a failed check raises Finding.

atheris reports any exception that escapes a target as a crash and saves the
input, so a Finding, like an exception from kvwire outside its error tree,
ends the run with a reproducer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from kvwire.protocol import CLOSED, NEED_DATA, Connection, ErrorCode, Limits, ProtocolError, Side, decode_payload, encode

# The codes a ProtocolError may carry (docs/protocol.md 7.1, 7.2).
PROTOCOL_ERROR_CODES = frozenset({ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.UNKNOWN_OP})


class Finding(AssertionError):
    """The code under test broke a rule; the message says which, with the stream in hex."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A ProtocolError as an outcome, comparable between two decodings."""

    code: int
    fatal: bool
    request_id: int | None
    message: str

    @classmethod
    def of(cls, exc: ProtocolError) -> Refusal:
        return cls(int(exc.code), exc.fatal, exc.request_id, exc.message)


def decode_all(side: Side, limits: Limits, chunks: list[bytes], eof: bool, stream: bytes, *,
               frame_limit: int | None = None) -> list[Any]:
    """Every outcome of feeding ``chunks`` to a fresh connection: messages, Refusals, and CLOSED last after a clean end.

    ``frame_limit``: the connection's, as a node sets it for a client (Connection.frame_limit).
    Raises Finding for anything outside the codec's contract (``stream`` is the
    whole input, for the report); any exception outside ProtocolError escapes as it is.
    """
    conn = Connection(side, limits)
    conn.frame_limit = frame_limit
    outcomes: list[Any] = []
    # Each message or refusal consumes at least a 5-byte frame, so a codec
    # that makes progress needs fewer calls than this; more is a hang.
    max_events = len(stream) // 5 + 2
    feeds = [*chunks, b""] if eof else chunks
    for chunk in feeds:
        conn.receive_data(chunk)
        while True:
            if len(outcomes) > max_events:
                raise Finding(f"next_event() keeps returning events without consuming input; stream {stream.hex()}")
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                outcomes.append(check_refusal(exc, side, stream))
                if exc.fatal:
                    _check_stays_failed(conn, exc, stream)
                    return outcomes
                continue
            if event is NEED_DATA:
                if not chunk:
                    raise Finding(f"NEED_DATA after the end of the stream; stream {stream.hex()}")
                break
            outcomes.append(event)
            if event is CLOSED:
                return outcomes
    return outcomes


def check_refusal(exc: ProtocolError, side: Side, stream: bytes) -> Refusal:
    refusal = Refusal.of(exc)
    if exc.code not in PROTOCOL_ERROR_CODES:
        raise Finding(f"ProtocolError with code {exc.code!r}, not one of section 7.2's; stream {stream.hex()}")
    if exc.fatal and exc.request_id is not None:
        raise Finding(f"fatal ProtocolError names request {exc.request_id}; stream {stream.hex()}")
    # A node answers a message error with the request's id, so it must have one;
    # a client may refuse an ERROR whose id is nil without closing (it has nothing to answer).
    if not exc.fatal and side is Side.NODE and type(exc.request_id) is not int:
        raise Finding(f"message error without a request id: {exc.message}; stream {stream.hex()}")
    return refusal


def _check_stays_failed(conn: Connection, exc: ProtocolError, stream: bytes) -> None:
    """After a fatal error the stream cannot be trusted: every later call raises it again."""
    try:
        event = conn.next_event()
    except ProtocolError as again:
        if again is exc:
            return
    else:
        raise Finding(f"next_event() returned {event!r} after a fatal error; stream {stream.hex()}")
    raise Finding(f"a different error after a fatal one; stream {stream.hex()}")


def check_round_trip(message: Any, side: Side, limits: Limits, stream: bytes) -> None:
    """A message the codec accepted encodes, decodes to an equal message, and encodes to the same bytes."""
    try:
        data = encode(message)
    except ProtocolError as exc:
        raise Finding(f"accepted {type(message).__name__} but cannot encode it: {exc}; stream {stream.hex()}") from exc
    (length,) = struct.unpack_from(">I", data)
    if length != len(data) - 4:
        raise Finding(f"encode() framed {len(data) - 4} bytes with length {length}; stream {stream.hex()}")
    # decode_payload skips the frame limit: a float 32 re-encodes as 9 bytes,
    # so an accepted frame may grow past it, which is not the codec's concern.
    try:
        again = decode_payload(data[4:], limits, replies=side is Side.CLIENT)
    except ProtocolError as exc:
        raise Finding(f"{message!r} encodes to bytes the codec refuses: {exc}; stream {stream.hex()}") from exc
    if not same(message, again):
        raise Finding(f"{message!r} came back as {again!r}; stream {stream.hex()}")
    if encode(again) != data:
        raise Finding(f"re-encoding {type(message).__name__} changed its bytes; stream {stream.hex()}")


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types at every depth, and floats compared by their bits (NaN included).

    Iterative: a value may nest 1023 deep, past Python's recursion limit.
    """
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if type(x) is not type(y):
            return False
        if type(x) is float:
            if struct.pack(">d", x) != struct.pack(">d", y):
                return False
        elif isinstance(x, (list, tuple)):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y))
        elif type(x) is dict:
            if list(x) != list(y):  # same keys in the same order: the order is on the wire
                return False
            pending.extend((x[key], y[key]) for key in x)
        elif is_dataclass(x):
            pending.extend((getattr(x, f.name), getattr(y, f.name)) for f in fields(x))
        elif x != y:
            return False
    return True


def same_outcomes(first: list[Any], second: list[Any]) -> bool:
    return len(first) == len(second) and all(
        x == y if type(x) is Refusal or x is CLOSED else same(x, y) for x, y in zip(first, second)
    )
