"""kvwire's REST API: an aiohttp server in front of the cluster, using only the client library.

    config = BridgeConfig(port=8000, endpoints=("127.0.0.1:7379", "127.0.0.1:7380"))
    await serve_bridge(config, stop=stop)   # until the asyncio.Event stop is set

``kvwire bridge`` runs one alone; ``kvwire serve --http-listen`` runs one in a
node's process; the paths and statuses are in the README and in the OpenAPI
document the bridge serves at ``/kv-store/v1/openapi.json``.

The configuration is imported at once and the server (aiohttp) on first use,
so that ``kvwire serve`` and ``kvwire bridge --help`` can read the bridge's
defaults without loading aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_LISTEN_PORT, DEFAULT_MAX_BODY_BYTES, MIN_BODY_BYTES, BridgeConfig

if TYPE_CHECKING:
    from .app import create_app, status_for
    from .openapi import openapi_document
    from .server import RunningBridge, RunningMetrics, describe_os_error, serve_bridge, start_bridge, start_metrics
    from .values import UnrepresentableValueError

# Public name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "create_app": ".app",
    "status_for": ".app",
    "openapi_document": ".openapi",
    "RunningBridge": ".server",
    "describe_os_error": ".server",
    "serve_bridge": ".server",
    "start_bridge": ".server",
    "start_metrics": ".server",
    "RunningMetrics": ".server",
    "UnrepresentableValueError": ".values",
}

__all__ = [
    "DEFAULT_LISTEN_PORT",
    "DEFAULT_MAX_BODY_BYTES",
    "MIN_BODY_BYTES",
    "BridgeConfig",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
