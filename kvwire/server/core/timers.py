"""Virtual timers for the core: it never sleeps, it is told the time.

The shell calls ``core.tick(now)`` at or after ``next_deadline()``; a timer
whose time has come runs its callback then. Cancelled timers are dropped
lazily when they reach the top of the heap.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        # Dropping the callback matters: a cancelled timer stays in the heap until
        # it reaches the top, and its callback (a bound method) would keep the
        # finished operation, and the cycle it forms with its timer, alive for a
        # whole write timeout: survivors of the young GC generation, collected in
        # long pauses (1.2 s seen under sustained PUTs, 2026-12-01).
        self.cancelled = True
        self.callback = None


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()

    def schedule(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, until: float) -> Timer | None:
        """The earliest live timer due at or before ``until``, taken off the heap; or None."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            timer = heapq.heappop(heap)[2]
            if not timer.cancelled:
                timer.cancelled = True
                return timer
        return None

    def run_due(self, now: float) -> None:
        while (timer := self.pop_due(now)) is not None:
            callback, timer.callback = timer.callback, None
            callback()
