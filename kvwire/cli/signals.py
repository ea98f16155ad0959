"""The one place kvwire's long-running commands turn SIGTERM, SIGINT and SIGHUP into a graceful stop.

The library functions they run (``kvwire.server.app.serve``,
``kvwire.http_bridge.serve_bridge``) take a ``stop`` event and leave the
process's signals alone: signals belong to the program, and the program is the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable, TypeVar

from . import early_sigint

# SIGHUP too: the terminal a node or `kvwire up` runs in was closed (an SSH session
# dropped); its default action killed every node of `up`'s process group uncleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

T = TypeVar("T")


def run_until_stop_signal(serve: Callable[[asyncio.Event], Awaitable[T]], log: logging.Logger, stopping: str) -> T:
    """Run ``serve(stop)`` on a new uvloop event loop and return its result.

    ``stop`` is set on the first SIGTERM, SIGINT or SIGHUP, after logging "received
    SIGTERM; <stopping>" on ``log``. The handlers are installed before
    ``serve`` starts, so a signal during startup also ends in a clean stop;
    so does a SIGINT that reached the entry point's handler earlier but whose
    SystemExit was swallowed on the way (kvwire.cli.early_sigint).
    """
    import uvloop

    async def main() -> T:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, _on_signal, signum, stop, log, stopping)
        if early_sigint.received:
            _on_signal(early_sigint.signum, stop, log, stopping)
        return await serve(stop)

    return uvloop.run(main())


def _on_signal(signum: int, stop: asyncio.Event, log: logging.Logger, stopping: str) -> None:
    log.info("received %s; %s", signal.Signals(signum).name, stopping)
    stop.set()
