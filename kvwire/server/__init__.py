"""The kvwire node: the pure core (``kvwire.server.core``) and its asyncio shell.

``serve`` is loaded on first use, so that importing the core (as the
simulator does) never loads asyncio's shell, SQLite or aiosqlite.
"""

from typing import Any

from .config import ServerConfig, SyncMode

__all__ = ["ServerConfig", "SyncMode", "serve"]


def __getattr__(name: str) -> Any:
    if name == "serve":
        from .app import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
