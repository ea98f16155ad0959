"""A sans-I/O kvwire connection, in the manner of h11 and wsproto.

Bytes go in with :meth:`Connection.receive_data` and messages come out of
:meth:`Connection.next_event`; messages go in with :meth:`Connection.send` and
bytes come out. No sockets, no asyncio: the server, the client and the tests
drive the same object, and chunking never changes what comes out.
"""

from __future__ import annotations

import enum

from .codec import HEADER, HEADER_SIZE, decode_payload, encode, oversized_frame_message
from .errors import ErrorCode, ProtocolError
from .limits import DEFAULT_LIMITS, FRAME_OVERHEAD_BYTES, Limits
from .messages import Message


class Side(enum.Enum):
    """Which end of the connection this object is: it decides what it may receive."""

    NODE = "node"  # receives requests, sends replies
    CLIENT = "client"  # sends requests, receives replies


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"  # call receive_data() with more bytes
    CLOSED = "CLOSED"  # the peer closed cleanly, between frames


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED

# Compact the receive buffer once this much of it has been consumed; deleting
# the consumed prefix on every frame would copy pipelined input over and over.
_COMPACT_AFTER_BYTES = 64 * 1024


class Connection:
    def __init__(self, side: Side, limits: Limits = DEFAULT_LIMITS, *, raw_values: bool = False) -> None:
        """``raw_values``: values come out as the msgpack bytes they came as, a
        msgspec.Raw, checked but never packed again (a node's way, kvwire.protocol.values)."""
        self.side = side
        self.limits = limits
        self.raw_values = raw_values
        self._accept_replies = side is Side.CLIENT
        # The longest frame taken, checked on its header, when lower than
        # ``limits.max_frame_bytes``: a node's for a connection until it is a peer
        # link (Limits.client_frame_bytes). None: the limits' own.
        self.frame_limit: int | None = None
        # Why ``frame_limit`` is what it is, for the refusal (None: a client's frame, the default).
        self.frame_limit_reason: str | None = None
        self._buffer = bytearray()
        self._offset = 0
        self._eof = False
        self._error: ProtocolError | None = None
        # The size of the frame the last message came in, header included: what
        # a node holds while that request waits (kvwire.server.flow's byte budget).
        self.last_frame_bytes = 0

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed its side."""
        if data:
            if self._eof:
                raise RuntimeError("received data after end of stream")
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Message | Sentinel:
        """The next complete message, NEED_DATA, or CLOSED.

        Raises ProtocolError. After a ``fatal`` one the byte stream cannot be
        trusted, and every later call raises it again; after a non-fatal one
        the bad frame has been consumed and the next call goes on past it.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        start = self._offset
        available = len(buffer) - start
        if available < HEADER_SIZE:
            return self._end_of_input(available)
        (length,) = HEADER.unpack_from(buffer, start)
        limit = self.limits.max_frame_bytes if self.frame_limit is None else self.frame_limit
        if length > limit:
            # Refused on the header alone, before a byte of the payload is kept.
            message = oversized_frame_message(bytes(buffer[start : start + HEADER_SIZE]), length, limit,
                                              replies=self._accept_replies)
            if self.frame_limit_reason is not None:
                message += f"; {self.frame_limit_reason}"
            elif limit < self.limits.max_frame_bytes:
                message += (f"; a client's frame holds at most the largest key and value and "
                            f"{FRAME_OVERHEAD_BYTES} bytes more (max_frame_bytes is for peer links)")
            return self._fail(ProtocolError(message, code=ErrorCode.TOO_LARGE))
        if length == 0:
            return self._fail(ProtocolError("frame has an empty payload; a payload is one msgpack map"))
        end = start + HEADER_SIZE + length
        if len(buffer) < end:
            return self._end_of_input(available)
        payload = bytes(buffer[start + HEADER_SIZE : end])
        self._consume(end)
        self.last_frame_bytes = end - start
        try:
            return decode_payload(payload, self.limits, replies=self._accept_replies, raw_values=self.raw_values)
        except ProtocolError as exc:
            if exc.fatal:
                return self._fail(exc)
            raise

    def send(self, message: Message) -> bytes:
        """The bytes that carry ``message`` to the peer."""
        return encode(message)

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buffer) - self._offset

    def _end_of_input(self, available: int) -> Sentinel:
        if not self._eof:
            return NEED_DATA
        if not available:
            return CLOSED
        if available < HEADER_SIZE:
            received = f"{available} of its {HEADER_SIZE} length bytes received"
        else:
            (length,) = HEADER.unpack_from(self._buffer, self._offset)
            received = f"{available - HEADER_SIZE} of its {length} payload bytes received"
        return self._fail(ProtocolError(f"connection closed in the middle of a frame ({received})"))

    def _consume(self, end: int) -> None:
        if end == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        elif end >= _COMPACT_AFTER_BYTES:
            del self._buffer[:end]
            self._offset = 0
        else:
            self._offset = end

    def _fail(self, error: ProtocolError) -> Sentinel:
        self._error = error
        raise error
