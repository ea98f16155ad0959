"""What one listener's clients can make the bridge hold: connections, and the time each keeps one.

A node bounds its own (``--max-connections``, ``--hello-timeout``,
``--frame-timeout``); the bridge in front of it had aiohttp's defaults, an hour
of keep-alive and no limit on connections or on the time a request takes to
arrive, so a client could hold sockets and memory for as long as it trickled
bytes. Here, as on a node, one sweep a few times a second looks at every
connection rather than a timer each:

- past ``max_connections`` open (those aiohttp serves included), a new one is
  answered 503 and closed (a lingering close, linger.py);
- a connection with no request for ``idle_timeout`` is closed;
- a request must have its head whole within ``request_timeout`` and its body
  never silent for as long, or it is answered 408 and the connection closed
  (the fast path's own check, or a watch's on aiohttp's connections);
- a connection whose client reads none of its answers for ``idle_timeout`` (the
  socket's buffer full all that time) is dropped: a REST probe held every one
  of ``max_connections`` that way, pipelining GETs it never read, and every
  other client was answered 503 (nginx's ``send_timeout``).

A connection handed to aiohttp is counted until it closes; aiohttp closes it
after ``idle_timeout`` without a request (its ``keepalive_timeout``), and the
sweep applies ``request_timeout`` to it through its watch (handed_over.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from kvwire.log_limit import LogLimit

from .handed_over import HandedOver
from .linger import Lingering

# The sweep runs at a quarter of the shorter timeout, within these bounds: a
# connection is closed at most a quarter late, and an idle bridge wakes at most
# once a second.
MIN_SWEEP_SECONDS = 0.05
MAX_SWEEP_SECONDS = 1.0

log = logging.getLogger("kvwire.http")


class Bounds:
    """The connections of one listener, counted and swept.

    ``connections()`` gives the fast path's own connections, each with a
    ``check_deadlines(now)``; those handed to aiohttp are kept here, watched,
    until they close, and ``time_out(watch, what)`` answers one too slow.
    """

    def __init__(self, max_connections: int, idle_timeout: float, request_timeout: float,
                 connections: Callable[[], Iterable], time_out: Callable[[HandedOver, str], None],
                 log_limit: LogLimit | None = None) -> None:
        self.max_connections = max_connections
        # Lines anyone who can connect can cause (the HTTPS listener's), a few at a time;
        # each sweep logs the count of those held back, as a node's second does.
        self.log_limit = log_limit or LogLimit(log)
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self._connections = connections
        self._time_out = time_out
        self._handed_over: set[HandedOver] = set()
        self.lingering = Lingering()
        self._sweep_every = min(MAX_SWEEP_SECONDS, max(MIN_SWEEP_SECONDS, min(idle_timeout, request_timeout) / 4))
        self._timer: asyncio.TimerHandle | None = None

    def abort_handed_over(self) -> int:
        """Close every connection handed to aiohttp at once, unread; how many."""
        watches, self._handed_over = list(self._handed_over), set()
        for watch in watches:
            watch.transport.abort()
        return len(watches)

    def open(self, fast_path_connections: int) -> int:
        """Connections open: the fast path's, and those handed to aiohttp not yet closed."""
        self._drop_closed()
        return fast_path_connections + len(self._handed_over)

    def full(self, fast_path_connections: int) -> bool:
        """Whether a new connection would be one too many."""
        return self.open(fast_path_connections) >= self.max_connections

    def drop_if_it_reads_nothing(self, now: float, paused_since: float, transport: asyncio.BaseTransport) -> bool:
        """Drop ``transport`` (and say so) if its client has read none of its answers since
        ``paused_since`` for ``idle_timeout``; whether it did. Aborted: a close would wait
        for answers the client does not read."""
        if now - paused_since < self.idle_timeout:
            return False
        log.info("dropping a connection: its client read none of its answers for %g s (--idle-timeout)",
                 self.idle_timeout)
        transport.abort()
        return True

    def handed_over(self, watch: HandedOver) -> None:
        self._handed_over.add(watch)

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.log_limit.flush()
            now = loop.time()
            self._drop_closed()
            for connection in list(self._connections()):
                connection.check_deadlines(now)
            for watch in list(self._handed_over):
                if watch.paused_since is not None and self.drop_if_it_reads_nothing(now, watch.paused_since, watch.transport):
                    continue
                what = watch.overdue(now, self.request_timeout)
                if what is not None:
                    self._time_out(watch, what)
        finally:  # one connection's failure must not end every deadline
            self._timer = loop.call_later(self._sweep_every, self._sweep)

    def _drop_closed(self) -> None:
        if any(watch.transport.is_closing() for watch in self._handed_over):
            self._handed_over = {watch for watch in self._handed_over if not watch.transport.is_closing()}
