"""Back-pressure for one connection, kept apart from the protocol handler as uvicorn does.

Reading stops while the transport's write buffer is over its high-water mark
(``pause_writing``), or while too many requests wait (on storage or on peers),
or while the requests waiting hold too many bytes between them; it resumes
when all three have drained. A client that pipelines faster than the
disk can commit is thereby slowed by TCP itself instead of by our memory.

Stopping the reads is not enough on its own: one read may hold thousands of
requests. The connection therefore also stops handling what it has read
once ``inflight`` reaches ``max_inflight``, or ``inflight_bytes`` reaches
``max_inflight_bytes`` (connection.py's backlog), and goes on when ``may_go_on``.

The bytes are the requests' frames, which a waiting request keeps (a PUT's
value goes on to its peers and to disk from them). Without a byte budget the
count alone would let one client pipelining PUTs of the largest value make
the node hold ``max_inflight`` megabytes. A client's waiting GET or DELETE
is charged its frame plus the largest value (connection.py): the value it
may bring in from a peer or the disk is not known when it starts, and
counted by its 20-byte frame alone, a client pipelining GETs of large values
could make the node hold ``max_inflight`` of them. A request always starts
when none waits, so a frame larger than the budget is slow, not refused.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    def __init__(self, transport: asyncio.Transport, max_inflight: int, max_inflight_bytes: int) -> None:
        self._transport = transport
        self.max_inflight = max_inflight
        self._resume_below = max(1, max_inflight // 2)
        self.inflight = 0
        self.max_inflight_bytes = max_inflight_bytes
        self._resume_below_bytes = max(1, max_inflight_bytes // 2)
        self.inflight_bytes = 0
        self._writing_paused = False
        self._reading_paused = False
        self._held = False
        self._turn_held = False

    @property
    def may_go_on(self) -> bool:
        """Whether reading, and the requests read but held back, may go on: the
        replies written so far are taken, and the requests waiting are below half the
        cap in number and in bytes."""
        return (not self._writing_paused and self.inflight < self._resume_below
                and self.inflight_bytes < self._resume_below_bytes)

    @property
    def at_cap(self) -> bool:
        """Whether no more requests may start now (connection.py inlines this in its loop)."""
        return self.inflight >= self.max_inflight or self.inflight_bytes >= self.max_inflight_bytes

    @property
    def reading_paused(self) -> bool:
        """Whether this side stopped reading: a frame can't arrive meanwhile, and that is not the client's doing."""
        return self._reading_paused

    def request_started(self, charged: int) -> None:
        """``charged``: the bytes the request holds while it waits (its frame, or more)."""
        self.inflight += 1
        self.inflight_bytes += charged
        if self.at_cap:
            # The connection's loop starts no more of what it has read (it
            # checks the cap itself); this stops the next read from coming in too.
            self._pause_reading()

    def request_finished(self, charged: int) -> None:
        self.inflight -= 1
        self.inflight_bytes -= charged
        if self.may_go_on:
            self._resume_reading()

    def hold(self) -> None:
        """Stop reading while requests already read wait to be handled (a backlog)."""
        self._held = True
        self._pause_reading()

    def release(self) -> None:
        self._held = False
        if self.may_go_on:
            self._resume_reading()

    def pause_for_a_turn(self) -> None:
        """Stop reading until ``resume_after_a_turn``, where nothing else has stopped it: a
        connection that read frames costly to read lets the event loop run the others first."""
        if not self._reading_paused:
            self._turn_held = True
            self._pause_reading()

    def resume_after_a_turn(self) -> None:
        """Read again if only ``pause_for_a_turn`` stopped it, and no cause has come since."""
        if self._turn_held:
            self._turn_held = False
            if not self._writing_paused and not self.at_cap:
                self._resume_reading()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.may_go_on:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self._transport.is_closing():
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._held and not self._turn_held and not self._transport.is_closing():
            self._reading_paused = False
            self._transport.resume_reading()
