"""A connection handed to aiohttp, watched for ``--request-timeout``.

aiohttp times nothing while a request arrives: its ``keepalive_timeout`` runs
only between requests, so a client trickling a request's head, or a body
aiohttp's handler is reading, would hold one of ``--max-connections`` for as
long as it trickled. :class:`HandedOver` stands between the transport and
aiohttp's protocol and passes everything through, noting when bytes came; the
middleware :func:`watched` tells it when aiohttp's handlers start and finish a
request, and :func:`read_body` when one reads its body. bounds.py's sweep then
applies the fast path's rules (fast_path.FastPathProtocol.check_deadlines):

- a request's head must be whole within ``request_timeout`` of its first byte;
- a body being read may not go silent for as long.

Bytes that come after a handler has answered without reading its whole
body (a 405, a 400 for a bad key; a 413 closes instead, linger.py) are the
rest of that body, which aiohttp reads and drops: they start no request's
time, or an idle keep-alive connection would be answered 408. Not timed either: a request whose head
came while another was being answered or its body drained (a client
pipelining); aiohttp's ``keepalive_timeout`` (``--idle-timeout``) bounds it.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator

from aiohttp import StreamReader, web

HEAD_END = b"\r\n\r\n"


class HandedOver(asyncio.Protocol):
    def __init__(self, handler: asyncio.Protocol, transport: asyncio.BaseTransport, head_began: float | None,
                 hold: Callable[[Any, int], None] = lambda holder, nbytes: None,
                 write: Callable[[bytes], None] | None = None) -> None:
        self.handler = handler  # aiohttp's RequestHandler
        self.transport = transport
        # How aiohttp's answers are written (kvwire.tls.like_tcp): over TLS, a chunk at a time.
        self._write = write
        self._loop = asyncio.get_running_loop()
        self.answering = 0  # requests in aiohttp's handlers (watched())
        self.reading_body = 0  # of those, reading their bodies (read_body())
        # The first byte of a request that no handler has taken yet, and whether
        # its head's end has come (aiohttp then answers it, 400 included).
        self.head_began = head_began
        self.head_whole = False
        self._tail = b""  # the last bytes seen, for a head's end split between two reads
        self.last_data = self._loop.time()
        # The body of a request answered before it was read whole: aiohttp reads and
        # drops the rest (for up to its lingering_time), and those bytes are no head.
        self._draining: StreamReader | None = None
        # Since when its client has read none of the answers (the transport's buffer full).
        self.paused_since: float | None = None
        # Counted against --max-buffered-bytes (FastPath.hold, which may close this): the
        # bytes of a request's head not yet whole, which aiohttp's parser holds until it is
        # (up to about 1 MiB: 128 header lines of 8 KiB), the bytes of the body a handler is
        # reading, which it holds until read whole, and the answers its client has not read
        # while the transport's buffer is over its high-water mark; ``counted`` is off once
        # it is being closed for it.
        self._hold = hold
        self._head_bytes = 0
        self._body_bytes = 0
        self._unread = 0
        self.counted = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._write is not None and self._write != transport.write:
            transport = ChunkedWrites(transport, self._write, self._written)
        self.handler.connection_made(transport)

    def _written(self) -> None:
        """After a write of aiohttp's through ChunkedWrites: the chunks written while paused count too."""
        if self.paused_since is not None and not self.transport.is_closing():
            self._unread = self.transport.get_write_buffer_size()
            self._count_held()

    def data_received(self, data: bytes) -> None:
        now = self.last_data = self._loop.time()
        draining = self._draining
        if draining is None and not self.answering and not self.head_whole:
            if self.head_began is None:
                self.head_began = now
            self.head_whole = HEAD_END in self._tail + data[:3] or HEAD_END in data
            self._tail = data[-3:] if len(data) >= 3 else (self._tail + data)[-3:]
            self._head_bytes = 0 if self.head_whole else self._head_bytes + len(data)
            self._count_held()
            if self.transport.is_closing():
                return  # closed for holding the most
        if self.reading_body:
            self._body_bytes += len(data)
            self._count_held()
            if self.transport.is_closing():
                return  # closed for holding the most: aiohttp's handler sees the close
        self.handler.data_received(data)
        if draining is not None and draining.is_eof():
            self._draining = None  # the body's end came in these bytes: the next bytes begin a request

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_bytes = self._body_bytes = self._unread = 0
        self._count_held()
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.paused_since = self._loop.time()
        self._unread = self.transport.get_write_buffer_size()
        self._count_held()
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.paused_since = None
        self._unread = 0
        self._count_held()
        self.handler.resume_writing()

    @property
    def may_be_answered(self) -> bool:
        """Whether an answer now would be read, and would answer no request being
        answered: only while a handler reads its request's body (nothing of its
        answer written yet) and the client reads what it is sent."""
        return self.reading_body > 0 and self.paused_since is None and not self.transport.is_closing()

    def abort(self) -> None:
        self.transport.abort()

    def request_started(self) -> None:
        self.answering += 1
        self.head_began, self.head_whole, self._tail = None, False, b""
        if self._head_bytes:  # a head taken whole by aiohttp, its end not seen here
            self._head_bytes = 0
            self._count_held()

    def request_finished(self, body: StreamReader) -> None:
        """``body``: the request's, which aiohttp drains if it is not at its end."""
        self.answering -= 1
        if not body.is_eof():
            self._draining = body

    def body_started(self) -> None:
        self.reading_body += 1
        self.last_data = self._loop.time()  # the body's time starts now, not at the head's last read

    def body_finished(self) -> None:
        self.reading_body -= 1
        self._body_bytes = 0
        self._count_held()

    def _count_held(self) -> None:
        if self.counted:
            self._hold(self, self._head_bytes + self._body_bytes + self._unread)

    def overdue(self, now: float, request_timeout: float) -> str | None:
        """What took too long, for the 408, or None."""
        if self.transport.is_closing():
            return None
        if self.reading_body and now - self.last_data >= request_timeout:
            return "the request's body stopped arriving for"
        if (not self.answering and self.head_began is not None and not self.head_whole
                and now - self.head_began >= request_timeout):
            return "the request's head did not arrive whole within"
        return None


class ChunkedWrites:
    """A TLS transport as aiohttp sees it: its answers go a chunk at a time (kvwire.tls.like_tcp).

    aiohttp writes an answer whole, and the TLS layer passed it all below itself, to
    a buffer counted nowhere: 40 connections over TLS each asking the bridge's aiohttp
    routes for a 900 kB value and reading nothing grew it by 70-83 MB, against 10-12
    on the fast path, which writes in chunks. A chunk at a time, the layer below holds
    about two and the rest waits in the TLS layer, where the write buffer's size counts
    it against --max-buffered-bytes (HandedOver.pause_writing, and after each write
    while paused, as the fast path counts). Everything else is the transport's own."""

    def __init__(self, transport: asyncio.BaseTransport, write: Callable[[bytes], None],
                 written: Callable[[], None]) -> None:
        self._transport = transport
        self._write = write
        self._written = written  # the watch recounts what waits unread

    def write(self, data: bytes) -> None:
        self._write(data)
        self._written()

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _watch_of(request: web.BaseRequest) -> HandedOver | None:
    transport = request.transport
    watch = transport.get_protocol() if transport is not None else None
    return watch if isinstance(watch, HandedOver) else None


@web.middleware
async def watched(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Tell the connection's watch that a request is being answered, and when it is."""
    watch = _watch_of(request)
    if watch is None:
        return await handler(request)
    watch.request_started()
    try:
        return await handler(request)
    finally:
        watch.request_finished(request.content)


@contextmanager
def read_body(request: web.BaseRequest) -> Iterator[None]:
    """Around a handler's read of its request's body: the watch times its silences."""
    watch = _watch_of(request)
    if watch is None:
        yield
        return
    watch.body_started()
    try:
        yield
    finally:
        watch.body_finished()
