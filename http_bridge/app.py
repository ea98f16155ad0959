"""The REST API: routes, handlers, and the one place errors become JSON.

Every response is JSON. Errors are ``{"error": "<one line>"}`` with a status
chosen in :func:`status_for`, plus ``"maybe_applied": true|false`` when the
node said whether a failed write may have been applied; anything unexpected
is logged here with its traceback and answered 500 without one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, NamedTuple, Sequence
from urllib.parse import quote, unquote_to_bytes

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client.registry import CollectorRegistry

from kvwire.client import (
    AsyncClient,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    KeyNotFoundError,
    KvwireError,
    TooLargeError,
    UnauthenticatedError,
    check_key,
)
from kvwire.client.arguments import is_utf8
from kvwire.client.json_values import version_json

from .config import BridgeConfig
from .content_encoding import CONTENT_ENCODINGS, decoded_body
from .handed_over import read_body, watched
from .hosts import HostCheck
from .linger import ClosingAnswer
from .metrics import COUNTED, METRICS, add_metrics
from .openapi import openapi_document
from .values import OFF_LOOP_BYTES, UnrepresentableValueError, is_large, prepare_put, read_put_body, to_json_text

log = logging.getLogger("kvwire.http")

PREFIX = "/kv-store/v1"
KV_PATH = f"{PREFIX}/kv/{{key}}/"
# The route KV_PATH names (as metrics and the OpenAPI document show it): any
# segment, braces included, which aiohttp's plain ``{key}`` would refuse.
KV_ROUTE = f"{PREFIX}/kv/{{key:[^/]+}}/"
HEALTH_PATH = f"{PREFIX}/health/"
OPENAPI_PATH = f"{PREFIX}/openapi.json"
CONSISTENCY_LEVELS = ("one", "quorum")
# The longest request line aiohttp reads: at least this, and room for a key of
# --max-key-bytes with every byte percent-encoded (three characters each), so
# that every key a node takes can be named, and a longer one gets the key
# check's JSON 400 rather than aiohttp refusing the line as plain text.
MIN_REQUEST_LINE = 16 * 1024
# Clients may retry a 503 after this many seconds; failure detection takes 0.5 s.
RETRY_AFTER_SECONDS = "1"

CONFIG = web.AppKey("config", BridgeConfig)
CLIENT = web.AppKey("client", AsyncClient)
CLIENTS = web.AppKey("clients", object)
# Node clients kept for distinct bearer tokens; each holds a connection per node.
MAX_TOKEN_CLIENTS = 64
# How often a client let go of (TokenClients) is looked at, until its calls are done.
IDLE_CHECK_S = 0.05
OPENAPI_TEXT = web.AppKey("openapi_text", str)
# The Host check of a plain-HTTP bridge (hosts.py); None when it answers any Host.
HOSTS = web.AppKey("hosts", object)
# Paths answered whatever the Host: load balancers' checks and Prometheus name
# a bridge as they were told to, and neither path reads a key.
ANY_HOST_PATHS = frozenset({f"{PREFIX}/health/", f"{PREFIX}/health", "/metrics"})
# Set on a request whose connection must close after its answer (its body could not be
# read, or is refused unread): the answer is a ClosingAnswer (linger.py).
CLOSE_AFTER = "kvwire_close_after"

# The error kinds that need a status of their own, first match first. Every
# other error of the tree is 503 when it is ``transient`` (the cluster cannot
# serve the request now; it may later) and 502 when it is not (the nodes
# behind this gateway failed it: FORBIDDEN from a node of another cluster,
# INTERNAL, UNKNOWN_OP, a protocol error), so a new class needs no entry here.
_OWN_STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (KeyNotFoundError, 404),
    (BadRequestError, 400),
    # No token, or one the nodes don't know. A ForbiddenError is 403 when the
    # request carried a token (_json_errors) and 502 when not: a node refused the bridge.
    (UnauthenticatedError, 401),
    (TooLargeError, 413),
    (UnrepresentableValueError, 406),
    # Transient, but the answer is not "try later": the DELETE may have taken effect.
    (ConflictError, 409),
    # The bridge's own deadline (KvwireTimeoutError) and a node's TIMEOUT reply
    # (ServerTimeoutError): both are TimeoutErrors.
    (TimeoutError, 504),
)


def create_app(config: BridgeConfig, *, registry: CollectorRegistry | None = None,
               make_client: MakeClient | None = None) -> web.Application:
    """The aiohttp application; its clients open with the app and close with it.

    Its HTTP metrics go into ``registry`` (its own if None), served at /metrics.
    ``make_client(token)`` makes the client of a bearer token (None: no token),
    ``node_client`` by default; a node's own bridge hands its requests to the
    node in the process instead (kvwire.server.in_process).
    """
    app = web.Application(
        middlewares=[watched, _known_hosts, _json_errors],
        client_max_size=config.max_body_bytes,
        # Bodies are decoded here, whole or refused (content_encoding.py), not by aiohttp.
        handler_args={"max_line_size": max_request_line(config.limits), "auto_decompress": False},
    )
    app[CONFIG] = config
    app[HOSTS] = HostCheck(config.allowed_hosts) if config.checks_hosts else None
    app.cleanup_ctx.append(functools.partial(_client_context, make_client=make_client))
    for path in (KV_ROUTE, KV_ROUTE.rstrip("/")):
        app.router.add_get(path, get_key)
        app.router.add_put(path, put_key, expect_handler=_continue_within_limit)
        app.router.add_delete(path, delete_key)
    for path in (HEALTH_PATH, HEALTH_PATH.rstrip("/")):
        app.router.add_get(path, health)
    # Plain JSON: the document holds no stored value, and describes {"$bytes": ...} maps.
    app[OPENAPI_TEXT] = json.dumps(openapi_document(config), ensure_ascii=False, separators=(",", ":"))
    app.router.add_get(OPENAPI_PATH, openapi)
    from .ui import add_ui_routes  # the cluster page, /kv-store/v1/ui/ (http_bridge/ui.py)
    add_ui_routes(app, config)
    add_metrics(app, registry)
    return app


def max_request_line(limits) -> int:
    """The longest request line the bridge reads (MIN_REQUEST_LINE says why)."""
    return max(MIN_REQUEST_LINE, 3 * limits.max_key_bytes + 1024)


# Makes the client of a bearer token: an AsyncClient, or anything with the
# methods of one the bridge calls (get_with_version, put_with_result, delete,
# health, close).
MakeClient = Callable[[str | None], AsyncClient]


def node_client(config: BridgeConfig, token: str | None, endpoints: Sequence[str] | None = None) -> AsyncClient:
    """A client of ``endpoints`` (default: the configured ones) as the bridge's settings say, with ``token``."""
    return AsyncClient(config.endpoints if endpoints is None else endpoints, timeout=config.timeout,
                       cluster=config.cluster_id, retry=config.retry, limits=config.limits,
                       tls=config.nodes_context(), token=token)


async def _client_context(app: web.Application, *, make_client: MakeClient | None):
    config = app[CONFIG]
    make = make_client or functools.partial(node_client, config)
    app[CLIENTS] = clients = TokenClients(make)
    app[CLIENT] = clients.get(None)
    try:
        yield
    finally:
        await clients.close()


class TokenClients:
    """One node client per bearer token seen lately (the nodes check tokens, the
    bridge only passes them on), and one without a token; the least recently
    used is let go when there are more than MAX_TOKEN_CLIENTS, closed once its
    calls in progress are done.

    Closed at once, the calls it was making failed ("connection closed by the
    client", 503, a PUT left undecided): a client sending made-up tokens, one
    per request, made other clients' requests fail (found by a security probe)."""

    def __init__(self, make: Callable[[str | None], AsyncClient]) -> None:
        self._make = make
        self._clients: OrderedDict[str | None, AsyncClient] = OrderedDict()
        self._closing: set[asyncio.Task] = set()

    def get(self, token: str | None) -> AsyncClient:
        client = self._clients.get(token)
        if client is None:
            client = self._clients[token] = self._make(token)
            if len(self._clients) > MAX_TOKEN_CLIENTS + 1:
                oldest = next(key for key in self._clients if key is not None)
                task = asyncio.get_running_loop().create_task(_close_when_idle(self._clients.pop(oldest)))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        else:
            self._clients.move_to_end(token)
        return client

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()), *self._closing)
        self._clients.clear()


async def _close_when_idle(client: AsyncClient) -> None:
    """Close ``client`` once no call of it is in progress; a call ends by its timeout at the latest."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + client.timeout + 1
    try:
        while client.calls_in_progress and loop.time() < give_up_at:
            await asyncio.sleep(IDLE_CHECK_S)
    finally:  # cancelled too (the bridge stopping): closed all the same
        await client.close()


# --- handlers ----------------------------------------------------------------------------
#
# Each REST operation is an ``answer_*`` function of plain values (the app,
# the raw path, header values, the body) that returns an Answer or raises an
# error of kvwire's tree. aiohttp's handlers below and the fast path
# (http_bridge/fast_path.py) both call them, so the two answer alike.


class Answer(NamedTuple):
    """A JSON response: status, body text, and any headers beyond Content-Type."""

    status: int
    text: str
    headers: dict[str, str] | None = None


async def answer_get(app: web.Application, raw_path: str, consistency: str | None, authorization: str | None) -> Answer:
    key = key_of(raw_path, app[CONFIG].limits)
    if consistency is not None and consistency not in CONSISTENCY_LEVELS:
        raise BadRequestError(f"consistency must be 'one' or 'quorum', got {consistency!r}")
    value, version = await client_for(app, authorization).get_with_version(key, consistency=consistency)
    document = {"key": key, "value": value, "version": version_json(version)}
    if is_large(value):
        return Answer(200, await asyncio.to_thread(to_json_text, document))
    return Answer(200, to_json_text(document))


# Request-id headers a PUT's idempotency id is taken from, first found wins:
# the caller's own, then the one the shipped HAProxy and nginx configurations
# set on every request (replacing any a client sent). Not X-Request-Id: callers
# reuse a tracing id across requests, and reused here it would make a second
# PUT a "retry" of the first.
REQUEST_ID_HEADERS = ("Idempotency-Key", "X-Kvwire-Request-Id")


def request_id_of(header_values: Sequence[str | None]) -> str | None:
    """The PUT's idempotency id from the values of REQUEST_ID_HEADERS, in that order (None: absent)."""
    found = None
    for header, value in zip(REQUEST_ID_HEADERS, header_values):
        if value is not None:
            if not 1 <= len(value) <= 128:
                raise BadRequestError(f"the {header} header must be 1 to 128 characters, got {len(value)}")
            if not is_utf8(value):  # aiohttp keeps a header's bytes that are not UTF-8 as lone surrogates
                raise BadRequestError(f"the {header} header must be UTF-8 text")
            found = found or value
    return found


async def answer_put(app: web.Application, raw_path: str, body: bytes, authorization: str | None,
                     request_ids: Sequence[str | None]) -> Answer:
    key = key_of(raw_path, app[CONFIG].limits)
    config = app[CONFIG]
    # Sent as msgpack packed here (a client sends a Raw's bytes as they are): off the
    # loop for a large body, with its JSON for the answer.
    if len(body) > OFF_LOOP_BYTES:
        packed, value_text = await asyncio.to_thread(prepare_put, body, config.limits)
        value = None
    else:
        (value, packed), value_text = read_put_body(body, config.limits), None
    client = client_for(app, authorization)
    # The node says whether the key was absent, judged with the new version
    # (PUT_REPLY's created; docs/protocol.md 6.4 says how exact that is); nodes
    # that predate the field leave it None, and then counter 1 means no write
    # of this key came before.
    # A retry of this request (by HAProxy after a bridge died mid-request, or
    # by the caller) sends the same id: the nodes apply the PUT once.
    # The client library makes the id the nodes get from the caller's and the value
    # (kvwire.client.arguments.put_request_id): a repeat with another value is another write.
    version, created = await client.put_with_result(key, packed, timeout=config.timeout,
                                                    request_id=request_id_of(request_ids))
    if created is None:
        created = version.counter == 1
    if value_text is None:
        text = to_json_text({"key": key, "value": value, "version": version_json(version)})
    else:  # the same text, the value's JSON already made
        text = f'{{"key":{to_json_text(key)},"value":{value_text},"version":{to_json_text(version_json(version))}}}'
    if created:
        return Answer(201, text, {"Location": f"{PREFIX}/kv/{path_segment(key)}/"})
    return Answer(200, text)


async def answer_delete(app: web.Application, raw_path: str, authorization: str | None) -> Answer:
    key = key_of(raw_path, app[CONFIG].limits)
    version = await client_for(app, authorization).delete(key)
    return Answer(200, to_json_text({"key": key, "version": version_json(version)}))


async def get_key(request: web.Request) -> web.Response:
    headers = request.headers
    return _response(await answer_get(request.app, request.raw_path, _once(request.query, "consistency"),
                                      _once(headers, "Authorization")))


async def put_key(request: web.Request) -> web.Response:
    headers = request.headers
    # The key first, as answer_put checks it: a bad key is 400 before a body too
    # large for --max-body-bytes is read into a 413.
    key_of(request.raw_path, request.app[CONFIG].limits)
    _refuse_before_the_body(request)
    try:
        with read_body(request):  # timed by --request-timeout (handed_over.py)
            body = await request.read()
    except RequestPayloadError as exc:
        # A body aiohttp could not read (a broken chunk).
        # The rest of it is unreadable too: aiohttp is told the body is over, so
        # that it does not read on (and log the error again), and the answer closes.
        request.content.feed_eof()
        request[CLOSE_AFTER] = True
        # aiohttp's message spans lines ("400, message:\n  Can not decode..."); the answer is one.
        raise BadRequestError(f"the request body could not be read: {' '.join(str(exc).split())}") from None
    except (RuntimeError, ConnectionError):
        if request.protocol is not None and request.protocol.connected:
            raise
        # aiohttp's "Connection closed." or "Connection lost": the client left
        # mid-body. Its mistake, not the bridge's: a 400 for the debug log,
        # where no one is left to read it.
        raise BadRequestError("the client closed the connection before the whole body arrived") from None
    encoding = _once(headers, "Content-Encoding")
    if encoding is not None:
        # Off the loop: up to --max-body-bytes of inflating.
        body = await asyncio.to_thread(decoded_body, body, encoding, request.app[CONFIG].max_body_bytes)
    return _response(await answer_put(request.app, request.raw_path, body, _once(headers, "Authorization"),
                                      [_once(headers, name) for name in REQUEST_ID_HEADERS]))


async def delete_key(request: web.Request) -> web.Response:
    return _response(await answer_delete(request.app, request.raw_path, _once(request.headers, "Authorization")))


async def health(request: web.Request) -> web.Response:
    """The answering node's health report; 503 unless it has quorum, for load balancers' checks."""
    report = await client_for(request.app, _once(request.headers, "Authorization")).health()
    cluster = report.get("cluster")
    has_quorum = isinstance(cluster, dict) and cluster.get("has_quorum") is True
    headers = {"Cache-Control": "no-store"}
    if not has_quorum:
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    return _json_response(200 if has_quorum else 503, report, headers)


async def openapi(request: web.Request) -> web.Response:
    return _json_text_response(200, request.app[OPENAPI_TEXT])


# --- helpers ----------------------------------------------------------------------------


def _once(fields, name: str) -> str | None:
    """A header's (or query parameter's) value, None without one; 400 when it is given more
    than once: which one counts is not to be guessed (a proxy in front may go by the other)."""
    values = fields.getall(name, ())
    if len(values) > 1:
        raise BadRequestError(f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def client_for(app: web.Application, authorization: str | None) -> AsyncClient:
    """The node client for a request's ``Authorization: Bearer T`` header value, if any."""
    return app[CLIENTS].get(bearer_token(authorization))


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization`` header's value; None without one."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("the Authorization header must be 'Bearer <token>'")
    if not is_utf8(token):
        raise UnauthenticatedError("the bearer token must be UTF-8 text")
    return token.strip()


def _refuse_before_the_body(request: web.Request) -> None:
    """413 at once for a body whose Content-Length is over --max-body-bytes, before any of it is read;
    415 for a Content-Encoding aiohttp would not decode (it would pass the coded bytes on as they are)."""
    limit = request.app[CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        # Draining a body this large to keep the connection is not worth it.
        request[CLOSE_AFTER] = True
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    encoding = _once(request.headers, "Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in CONTENT_ENCODINGS:
        raise web.HTTPUnsupportedMediaType(headers={"Accept-Encoding": ", ".join(sorted(CONTENT_ENCODINGS))})


async def _continue_within_limit(request: web.Request) -> web.StreamResponse | None:
    """The PUT routes' ``Expect: 100-continue``: the key and the declared length
    are judged first, so a client is told 400 or 413 before it sends the body.
    An answer given here is the request's last, and aiohttp sends it without the
    middlewares: it is counted in the HTTP metrics here."""
    started = time.perf_counter()
    try:
        key_of(request.raw_path, request.app[CONFIG].limits)
        _refuse_before_the_body(request)
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed()
    except (KvwireError, web.HTTPException) as exc:
        answer = _error_response(request, exc)
        request.app[METRICS].observe(request.method, request.match_info.route.resource.canonical, answer.status,
                                     time.perf_counter() - started)
        request[COUNTED] = True  # timed here, so not counted again as an early answer
        return answer
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the answer
    return None


def path_segment(key: str) -> str:
    """``key`` as one segment of a path: percent-encoded, and the keys ``.`` and ``..``
    as ``%2E`` and ``%2E%2E``, which a client would otherwise resolve as the path's own."""
    if key.strip(".") == "":
        return "%2E" * len(key)
    return quote(key, safe="")


_BAD_PERCENT = re.compile("%(?![0-9A-Fa-f]{2})")


def key_of(raw_path: str, limits) -> str:
    """The key, percent-decoded from the raw path as UTF-8 (``/`` inside a key is ``%2F``)."""
    if "#" in raw_path:
        # A client sends no fragment; aiohttp would route on the path before the
        # '#' while the key would be read after it: refused, not guessed.
        raise BadRequestError("the request target holds a '#', which no request may carry; "
                              "a '#' in a key is sent as %23")
    path = raw_path.partition("?")[0]
    raw = (path[:-1] if path.endswith("/") else path).rpartition("/")[2]
    if _BAD_PERCENT.search(raw):
        # Read literally, "%ZZ" and "%25ZZ" would name one key.
        raise BadRequestError(f"the key {raw!r} holds a '%' not followed by two hex digits; "
                              "a '%' in a key is sent as %25")
    try:
        key = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError(f"the key {raw!r} is not percent-encoded UTF-8") from None
    try:
        return check_key(key, limits)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(str(exc)) from None


def _response(answer: Answer) -> web.Response:
    return _json_text_response(answer.status, answer.text, answer.headers)


def _json_response(status: int, document: Any, headers: dict[str, str] | None = None) -> web.Response:
    return _json_text_response(status, to_json_text(document), headers)


# On every answer: a browser must read JSON as JSON, never sniff it into HTML
# (a stored value, or a key echoed in an error, could hold markup).
NOSNIFF = {"X-Content-Type-Options": "nosniff"}


def _json_text_response(status: int, text: str, headers: dict[str, str] | None = None, *,
                        kind: type[web.Response] = web.Response) -> web.Response:
    return kind(status=status, text=text, content_type="application/json",
                headers=NOSNIFF if headers is None else {**NOSNIFF, **headers})


def status_for(error: KvwireError) -> int:
    """The HTTP status for an error of kvwire's tree, read from its kind and ``transient``."""
    for kind, status in _OWN_STATUSES:
        if isinstance(error, kind):
            return status
    return 503 if error.transient else 502


def _http_error_message(request: web.Request, error: web.HTTPException) -> str:
    # The path as sent: decoded, /kv-store/v1/kv%2Fzz/ read "no such path: /kv-store/v1/kv/zz/",
    # a path that exists (a REST probe's finding).
    path = request.rel_url.raw_path
    if error.status == 404:
        return f"no such path: {path}"
    if error.status == 405:
        allowed = error.headers.get("Allow", "")
        return f"method {request.method} is not allowed on {path}; allowed: {allowed}"
    if error.status == 413:
        return f"the request body is larger than the limit of {request.app[CONFIG].max_body_bytes} bytes"
    if error.status == 415:
        return (f"unsupported Content-Encoding {request.headers.get('Content-Encoding', '')!r}; "
                f"the bridge decodes {', '.join(sorted(CONTENT_ENCODINGS))}")
    if error.status == 417:
        return f"unknown Expect: {request.headers.get('Expect', '')!r}; only 100-continue is understood"
    return error.reason


def error_answer(exc: KvwireError, method: str, path: str, authorized: bool) -> Answer:
    """The JSON answer to an error of kvwire's tree; ``authorized``: the request had an Authorization header."""
    status = status_for(exc)
    if type(exc) is ForbiddenError and authorized:
        status = 403  # a token the nodes know, out of its role; without one, a node refused the bridge
    elif status == 401:
        return json_error_answer(401, str(exc), {"WWW-Authenticate": 'Bearer realm="kvwire"'})
    # Only a 502 says something is wrong behind the bridge: 4xx are the REST
    # client's mistakes, and 503/504 come in floods while the cluster is down
    # (its nodes log why).
    log.log(logging.WARNING if status == 502 else logging.DEBUG, "%s %s: %d %s", method, path, status, exc)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    return json_error_answer(status, str(exc), headers, maybe_applied=exc.maybe_applied)


def internal_error_answer(method: str, path: str) -> Answer:
    """Anything unexpected: logged here with its traceback (call it in an ``except``), 500 without one."""
    log.exception("%s %s failed", method, path)
    return json_error_answer(500, "internal error in the HTTP bridge; the bridge's log has the details")


@web.middleware
async def _known_hosts(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Refuse a request whose Host this bridge does not answer for (hosts.py); the fast path
    hands such requests to aiohttp, so this is the one place they are refused."""
    check = request.app[HOSTS]
    if check is not None and request.path not in ANY_HOST_PATHS:
        host = request.headers.get("Host")
        if not check.allows(host):
            return _response(json_error_answer(*check.refusal(host)))
    return await handler(request)


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except KvwireError as exc:
        return _error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(request, exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        return _response(internal_error_answer(request.method, request.path))


def _error_response(request: web.Request, exc: KvwireError | web.HTTPException) -> web.Response:
    """The JSON answer to an error of kvwire's tree, or to aiohttp's of status 400 and up."""
    if isinstance(exc, KvwireError):
        answer = error_answer(exc, request.method, request.path, "Authorization" in request.headers)
    else:
        headers = {name: value for name, value in exc.headers.items() if name.lower() not in ("content-type", "content-length")}
        answer = json_error_answer(exc.status, _http_error_message(request, exc), headers)
    return _json_text_response(answer.status, answer.text, answer.headers,
                               kind=ClosingAnswer if request.get(CLOSE_AFTER) else web.Response)


def json_error_answer(
    status: int, message: str, headers: dict[str, str] | None = None, *, maybe_applied: bool | None = None
) -> Answer:
    body: dict[str, Any] = {"error": message}
    if maybe_applied is not None:
        body["maybe_applied"] = maybe_applied
    return Answer(status, to_json_text(body), headers)
