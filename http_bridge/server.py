"""Running a bridge on the current event loop: alone, or beside a node in its process."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.registry import CollectorRegistry

from kvwire.protocol import format_endpoint

from . import fast_path
from .app import MakeClient, create_app
from .fast_path import FastPathSite
from .config import BridgeConfig
from .metrics import metrics_app

log = logging.getLogger("kvwire.http")


class RunningBridge:
    """A bridge that is listening; :meth:`close` stops it gracefully."""

    def __init__(self, config: BridgeConfig, runner: web.AppRunner, port: int) -> None:
        self.config = config
        self._runner = runner
        self.port = port  # the real one, when config.port was 0

    @property
    def url(self) -> str:
        scheme = "https" if self.config.https else "http"
        return f"{scheme}://{format_endpoint(self.config.host, self.port)}/kv-store/v1"

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish (``shutdown_timeout``), close the client."""
        await self._runner.cleanup()
        log.info("HTTP bridge on %s stopped", format_endpoint(self.config.host, self.port))

    def drop_connections(self) -> int:
        """Close every connection at once, unread and unanswered; how many."""
        return sum(site.drop_connections() for site in self._runner.sites if isinstance(site, FastPathSite))


class _OneLineBadRequests(logging.Filter):
    """aiohttp logs each malformed HTTP request (answered 400 as text) with a traceback;
    that is the client's mistake, so it becomes one debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            log.debug("malformed HTTP request answered %s: %s", error.code, str(error.message).splitlines()[0] if error.message else "")
            return False
        return True


_ONE_LINE_BAD_REQUESTS = _OneLineBadRequests()


def describe_os_error(error: OSError) -> str:
    """``Address already in use`` rather than uvloop's sentence around it."""
    if isinstance(error, socket.gaierror) or not error.errno:
        return error.strerror or str(error)  # a host name that does not resolve, say
    return os.strerror(error.errno)


async def start_bridge(config: BridgeConfig, *, registry: CollectorRegistry | None = None,
                       make_client: MakeClient | None = None) -> RunningBridge:
    """Listen on ``config.host:config.port``; raises OSError when that fails (port in use...).

    ``registry`` is what /metrics serves, the bridge's own metrics added, and
    ``make_client`` what makes its clients (see create_app).
    """
    logging.getLogger("aiohttp.server").addFilter(_ONE_LINE_BAD_REQUESTS)  # adding it again is a no-op
    access_log = logging.getLogger("kvwire.http.access") if config.access_log else None
    runner, port = await _listen(
        web.AppRunner(
            create_app(config, registry=registry, make_client=make_client), handle_signals=False, access_log=access_log,
            shutdown_timeout=config.shutdown_timeout, keepalive_timeout=config.idle_timeout,
        ),
        config.host, config.port, ssl_context=config.https_context(), fast_path=fast_path.allowed(config),
    )
    bridge = RunningBridge(config, runner, port)
    log.info("HTTP bridge listening on %s, forwarding to %s", bridge.url, ", ".join(config.endpoints))
    return bridge


class RunningMetrics:
    """A /metrics listener (``kvwire serve --metrics-listen``); :meth:`close` stops it."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_metrics(registry: CollectorRegistry, host: str, port: int) -> RunningMetrics:
    """Serve ``registry`` at ``http://host:port/metrics``; raises OSError when it can't listen."""
    runner, port = await _listen(web.AppRunner(metrics_app(registry), handle_signals=False, access_log=None), host, port)
    log.info("metrics on http://%s/metrics", format_endpoint(host, port))
    return RunningMetrics(runner, port)


async def serve_bridge(config: BridgeConfig, *, stop: asyncio.Event, registry: CollectorRegistry | None = None) -> None:
    """Serve until ``stop`` is set, then stop gracefully.

    The process's signals are its owner's to handle (``kvwire bridge`` sets
    ``stop`` on SIGTERM or SIGINT), so a bridge can run inside any program.
    """
    bridge = await start_bridge(config, registry=registry)
    try:
        await stop.wait()
    finally:
        await bridge.close()


async def _listen(runner: web.AppRunner, host: str, port: int,
                  ssl_context: ssl.SSLContext | None = None, fast_path: bool | None = None) -> tuple[web.AppRunner, int]:
    """Set ``runner`` up and listen on ``host:port`` (HTTPS with ``ssl_context``); the runner and
    the port bound (the real one for 0). A bridge's runner (``fast_path`` True or False) gets
    FastPathSite, its connections bounded and, with True, its key routes on the fast path;
    None (the metrics listener) plain aiohttp. Raises OSError, the runner cleaned up, when it can't listen."""
    await runner.setup()
    try:
        if fast_path is None:
            site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        else:
            site = FastPathSite(runner, host, port, reuse_address=True, ssl_context=ssl_context, parse_requests=fast_path)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, _bound_port(runner, port)


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return address[1]
    return requested
