"""The cluster page: every node's health at a glance, and a small key browser.

``GET /kv-store/v1/ui/`` serves a page (plain HTML, CSS and JavaScript from
``static/``, shipped in the package: no build step, nothing fetched from
elsewhere) that polls ``GET /kv-store/v1/ui/cluster`` every 500 ms. That asks
every node of ``config.endpoints`` for HEALTH at once, each through a client
of its own that never fails over (a node is shown as itself or as DOWN, never
as another node answering for it), and answers::

    {"endpoints": ["127.0.0.1:7379", ...], "timeout_s": 0.4,
     "nodes": [{"endpoint": "127.0.0.1:7379", "node_id": "n1", "reachable": true,
                "latency_ms": 0.8, "health": {...the node's HEALTH report...}},
               {"endpoint": "127.0.0.1:7380", "node_id": "n2", "reachable": false,
                "error": "..."}, ...]}

always 200 (an unreachable node is news, not an error of this request). The
``node_id`` of an unreachable node is the one a reachable peer lists at that
address, or null. The key browser uses the REST API itself (``/kv/{key}/``).

This module imports nothing from ``app``: ``create_app`` calls
:func:`add_ui_routes`, and errors (404, 405) become JSON in its middleware.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from kvwire.client import AsyncClient, KvwireError, RetryPolicy
from kvwire.protocol import parse_host_port

from .config import BridgeConfig

UI_PATH = "/kv-store/v1/ui"
CLUSTER_PATH = f"{UI_PATH}/cluster"
STATIC_DIR = Path(__file__).with_name("static")
# Each file of static/ and its Content-Type; nothing else under UI_PATH is served.
STATIC_FILES = {
    "index.html": "text/html",
    "ui.css": "text/css",
    "ui.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
# The page polls every 500 ms; a node that has not answered HEALTH within this
# is shown DOWN for that poll. A node answers in well under a millisecond.
HEALTH_TIMEOUT = 0.4
# The page's own files: same-origin scripts, styles and requests only.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

UI_CLIENTS = web.AppKey("ui_clients", dict)
UI_FILES = web.AppKey("ui_files", dict)


def add_ui_routes(app: web.Application, config: BridgeConfig) -> web.Application:
    """Serve the cluster page and its JSON under ``/kv-store/v1/ui``; its clients open and close with ``app``."""
    try:
        app[UI_FILES] = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}
    except FileNotFoundError as exc:
        raise RuntimeError(
            f"the cluster page's file {exc.filename} is missing: kvwire was installed without"
            " the http_bridge/static/ package data (setup.py package_data)"
        ) from None
    app.cleanup_ctx.append(_health_clients(config))
    app.router.add_get(UI_PATH, _redirect_to_page)
    app.router.add_get(f"{UI_PATH}/", _page)
    for path in (CLUSTER_PATH, f"{CLUSTER_PATH}/"):
        app.router.add_get(path, cluster)
    for name in STATIC_FILES:
        if name != "index.html":
            app.router.add_get(f"{UI_PATH}/{name}", _static(name))
    return app


def _health_clients(config: BridgeConfig):
    async def context(app: web.Application):
        # One client per node, kept for the app's life: its connection is reused
        # poll after poll, and one attempt only, so a node answers for itself.
        # With one endpoint the cooldown never holds a call back; it only spaces
        # the client's "failed" log line, once a minute while a node is down.
        retry = RetryPolicy(attempts=1, attempt_timeout=HEALTH_TIMEOUT, cooldown=60.0)
        nodes_context = config.nodes_context()
        clients = {
            endpoint: AsyncClient(
                endpoint, timeout=HEALTH_TIMEOUT, cluster=config.cluster_id, retry=retry, limits=config.limits,
                tls=nodes_context,
            )
            for endpoint in config.endpoints
        }
        app[UI_CLIENTS] = clients
        try:
            yield
        finally:
            await asyncio.gather(*(client.close() for client in clients.values()))

    return context


# --- handlers ----------------------------------------------------------------------------


async def cluster(request: web.Request) -> web.Response:
    """Every node's HEALTH, asked concurrently, or why it could not be had."""
    clients: dict[str, AsyncClient] = request.app[UI_CLIENTS]
    nodes = list(await asyncio.gather(*(_node_health(endpoint, client) for endpoint, client in clients.items())))
    _name_unreachable_nodes(nodes)
    document = {"endpoints": list(clients), "timeout_s": HEALTH_TIMEOUT, "nodes": nodes}
    return web.Response(
        text=json.dumps(_displayable(document), ensure_ascii=False, separators=(",", ":")),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **SECURITY_HEADERS},
    )


def _displayable(value: Any) -> Any:
    """``value`` as JSON can carry it, for showing: a HEALTH report is read, not stored,
    so what JSON cannot hold is shown as text (NaN as "nan", bytes as hex) rather than
    refused, which made the whole page 406 and every node UNKNOWN for one node's report."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {name if isinstance(name, str) else repr(name): _displayable(item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_displayable(item) for item in value]
    return value


async def _node_health(endpoint: str, client: AsyncClient) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        health = await client.health()
    except KvwireError as exc:
        return {"endpoint": endpoint, "node_id": None, "reachable": False, "error": str(exc)}
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    node_id = health.get("node_id") if isinstance(health, dict) else None
    return {
        "endpoint": endpoint,
        "node_id": node_id if isinstance(node_id, str) else None,
        "reachable": True,
        "latency_ms": latency_ms,
        "health": health,
    }


def _name_unreachable_nodes(nodes: list[dict[str, Any]]) -> None:
    """Give an unreachable node the id its reachable peers list at its address; failing
    that (the bridge's endpoints spelled otherwise than the peers' addresses: a host
    name for an IP), the one member id left over, when exactly one node is left unnamed."""
    known: dict[str, str] = {}
    for node in nodes:
        if not node["reachable"]:
            continue
        peers = node["health"].get("cluster", {}) if isinstance(node["health"], dict) else {}
        for peer in peers.get("nodes", []) if isinstance(peers, dict) else []:
            if isinstance(peer, dict) and isinstance(peer.get("url"), str) and isinstance(peer.get("node_id"), str):
                known.setdefault(peer["url"], peer["node_id"])
    for node in nodes:
        if not node["reachable"]:
            node["node_id"] = known.get(node["endpoint"])
    unnamed = [node for node in nodes if node["node_id"] is None]
    named = {node["node_id"] for node in nodes}
    left_over = {url: node_id for url, node_id in known.items() if node_id not in named}
    if len(unnamed) == 1 and len(left_over) == 1 and not unnamed[0]["reachable"]:
        # Only a spelling of that member's address: a dead endpoint of no member's (a
        # stale entry, a typo) named a live member DOWN.
        (url, node_id), = left_over.items()
        if _may_be_spelled_as(url, unnamed[0]["endpoint"]):
            unnamed[0]["node_id"] = node_id


def _may_be_spelled_as(member: str, endpoint: str) -> bool:
    """Whether ``endpoint`` may be ``member``'s address spelled otherwise: the same port,
    and, where both hosts are IP addresses (127.3 is 127.0.0.3), the same address. Host
    names are not looked up: this answers a poll, and a lookup could take seconds."""
    try:
        (member_host, member_port), (host, port) = parse_host_port(member), parse_host_port(endpoint)
    except ValueError:
        return False
    if member_port != port:
        return False
    member_address, address = _ip_address(member_host), _ip_address(host)
    return member_address is None or address is None or member_address == address


def _ip_address(host: str) -> bytes | None:
    """``host`` as the bytes of an IP address, if it is one in any spelling inet_aton takes."""
    try:
        return socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        pass
    try:
        return socket.inet_aton(host)
    except OSError:
        return None


async def _redirect_to_page(request: web.Request) -> web.Response:
    # The page's files are relative to it, so it must be read from the folder's URL.
    # Relative, as the page's own requests are, so that a proxy's path prefix stays.
    # As it came (raw): the decoded form turned %23 into a fragment, %0d%0a into nothing.
    query = f"?{request.rel_url.raw_query_string}" if request.rel_url.raw_query_string else ""
    raise web.HTTPPermanentRedirect(f"{UI_PATH.rsplit('/', 1)[-1]}/{query}")


async def _page(request: web.Request) -> web.Response:
    return _file_response(request, "index.html")


def _static(name: str):
    async def handler(request: web.Request) -> web.Response:
        return _file_response(request, name)

    return handler


def _file_response(request: web.Request, name: str) -> web.Response:
    return web.Response(
        body=request.app[UI_FILES][name],
        content_type=STATIC_FILES[name],
        charset="utf-8",
        headers={"Cache-Control": "no-cache", **SECURITY_HEADERS},
    )
