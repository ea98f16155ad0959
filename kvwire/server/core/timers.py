"""Virtual timers for the core: it never sleeps, it is told the time.

The shell calls ``core.tick(now)`` at or after ``next_deadline()``; a timer
whose time has come runs its callback then. Cancelled timers are dropped
lazily, when they reach the top of the heap, or all at once when they are
most of it (as asyncio's own loop does): nearly every timer is cancelled
(each quorum read or write schedules its deadline and cancels it on success),
and with a whole write timeout's worth of them left in the heap every push
and pop walked a heap tens of thousands deep.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable

# Compact the heap when more than this many of its entries, and more than half, are cancelled.
MIN_CANCELLED_TO_COMPACT = 100


class Timer:
    __slots__ = ("when", "callback", "cancelled", "_timers")

    def __init__(self, when: float, callback: Callable[[], None], timers: Timers) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False
        self._timers: Timers | None = timers

    def cancel(self) -> None:
        # Dropping the callback matters: a cancelled timer may stay in the heap
        # until it reaches the top, and its callback (a bound method) would keep
        # the finished operation, and the cycle it forms with its timer, alive
        # for a whole write timeout: survivors of the young GC generation,
        # collected in long pauses (1.2 s seen under sustained PUTs, 2026-12-01).
        if self.cancelled:
            return  # cancelled already, or run (Timers.pop_due)
        self.cancelled = True
        self.callback = None
        timers, self._timers = self._timers, None
        timers._cancelled_one()


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._cancelled = 0  # cancelled timers still in the heap

    @property
    def entries(self) -> int:
        """Timers in the heap, cancelled ones not yet dropped included."""
        return len(self._heap)

    def schedule(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback, self)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def pop_due(self, until: float) -> Timer | None:
        """The earliest live timer due at or before ``until``, taken off the heap; or None."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            timer = heapq.heappop(heap)[2]
            if not timer.cancelled:
                timer.cancelled = True  # a cancel() from now on is a no-op
                timer._timers = None
                return timer
            self._cancelled -= 1
        return None

    def run_due(self, now: float) -> None:
        while (timer := self.pop_due(now)) is not None:
            callback, timer.callback = timer.callback, None
            callback()

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled > MIN_CANCELLED_TO_COMPACT and 2 * self._cancelled > len(self._heap):
            # Entries are (when, sequence, timer), all distinct: the order they
            # come off the heap is the same whether or not it was compacted.
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
