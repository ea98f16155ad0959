"""The key routes without aiohttp's request machinery, and aiohttp for everything else.

aiohttp's routing, middlewares, request and response objects were about half
of the bridge's CPU per PUT (py-spy, README "Where the time goes"). Each
connection therefore starts with :class:`FastPathProtocol`, which reads a
request itself when it is the common case: ``GET``, ``PUT`` or ``DELETE`` of
``/kv-store/v1/kv/<key>/`` over HTTP/1.1, a ``Content-Length`` body, plain
ASCII headers. It answers through the same ``answer_*`` functions as
aiohttp's handlers (app.py), counted in the same metrics.

Anything else, malformed or merely unusual (HEAD, chunked bodies, ``Expect``,
HTTP/1.0, a query other than ``consistency``, another path), is not
interpreted here at all: at that request's first byte the connection is
handed to aiohttp's own protocol with every byte not yet answered, and stays
with aiohttp. So every answer this module does not give is aiohttp's, and the
refusals of bad input stay aiohttp's (its parser's in JSON: json_refusals.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from email.utils import formatdate
from http import HTTPStatus
from time import perf_counter, time
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from kvwire.buffer_budget import ClientBuffers
from kvwire.client import KvwireError
from kvwire.tls import like_tcp
from kvwire.tls_listener import TlsListener

from .app import (
    CONFIG,
    HOSTS,
    KV_PATH,
    PREFIX,
    REQUEST_ID_HEADERS,
    Answer,
    answer_delete,
    answer_get,
    answer_put,
    error_answer,
    internal_error_answer,
    json_error_answer,
)
from .bounds import Bounds
from .handed_over import HandedOver
from .json_refusals import handler_of
from .metrics import METRICS

log = logging.getLogger("kvwire.http")

KV_PREFIX = f"{PREFIX}/kv/".encode()
ROUTE_WITH_SLASH = KV_PATH
ROUTE_WITHOUT_SLASH = KV_PATH.rstrip("/")
# A request's head larger than this is left to aiohttp, which knows its limits.
MAX_HEAD_BYTES = 16 * 1024
# Unanswered bytes held while a request is answered (a client pipelining),
# beyond the largest body, before reading stops until they are answered.
MAX_HELD_BYTES = 64 * 1024

# One key segment: unreserved and sub-delimiter characters, ':' and '@', and
# %XX escapes (RFC 3986 pchar). Anything else is left to aiohttp, and so are
# '.' and '..' as %2E escapes, whose keys aiohttp reads (spelled out, they are the path's own).
_SEGMENT = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 token)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]")
_METHODS = {b"GET": "GET", b"PUT": "PUT", b"DELETE": "DELETE"}
_STARTS = tuple(method + b" " + KV_PREFIX for method in _METHODS)
# The one query read here: ``consistency=`` and a value needing no decoding (answer_get judges it).
_CONSISTENCY = re.compile(rb"consistency=([A-Za-z0-9\-._~]*)")
# Headers whose meaning this module does not implement: their presence hands the connection over.
_NOT_HERE = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer", b"content-encoding"))
# Headers that must come once: those read here (or aiohttp decides which counts),
# and those aiohttp's parser refuses twice (RFC 9110 singletons, SINGLETON_HEADERS).
_ONCE = frozenset((
    b"content-length", b"authorization", *(name.lower().encode() for name in REQUEST_ID_HEADERS), b"connection",
    b"content-location", b"content-range", b"content-type", b"etag", b"host", b"max-forwards", b"server", b"user-agent",
))
# aiohttp's parser's limits (RequestHandler's defaults): past them it answers 400.
MAX_HEADERS = 128
MAX_FIELD_BYTES = 8190
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_REQUEST_ID_NAMES = tuple(name.lower().encode() for name in REQUEST_ID_HEADERS)  # in answer_put's order

_HAND_OVER = object()  # parse(): not a request for this module
_NEED_DATA = object()  # parse(): the request is not all here yet


class Request:
    __slots__ = ("method", "raw_path", "consistency", "host", "authorization", "request_ids", "body", "close", "route")

    def __init__(self, method: str, raw_path: str, consistency: str | None, headers: dict[bytes, bytes],
                 body: bytes, route: str) -> None:
        self.method = method
        self.raw_path = raw_path
        self.consistency = consistency
        self.host = headers[b"host"].decode()  # parse() hands over a request without one
        authorization = headers.get(b"authorization")
        self.authorization = authorization.decode() if authorization is not None else None
        self.request_ids = [_text(headers.get(name)) for name in _REQUEST_ID_NAMES]
        self.body = body
        self.close = headers.get(b"connection", b"").lower() == b"close"
        self.route = route


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def _may_be_ours(buffer: bytearray) -> bool:
    """Whether ``buffer`` could be the start of a request this module reads (or is too short to tell)."""
    for start in _STARTS:
        shared = min(len(start), len(buffer))
        if buffer[:shared] == start[:shared]:
            return True
    return False


def parse(buffer: bytearray, max_body_bytes: int) -> tuple[Request, int] | object:
    """The request at the start of ``buffer`` and its length in bytes; or _NEED_DATA; or _HAND_OVER."""
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
    if end < 0:
        # Not even the start of one of ours (a kvwire client's binary frame, say):
        # aiohttp answers it now rather than once the head is whole, which never comes.
        if len(buffer) >= MAX_HEAD_BYTES + 4 or not _may_be_ours(buffer):
            return _HAND_OVER
        crlfs = buffer.count(b"\r\n")
        if buffer.count(b"\n") != crlfs or buffer.count(b"\r") - buffer.endswith(b"\r") != crlfs:
            return _HAND_OVER  # lines ended by a bare LF or CR: this head would never end here
        last = buffer.rfind(b"\r\n")
        if last >= 0 and len(buffer) - last - 2 > MAX_FIELD_BYTES:
            return _HAND_OVER  # a header line past aiohttp's limit, still growing
        return _NEED_DATA
    lines = bytes(buffer[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1].startswith(KV_PREFIX):
        return _HAND_OVER
    method = _METHODS.get(parts[0])
    if method is None:
        return _HAND_OVER
    target = parts[1]
    path, _, query = target.partition(b"?")
    segment = path[len(KV_PREFIX):]
    slash = segment.endswith(b"/")
    if slash:
        segment = segment[:-1]
    if (not _SEGMENT.fullmatch(segment)
            or not segment.replace(b"%2E", b".").replace(b"%2e", b".").strip(b".")):
        return _HAND_OVER
    consistency = None
    if query:
        given = _CONSISTENCY.fullmatch(query) if method == "GET" else None
        if given is None:
            return _HAND_OVER
        consistency = given.group(1).decode()
    if b"#" in target:
        return _HAND_OVER
    if len(lines) > MAX_HEADERS + 1:
        return _HAND_OVER
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or _CONTROL.search(line) or len(line) > MAX_FIELD_BYTES:
            return _HAND_OVER  # obsolete line folding, a bad name, a byte or a length aiohttp decides about
        name = name.lower()
        if name in _NOT_HERE or (name in _ONCE and name in headers):
            return _HAND_OVER
        headers[name] = value.strip(b" \t")
    if b"host" not in headers:
        return _HAND_OVER  # HTTP/1.1 requires it; aiohttp answers 400
    connection = headers.get(b"connection")
    if connection is not None:
        connection = connection.lower()
        if connection not in (b"keep-alive", b"close"):
            return _HAND_OVER
    length = headers.get(b"content-length", b"0" if method != "PUT" else None)
    if length is None or not length.isdigit() or len(length) > 12:
        return _HAND_OVER
    size = int(length)
    if size > max_body_bytes or (size and method != "PUT"):
        return _HAND_OVER  # aiohttp answers 413, or reads and ignores the body
    start = end + 4
    if len(buffer) < start + size:
        return _NEED_DATA
    request = Request(method, target.decode(), consistency, headers, bytes(buffer[start:start + size]),
                      ROUTE_WITH_SLASH if slash else ROUTE_WITHOUT_SLASH)
    return request, start + size


class FastPath:
    """What the connections of one listener share: the app, aiohttp's server, the connections open.

    With ``parse_requests`` off (``--no-fast-path``, or aiohttp writing the
    access log) every connection is handed to aiohttp at once, still counted
    and bounded (bounds.py)."""

    def __init__(self, runner: web.AppRunner, *, parse_requests: bool = True) -> None:
        self.app = runner.app
        self.server = runner.server  # aiohttp's protocol factory, for connections handed over
        self.config = self.app[CONFIG]
        self.hosts = self.app[HOSTS]
        self.metrics = self.app.get(METRICS)
        self.parse_requests = parse_requests
        self.connections: set[FastPathProtocol] = set()
        config = self.config
        self.bounds = Bounds(config.max_connections, config.idle_timeout, config.request_timeout,
                             lambda: self.connections, self._time_out_handed_over)
        # What every connection holds of requests still arriving, fast path's and aiohttp's.
        self.buffers = ClientBuffers(config.max_buffered_bytes)
        if self.metrics is not None:
            self.metrics.open_connections.set_function(lambda: self.bounds.open(len(self.connections)))
            self.metrics.buffered_bytes.set_function(lambda: self.buffers.total)
        self.answering: set[asyncio.Task] = set()  # the answers being made (the loop keeps only weak references)
        self._date = b""
        self._date_second = -1

    def __call__(self) -> FastPathProtocol:
        return FastPathProtocol(self)

    def timed_out(self, what: str) -> Answer:
        """Log and count a request too slow to arrive (``what`` took too long); the 408 for it."""
        timeout = self.bounds.request_timeout
        log.info("closing a connection: %s %g s (--request-timeout)", what, timeout)
        if self.metrics is not None:
            self.metrics.requests_timed_out.inc()
        return json_error_answer(int(HTTPStatus.REQUEST_TIMEOUT), f"{what} {timeout:g} s (--request-timeout); "
                                 "closing the connection")

    def _time_out_handed_over(self, watch: HandedOver, what: str) -> None:
        """A connection aiohttp serves, too slow to send its request: the 408, then closed."""
        self._refuse_handed_over(watch, self.timed_out(what))

    def _refuse_handed_over(self, watch: HandedOver, answer: Answer) -> None:
        """Answer a connection aiohttp serves with ``answer``, and close it (aiohttp's protocol
        sees the close; no lingering, as that would take the transport from it)."""
        watch.transport.write(answer_bytes(answer, self.date(), close=True))
        watch.transport.close()

    def hold(self, holder: FastPathProtocol | HandedOver, nbytes: int) -> None:
        """``holder`` now holds ``nbytes`` of requests still arriving and answers not yet read;
        past --max-buffered-bytes for all, the connection holding the most is answered 503 and
        closed, or dropped where no answer would be read or one is owed (``may_be_answered``)."""
        biggest = self.buffers.hold(holder, nbytes)
        if biggest is None:
            return
        held = self.buffers.held_by(biggest)
        self.buffers.hold(biggest, 0)
        biggest.counted = False  # closing: what its answer's write leaves held is not counted again
        limit = self.buffers.limit
        log.warning("closing a connection: it holds %d bytes of requests still arriving and of answers not yet "
                    "read, the most of any, and all hold more than --max-buffered-bytes (%d)", held, limit,
                    extra={"event": "connection_evicted"})
        if self.metrics is not None:
            self.metrics.connections_evicted.inc()
        if not biggest.may_be_answered:
            # Its client reads nothing (a close would wait for good), or a request of its is
            # being answered: a 503 would take that answer's place, saying not applied.
            biggest.abort()
            return
        answer = json_error_answer(int(HTTPStatus.SERVICE_UNAVAILABLE), (
            f"this bridge holds more of requests still arriving than all clients may (--max-buffered-bytes, {limit}), "
            "this connection the most; closing it: try again"))
        if isinstance(biggest, HandedOver):
            self._refuse_handed_over(biggest, answer)
        else:
            biggest.refuse(answer)

    def date(self) -> bytes:
        second = int(time())
        if second != self._date_second:
            self._date_second = second
            self._date = formatdate(second, usegmt=True).encode()
        return self._date

    def drop_all(self) -> int:
        """Close every connection at once, unread and unanswered; how many."""
        dropped = list(self.connections)
        for connection in dropped:
            connection.abort()
        return len(dropped) + self.bounds.abort_handed_over()

    async def shutdown(self, timeout: float) -> None:
        """Read no new requests; let those in flight be answered and their answers written,
        for up to ``timeout`` s; then drop what is left."""
        self.bounds.stop()
        for connection in list(self.connections):
            connection.finish()
        waiters = [asyncio.ensure_future(connection.gone.wait()) for connection in self.connections]
        if waiters:
            _, pending = await asyncio.wait(waiters, timeout=timeout)
            for waiter in pending:
                waiter.cancel()
        for connection in list(self.connections):
            connection.abort()


class FastPathProtocol(asyncio.Protocol):
    def __init__(self, shared: FastPath) -> None:
        self._shared = shared
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        # What --max-buffered-bytes last counted of it (FastPath.hold): the requests in the
        # buffer, and the answers its client has not read while the transport's buffer is
        # over its high-water mark; ``counted`` is off once it is being closed for it.
        self._held = 0
        self._unread = 0
        self.counted = True
        # Past this many unanswered bytes reading stops until they are answered
        # (a client pipelining faster than it reads its answers).
        self._held_limit = shared.config.max_body_bytes + MAX_HELD_BYTES
        self._busy = False  # a request is being answered; the next waits (HTTP/1.1 answers in order)
        self._writing_paused = False
        self._paused_since = 0.0  # when writing last paused: its client reads none of its answers
        self._reading_paused = False
        self._eof = False
        self._closing = False  # shutting down, or the client said Connection: close
        self._finishing_partial = False  # shutting down, but a request's bytes are still arriving
        self._last_active = self._loop.time()  # for --idle-timeout
        self._request_began = self._last_active  # of the bytes in the buffer, for --request-timeout
        # Set once the connection is closed or aiohttp's, for shutdown to wait on.
        self.gone = asyncio.Event()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        shared = self._shared
        self._write_bytes = like_tcp(transport)  # over TLS, what is unread is counted as over TCP
        if shared.bounds.full(len(shared.connections)):
            self._refuse_connection(transport)
            return
        self._transport = transport
        shared.connections.add(self)
        if not shared.parse_requests:
            self._hand_over()

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        if not self._buffer:
            self._request_began = now
        self._buffer += data
        self._last_active = now
        self._next()
        if len(self._buffer) + self._unread != self._held:
            self._count_held()
        if len(self._buffer) > self._held_limit and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        transport = self._transport
        self._next()
        # Our side closes once the request in flight is answered. TLS has no
        # half-close (its transports log a warning when asked to keep one): it closes now.
        return transport is not None and transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None  # an answer still being made is dropped (_write)
        self._forget()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._paused_since = self._loop.time()
        self._unread = self._transport.get_write_buffer_size() if self._transport is not None else 0
        self._count_held()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._unread = 0
        self._count_held()
        self._next()

    def _count_held(self) -> None:
        """Count what this connection holds against --max-buffered-bytes (FastPath.hold)."""
        held = len(self._buffer) + self._unread if self._transport is not None else 0
        if held != self._held and self.counted:
            self._held = held
            self._shared.hold(self, held)

    # --- requests -------------------------------------------------------------------------

    def _next(self) -> None:
        """Answer the next request in the buffer, hand the connection over, close, or wait."""
        if self._busy or self._transport is None:
            return
        if self._closing and not self._finishing_partial:
            self._close()  # after the answers written so far, however slowly they drain
            return
        if self._writing_paused:
            return
        if self._reading_paused and len(self._buffer) <= self._held_limit // 2:
            # Not at every answer: each resume lets in another read of up to 256 KiB.
            self._reading_paused = False
            self._transport.resume_reading()
        if not self._buffer:
            if self._eof:
                self._close()
            return
        parsed = parse(self._buffer, self._shared.config.max_body_bytes)
        hosts = self._shared.hosts
        if hosts is not None and type(parsed) is tuple and not hosts.allows(parsed[0].host):
            parsed = _HAND_OVER  # aiohttp's middleware refuses it (app._known_hosts), as on any route
        if self._finishing_partial and (parsed is _HAND_OVER or (parsed is _NEED_DATA and self._eof)):
            self._close()  # aiohttp's server is stopping too: nothing to hand over to
            return
        if parsed is _NEED_DATA:
            if self._eof:
                self._hand_over()  # a request cut short: aiohttp's answer to it
            return
        if parsed is _HAND_OVER:
            self._hand_over()
            return
        self._finishing_partial = False  # the one request begun at shutdown: answered, then closed
        request, length = parsed
        del self._buffer[:length]
        self._busy = True
        task = self._loop.create_task(self._answer(request))
        self._shared.answering.add(task)
        task.add_done_callback(self._shared.answering.discard)

    async def _answer(self, request: Request) -> None:
        shared = self._shared
        started = perf_counter()
        try:
            answer = await _dispatch(shared.app, request)
        except KvwireError as exc:
            answer = error_answer(exc, request.method, _logged_path(request), request.authorization is not None)
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception:
            answer = internal_error_answer(request.method, _logged_path(request))
        if shared.metrics is not None:
            shared.metrics.observe(request.method, request.route, answer.status, perf_counter() - started)
        if request.close:
            self._closing = True
        self._write(answer)
        self._busy = False
        self._last_active = now = self._loop.time()
        if self._buffer:
            self._request_began = now  # the next request's bytes, come meanwhile: its time starts now
        self._next()
        if len(self._buffer) + self._unread != self._held:
            self._count_held()

    def _write(self, answer: Answer) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._write_bytes(answer_bytes(answer, self._shared.date(), close=self._closing))
        if self._writing_paused and self._transport is transport:  # not closed by the write's own count
            self._unread = transport.get_write_buffer_size()
            self._count_held()

    @property
    def may_be_answered(self) -> bool:
        """Whether an answer now would be read, and would answer no request being answered."""
        return not self._busy and not self._writing_paused and self._transport is not None

    # --- giving the connection to aiohttp, closing it -------------------------------------

    def _hand_over(self) -> None:
        """From the current request on, the connection is aiohttp's, with the bytes not yet answered."""
        transport, self._transport = self._transport, None
        self._forget()
        if self._reading_paused:
            transport.resume_reading()  # aiohttp keeps its own bound on what it reads ahead
        # aiohttp's protocol, behind a watch that times its requests' arrival (handed_over.py).
        handler = handler_of(self._shared.server, self._shared.metrics)
        watch = HandedOver(handler, transport, self._request_began if self._buffer else None, self._shared.hold,
                           self._write_bytes)
        self._shared.bounds.handed_over(watch)
        transport.set_protocol(watch)
        watch.connection_made(transport)
        if self._buffer:
            watch.data_received(bytes(self._buffer))
            self._buffer.clear()
        if self._eof:
            if not watch.eof_received():
                transport.close()

    # --- bounds (bounds.py) ---------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        """Close the connection if it has been idle too long, or its request is too slow to arrive:
        its head not whole within --request-timeout of its first byte, or its body silent for as
        long (a large body may take longer in all, as long as it keeps coming, as nginx's
        client_header_timeout and client_body_timeout). Neither while a request is answered,
        nor while the client is slow to read answers (whole requests then wait in the buffer,
        held back by TCP, not by the client's sending); but a client that reads none of them
        for --idle-timeout is dropped (Bounds.drop_if_it_reads_nothing)."""
        if self._writing_paused and self._transport is not None:
            if self._shared.bounds.drop_if_it_reads_nothing(now, self._paused_since, self._transport):
                self._transport = None
                self._forget()
            return
        if self._busy or self._transport is None:
            return
        bounds = self._shared.bounds
        if not self._buffer:
            if now - self._last_active >= bounds.idle_timeout:
                self._close()
            return
        head_whole = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4) >= 0
        waiting_since = self._last_active if head_whole else self._request_began
        if now - waiting_since >= bounds.request_timeout and \
                parse(self._buffer, self._shared.config.max_body_bytes) is _NEED_DATA:
            what = "the request's body stopped arriving for" if head_whole else "the request's head did not arrive whole within"
            self.refuse(self._shared.timed_out(what))

    def _refuse_connection(self, transport: asyncio.BaseTransport) -> None:
        max_connections = self._shared.bounds.max_connections
        log.warning("refusing a connection: %d open, the limit (--max-connections)", max_connections)
        if self._shared.metrics is not None:
            self._shared.metrics.connections_refused.inc()
        self._transport = transport
        self.refuse(json_error_answer(int(HTTPStatus.SERVICE_UNAVAILABLE), f"too many connections to this bridge "
                                       f"({max_connections}, its --max-connections); try another bridge or later"))

    def refuse(self, answer: Answer) -> None:
        """Answer with ``answer`` and close, whatever else was asked."""
        self._closing = True
        self._buffer.clear()
        self._write(answer)
        if self._transport is None:
            return  # the answer's write found it holding the most (FastPath.hold), which aborted it
        transport, self._transport = self._transport, None
        self._forget()
        self._shared.bounds.lingering.close(transport)  # closed once the client stops sending (linger.py)

    def finish(self) -> None:
        """Shutting down: answer the request in flight, if any, write the answers out, close.
        A request begun but not yet whole (its body still arriving) is read to its end and
        answered first, as aiohttp lets its own finish; the shutdown's timeout bounds both."""
        self._closing = True
        if not self._busy and self._buffer and self._transport is not None \
                and parse(self._buffer, self._shared.config.max_body_bytes) is _NEED_DATA:
            self._finishing_partial = True
        self._next()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._forget()

    def _close(self) -> None:
        """Close once the answers written are sent (connection_lost then forgets the connection).

        Bytes still held are requests never to be answered: after one that said
        ``Connection: close`` (RFC 9112 9.6; aiohttp refused the lot with a 400, so it is
        not given them), or pipelined behind the last answer when the bridge stops. The
        client may be sending more: a close would answer it with a reset, which can
        destroy the answers before they are read, so the connection lingers (linger.py)."""
        if self._transport is None:
            return
        if self._buffer:
            self._buffer.clear()
            transport, self._transport = self._transport, None
            self._forget()
            self._shared.bounds.lingering.close(transport)
        else:
            self._transport.close()

    def _forget(self) -> None:
        self._shared.connections.discard(self)
        if self._held:
            self._held = 0
            self._shared.buffers.hold(self, 0)
        self.gone.set()


def answer_bytes(answer: Answer, date: bytes, *, close: bool) -> bytes:
    """``answer`` as HTTP/1.1 puts it on the wire; ``close``: with ``Connection: close``."""
    body = answer.text.encode()
    head = [b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\nDate: %s\r\n"
            b"X-Content-Type-Options: nosniff\r\n"  # as app.NOSNIFF
            % (answer.status, _REASONS.get(answer.status, b""), len(body), date)]
    if answer.headers:
        head.extend(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in answer.headers.items())
    if close:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    head.append(body)
    return b"".join(head)


def plain_http_answer(first_bytes: bytes) -> bytes:
    """What an HTTPS bridge answers a connection that speaks plain HTTP (TlsListener)."""
    message = "this port serves HTTPS, and the request came in plain HTTP: send it to https:// instead"
    return answer_bytes(json_error_answer(400, message), formatdate(usegmt=True).encode(), close=True)


def _logged_path(request: Request) -> str:
    """The path as aiohttp's ``request.path`` logs it: percent-decoded, no query."""
    return unquote(request.raw_path.partition("?")[0])


async def _dispatch(app: web.Application, request: Request) -> Answer:
    method = request.method
    if method == "GET":
        return await answer_get(app, request.raw_path, request.consistency, request.authorization)
    if method == "PUT":
        return await answer_put(app, request.raw_path, request.body, request.authorization, request.request_ids)
    return await answer_delete(app, request.raw_path, request.authorization)


def allowed(config: Any) -> bool:
    """Whether a bridge with ``config`` uses the fast path: not with its access log on (aiohttp writes that)."""
    return config.fast_path and not config.access_log


class FastPathSite(web.TCPSite):
    """aiohttp's TCPSite, its connections starting on the fast path.

    Stopping, it lets the requests in flight finish on both kinds of
    connection at once: the runner's own shutdown of aiohttp's connections,
    which would otherwise start only once this site has stopped, then finds
    none left. A fast-path connection is dropped after ``shutdown_timeout``;
    aiohttp waits that long for its request, then as long again once it has
    cancelled it.
    """

    def __init__(self, *args, parse_requests: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._parse_requests = parse_requests

    def drop_connections(self) -> int:
        return self._fast_path.drop_all()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        self._fast_path = FastPath(self._runner, parse_requests=self._parse_requests)
        self._fast_path.bounds.start()
        if self._ssl_context is None:
            self._server = await asyncio.get_running_loop().create_server(
                self._fast_path, self._host, self._port, backlog=self._backlog,
                reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            )
        else:
            # The node's listener: each failed handshake logged, at most --max-connections
            # running, each held at most --request-timeout, as a request's head is (asyncio's
            # default is 60 s; a probe on 2026-12-07 held 300 silent handshakes a minute each,
            # past every bound, and took the process's open files with them), and plain HTTP
            # answered 400 rather than dropped.
            self._server = await TlsListener.start(
                self._fast_path, self._host, self._port, context=self._ssl_context, backlog=self._backlog,
                max_handshakes=self._fast_path.bounds.max_connections,
                handshake_timeout=self._fast_path.config.request_timeout, plaintext_answer=plain_http_answer,
                log_limit=self._fast_path.bounds.log_limit, logger=log, reuse_port=self._reuse_port,
            )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port

    async def stop(self) -> None:
        await super().stop()  # no new connections
        fast_path = getattr(self, "_fast_path", None)
        if fast_path is None:
            return
        timeout = fast_path.config.shutdown_timeout
        await asyncio.sleep(0)  # requests already read start being handled first, as BaseRunner.cleanup does
        fast_path.server.pre_shutdown()  # aiohttp's idle connections close now, busy ones after their request
        await asyncio.gather(fast_path.shutdown(timeout), fast_path.server.shutdown(timeout))
