"""Back-pressure for one connection, kept apart from the protocol handler as uvicorn does.

Reading stops while the transport's write buffer is over its high-water mark
(``pause_writing``) or while too many requests wait (on storage or on peers);
it resumes when both have drained. A client that pipelines faster than the
disk can commit is thereby slowed by TCP itself instead of by our memory.

Stopping the reads is not enough on its own: one read may hold thousands of
requests. The connection therefore also stops handling what it has read
once ``inflight`` reaches ``max_inflight`` (connection.py's backlog), and goes
on when ``may_go_on``.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    def __init__(self, transport: asyncio.Transport, max_inflight: int) -> None:
        self._transport = transport
        self.max_inflight = max_inflight
        self._resume_below = max(1, max_inflight // 2)
        self.inflight = 0
        self._writing_paused = False
        self._reading_paused = False
        self._held = False

    @property
    def may_go_on(self) -> bool:
        """Whether reading, and the requests read but held back, may go on: the
        replies written so far are taken, and the requests waiting are below half the cap."""
        return not self._writing_paused and self.inflight < self._resume_below

    @property
    def reading_paused(self) -> bool:
        """Whether this side stopped reading: a frame can't arrive meanwhile, and that is not the client's doing."""
        return self._reading_paused

    def request_started(self) -> None:
        self.inflight += 1
        if self.inflight >= self.max_inflight:
            self._pause_reading()

    def request_finished(self) -> None:
        self.inflight -= 1
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
        if self._reading_paused and not self._held and not self._transport.is_closing():
            self._reading_paused = False
            self._transport.resume_reading()
