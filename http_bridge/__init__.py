"""kvwire's REST API: an aiohttp server in front of the cluster, using only the client library.

    config = BridgeConfig(port=8000, endpoints=("127.0.0.1:7379", "127.0.0.1:7380"))
    await serve_bridge(config)          # until SIGTERM or SIGINT

``kvwire bridge`` runs one alone; ``kvwire serve --http-listen`` runs one in a
node's process; the paths and statuses are in the README and in the OpenAPI
document the bridge serves at ``/kv-store/v1/openapi.json``.
"""

from .app import create_app, status_for
from .config import BridgeConfig
from .openapi import openapi_document
from .server import RunningBridge, serve_bridge, start_bridge

__all__ = ["BridgeConfig", "RunningBridge", "create_app", "openapi_document", "serve_bridge", "start_bridge", "status_for"]
