"""Child processes run in the foreground as a group: output prefixed, stopped together.

What ``kvwire up`` needs on top of :class:`kvwire.testing.ChildProcess`:
start a few of them, copy each one's output to our stderr line by line behind
its name (so three nodes' logs stay readable in one terminal), notice when
one exits, and stop them all with SIGTERM at once, falling back to SIGKILL
for any that outlive the grace period.
"""

from __future__ import annotations

import errno
import signal
import socket
import sys
import threading
import time
from typing import IO, Sequence

from ..testing import ChildProcess, LineCopy

# Exit statuses of a child that was asked to stop: 0 after a clean shutdown;
# 130 or death by the signal itself when the signal came before the node had
# installed its handlers (Ctrl-C in a terminal reaches the whole process group).
STOPPED_STATUSES = frozenset({0, 130, -signal.SIGINT, -signal.SIGTERM})


class Supervisor:
    """Children started together and stopped together; their output goes to ``output``."""

    def __init__(self, children: Sequence[ChildProcess], *, output: IO[str] | None = None) -> None:
        self.children = list(children)
        self._output = output if output is not None else sys.stderr
        self._width = max((len(child.name) for child in self.children), default=0)

    def start(self) -> None:
        lock = threading.Lock()  # one line at a time, never two interleaved
        for child in self.children:
            child.start(copy_to=LineCopy(self._output, f"{child.name:<{self._width}} | ", lock))

    def exited(self) -> list[ChildProcess]:
        """Children that were started and are no longer running."""
        return [child for child in self.children if child.returncode is not None]

    def stop(self, grace: float) -> list[ChildProcess]:
        """SIGTERM every child, wait up to ``grace`` seconds in all, SIGKILL the rest.

        Returns the children that had to be killed.
        """
        for child in self.children:
            child.request_stop()
        deadline = time.monotonic() + grace
        return [child for child in self.children if child.stop(max(0.0, deadline - time.monotonic()))]


def bind_refusal(host: str, port: int) -> str | None:
    """Why ``host:port`` can't be bound right now, or None if it can.

    Binds as a node does (SO_REUSEADDR), so a port left in TIME_WAIT by a
    node just stopped counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return None
