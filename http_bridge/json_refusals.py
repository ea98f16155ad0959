"""aiohttp's own refusals of malformed requests, in JSON like every other answer.

A request aiohttp's parser cannot read (a bad method, a duplicated or
malformed ``Content-Length``, a header line past its limit...) never
reaches the app's middlewares:
aiohttp answers it from ``RequestHandler.handle_error``, as ``text/plain``
that echoes the bytes it choked on. The bridge's connections are aiohttp's
from the first such request on (fast_path.py hands them over), so a handler
whose ``handle_error`` answers ``{"error": "<one line>"}`` instead, with the
same status, makes every answer JSON. aiohttp still logs, checks that no
answer was begun, and closes the connection after the answer, as before. The
same handler writes in JSON an HTTPException no middleware saw: the 417 of
aiohttp's default ``Expect`` handler, which runs before the middlewares.
"""

from __future__ import annotations

import asyncio
import re
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .app import NOSNIFF
from .metrics import HttpMetrics
from .values import to_json_text

# aiohttp's messages for a body it cannot decode end in a packaging hint ("Please
# install `Brotli`"), which is the server's business, not the client's.
_HINT = ". Please install"


class JsonRefusals(RequestHandler):
    """aiohttp's protocol, its refusals in JSON (the module's docstring)."""

    __slots__ = ("_metrics",)

    def __init__(self, *args, metrics: HttpMetrics | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics  # counts what it answers before the middlewares (metrics.py)

    async def finish_response(self, request, resp: web.StreamResponse, start_time: float | None):
        # An HTTPException that no middleware saw: the default Expect handler's 417, which
        # aiohttp runs before the middlewares (every route but a PUT's, and unmatched paths).
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            text = (resp.text or "").strip().splitlines()
            headers = {name: value for name, value in resp.headers.items()
                       if name.lower() not in ("content-type", "content-length")}
            resp = web.Response(status=resp.status, text=to_json_text({"error": text[0] if text else resp.reason}),
                                content_type="application/json", charset="utf-8", headers={**headers, **NOSNIFF})
        if self._metrics is not None:
            self._metrics.count_early_answer(request, resp.status)
        return await super().finish_response(request, resp, start_time)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if an answer was begun
        response = web.Response(status=status, text=to_json_text({"error": refusal_message(status, message)}),
                                content_type="application/json", charset="utf-8", headers=NOSNIFF)
        response.force_close()
        return response


_ECHOED_BYTES = re.compile(r":?\s*(bytearray\()?b['\"].*$")


def refusal_message(status: int, message: str | None) -> str:
    """One line saying what aiohttp refused, without the bytes it echoes."""
    if status >= 500:
        return "internal error in the HTTP bridge; the bridge's log has the details"
    line = (message or "").strip().splitlines()[0].strip().rstrip(":") if message and message.strip() else ""
    line = line.split(_HINT, 1)[0]
    # "Got more than 16384 bytes when reading: bytearray(b'/kv-store/...')": the
    # bytes are the client's own line or header, a token's first characters included.
    line = _ECHOED_BYTES.sub("", line).rstrip(" :.")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "refused"
    return f"malformed HTTP request: {line}" if line else f"malformed HTTP request ({status} {phrase})"


def handler_of(server: web.Server, metrics: HttpMetrics | None) -> RequestHandler:
    """A protocol for one connection of ``server``, as ``server()`` makes but refusing in JSON."""
    # Server.__call__ passes its handler_args (max_line_size...) as _kwargs: without them
    # long keys would be refused, so a missing attribute fails loudly here.
    return JsonRefusals(server, loop=asyncio.get_running_loop(), metrics=metrics, **server._kwargs)
