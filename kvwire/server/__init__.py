"""The kvwire node: asyncio server, request handling and storage."""

from .app import serve
from .config import ServerConfig, SyncMode

__all__ = ["ServerConfig", "SyncMode", "serve"]
