"""Closing a refused connection without resetting it: nginx's lingering close.

A connection refused (503 past ``--max-connections``) or timed out (408) is
answered and closed whatever its client is still sending. Closed with bytes
unread, the kernel resets the connection, and a client still sending its
request sees the reset instead of the answer (its write fails with EPIPE or
ECONNRESET). So the bridge shuts its sending side after the answer, reads and
drops what comes until the client closes its side, and closes then, or
``LINGER_SECONDS`` after the answer at the latest.

On a connection aiohttp serves, :class:`ClosingAnswer` does the same for an
answer given before its request's body was read (a 413 for a body over
``--max-body-bytes``): aiohttp would otherwise keep reading that body for its
``lingering_time`` (10 s) before closing, even after ``Connection: close``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

LINGER_SECONDS = 2.0
# Connections lingering at once, per listener; past it one closes at once (the
# reset is then possible again), so that a flood of refused connections holds
# few sockets.
MAX_LINGERING = 128


class Lingering:
    """How many of one listener's connections linger now."""

    def __init__(self) -> None:
        self.count = 0

    def close(self, transport: asyncio.BaseTransport) -> None:
        """Close ``transport``, whose answer is written, once its client has stopped
        sending. It becomes this module's: its protocol is replaced, and the one it had
        gets no ``connection_lost``. TLS has no half-close; there, and past
        MAX_LINGERING, it closes now."""
        if transport.is_closing():
            return
        if self.count >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        transport.set_protocol(_Dropping(self, transport))
        transport.resume_reading()  # it may have stopped reading at its buffer's limit
        transport.write_eof()


class _Dropping(asyncio.Protocol):
    def __init__(self, lingering: Lingering, transport: asyncio.BaseTransport) -> None:
        self._lingering = lingering
        lingering.count += 1
        self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._expire, transport)

    @staticmethod
    def _expire(transport: asyncio.BaseTransport) -> None:
        # A close waits for what is written to drain, for good if the client reads
        # nothing: past the deadline, answers still unread are dropped with it.
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # the rest of a request already answered

    def eof_received(self) -> bool:
        return False  # the client has sent all it will: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._lingering.count -= 1


class ClosingAnswer(web.Response):
    """An answer after which its connection, one aiohttp serves, closes: sent with
    ``Connection: close``, then the bridge's side is shut, so the client sees the end
    at once. The protocol stays aiohttp's, which reads and drops what still comes of
    the body; the connection closes when the client closes its side, or
    ``LINGER_SECONDS`` after the answer at the latest (over TLS, which has no
    half-close, the client sees the end only then)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force_close()
        self._transport: asyncio.BaseTransport | None = None

    async def prepare(self, request: web.BaseRequest) -> Any:
        self._transport = request.transport
        return await super().prepare(request)

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        # TLS has no half-close: closed now, a client still sending its body would see the
        # connection break before it reads the answer. Left open, aiohttp goes on reading
        # and dropping the body, and the answer is read; closed at the same deadline.
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
