"""A warning when the node's event loop was held up.

While the loop is held (the process not scheduled, a long pause of the garbage
collector, blocking work on the loop's thread), the node answers nothing: not
its clients, not its peers' heartbeats, which mark it DOWN after
``--failure-timeout``. A timer that should run every ``interval`` and runs
late says so, and by how much, so that a stall seen from outside can be told
from a slow disk (``kvwire.storage``'s slow-commit warning) or the network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .clock import node_clock

log = logging.getLogger("kvwire.node")

CHECK_INTERVAL = 0.1


class StallWatch:
    """``threshold``: the lateness worth a warning; the node passes half its
    --failure-timeout, a stall halfway to its peers marking it DOWN."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float, *, interval: float = CHECK_INTERVAL,
                 clock: Callable[[], float] = node_clock, on_check: Callable[[float], None] | None = None) -> None:
        self._loop = loop
        # Called at every check with how late it ran (the node's look at its disk, which
        # does not hold the time its whole process was held against the disk).
        self._on_check = on_check
        self._clock = clock  # the node's: the loop's own stands still while the machine is suspended
        self._interval = interval
        self._threshold = threshold
        self._due = clock() + interval
        self._timer = loop.call_later(interval, self._check)

    def _check(self) -> None:
        now = self._clock()
        late = now - self._due
        if late >= self._threshold:
            log.warning("event loop stalled: a check due every %d ms ran %d ms late; the node answered nothing "
                        "meanwhile (the process was not scheduled, a long garbage collection, or blocking work)",
                        self._interval * 1000, round(late * 1000),
                        extra={"event": "loop_stalled", "late_ms": round(late * 1000)})
        if self._on_check is not None:
            self._on_check(late)
        self._due = now + self._interval
        self._timer = self._loop.call_later(self._interval, self._check)

    def stop(self) -> None:
        self._timer.cancel()
