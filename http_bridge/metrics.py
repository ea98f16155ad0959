"""``/metrics``: the bridge's own HTTP metrics, and a node's when it runs in the same process.

The bridge answers a few thousand requests a second at most (README
"Performance"), so prometheus-client's own Counter and Histogram, at 1-2 µs an
update, cost it nothing worth measuring; a node counts with plain integers
instead (kvwire/server/tally.py).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.registry import CollectorRegistry

METRICS_PATH = "/metrics"
# The classic text format, which every Prometheus reads (Debian 12's is 2.42);
# newer prometheus-client releases label the same bytes version=1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REGISTRY = web.AppKey("registry", CollectorRegistry)

# No ``*_created`` series beside each counter and histogram: the node's own
# metrics (kvwire.server.metrics) have none, and docs/operations.md lists what
# is served. A process-wide setting of prometheus-client's; kvwire is its only user.
disable_created_metrics()
METRICS = web.AppKey("http_metrics", object)  # the app's HttpMetrics, for the fast path
# A path no route matched (404s, probes): one label value, so scanners can't grow the series.
UNMATCHED = "unmatched"
# Set on a request the middleware counted; an answer without it was given before the
# middlewares ran (json_refusals.py counts those).
# A typed key where aiohttp has them (3.12 on; a plain string draws a warning there).
COUNTED = web.RequestKey("kvwire_counted", bool) if hasattr(web, "RequestKey") else "kvwire.counted"
# REST latency: a cached GET takes about 1 ms, a quorum PUT a few; 10 s is past any --timeout in use.
HTTP_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "kvwire_http_requests", "REST requests answered, by method, route and status.",
            ["method", "route", "status"], registry=registry,
        )
        self.duration = Histogram(
            "kvwire_http_request_duration_seconds", "Time to answer a REST request, by method and route.",
            ["method", "route"], buckets=HTTP_BOUNDS, registry=registry,
        )
        # The listener's bounds (bounds.py): what they refused, and what is open.
        self.connections_refused = Counter(
            "kvwire_http_connections_refused", "Connections answered 503 and closed at --max-connections.",
            registry=registry,
        )
        self.requests_timed_out = Counter(
            "kvwire_http_requests_timed_out", "Requests answered 408 for not arriving whole within --request-timeout.",
            registry=registry,
        )
        self.open_connections = Gauge(
            "kvwire_http_open_connections", "Connections open, those aiohttp serves included.", registry=registry,
        )
        self.connections_evicted = Counter(
            "kvwire_http_connections_evicted", "Connections closed (answered 503, or dropped) for holding the "
            "most of --max-buffered-bytes when all held more.", registry=registry,
        )
        self.buffered_bytes = Gauge(
            "kvwire_http_buffered_bytes", "Bytes the connections hold of requests still arriving, and of "
            "answers left unread, against --max-buffered-bytes.", registry=registry,
        )
        # Label sets seen -> their children: ``labels()`` validates and locks on
        # every call, about 3% of the bridge's CPU per PUT (py-spy; the metrics'
        # whole cost, updates included, was about 6%).
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request; ``route`` is its route's canonical path, or UNMATCHED."""
        self._count(method, route, status)
        timer = self._timed.get((method, route))
        if timer is None:
            timer = self._timed[method, route] = self.duration.labels(method, route)
        timer.observe(seconds)

    def count_early_answer(self, request: web.BaseRequest, status: int) -> None:
        """An answer aiohttp gave before the middlewares ran: a request its parser refused
        (its method is then aiohttp's "UNKNOWN"), or an Expect header's refusal. Counted,
        not timed: aiohttp has no start time for it."""
        if request.get(COUNTED):
            return
        match_info = getattr(request, "_match_info", None)  # None when nothing was routed
        resource = match_info.route.resource if match_info is not None else None
        route = resource.canonical if resource is not None else UNMATCHED
        self._count(request.method, route, status)

    def _count(self, method: str, route: str, status: int) -> None:
        counter = self._counted.get((method, route, status))
        if counter is None:
            counter = self._counted[method, route, status] = self.requests.labels(method, route, str(status))
        counter.inc()

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        request[COUNTED] = True
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else UNMATCHED
            self.observe(request.method, route, status, time.perf_counter() - started)


def add_metrics(app: web.Application, registry: CollectorRegistry | None) -> web.Application:
    """Count the app's requests into ``registry`` (a new one if None) and serve it at /metrics."""
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    app[REGISTRY] = registry
    app[METRICS] = metrics = HttpMetrics(registry)
    app.middlewares.insert(0, metrics.middleware)  # outermost: sees every final status
    app.router.add_get(METRICS_PATH, _metrics)
    return app


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """An app serving nothing but ``registry`` at /metrics (``kvwire serve --metrics-listen``)."""
    app = web.Application()
    app[REGISTRY] = registry
    app.router.add_get(METRICS_PATH, _metrics)
    return app


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
