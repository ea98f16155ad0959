"""A majority round: ask enough peers for their copy of a key, ask others when some fail.

Used by writes (LOOKUP: tags only, from memory) and quorum reads (FETCH:
committed values). It asks just the number of usable peers needed, rotating
which, and asks another in place of each one that fails. A peer that hangs
(SIGSTOP) neither fails nor answers and looks UP until the failure timeout, so
when the answers are not all in after half a heartbeat interval the remaining
peers are asked too (a hedged request), and the first answers win.
"""

from __future__ import annotations

from typing import Callable

from ...protocol.messages import Fetch, FetchReply, Lookup, LookupReply
from .keydir import Copy
from .services import CoreServices


Answers = list[tuple[str | None, Copy]]


class MajorityRound:
    __slots__ = (
        "_asked", "_candidates", "_core", "_deadline", "_done", "_fields", "_key", "_message_type", "_needed",
        "_on_done", "_reply_type", "_timers", "answers", "reachable", "request_versions", "requests",
    )

    def __init__(
        self,
        core: CoreServices,
        message_type: type,
        key: str,
        deadline: float,
        on_done: Callable[[Answers | None], None],
        *,
        request: str | None = None,
        everyone: bool = False,
        repair: bool = False,
    ) -> None:
        """``repair``: FETCH as anti-entropy does, which a joining peer answers too."""
        self._core = core
        # This node's tag floor goes with the question, and the replica adopts it
        # before answering: a tag minted here above a floor no majority member has
        # adopted could be left on this node alone (its commit stalled, say) while
        # later writes elsewhere mint below it, and surface above them.
        floor = core.tombstones.floor_target or None
        if core.mutant == "keep-floor-to-self":
            floor = None
        # LOOKUP only: a PUT's request id, and the versions answers say it was applied
        # at, each with whether it is tentative (applied.py).
        if message_type is Lookup:
            self._fields = (key, request, floor)
        else:
            self._fields = (key, floor, True) if repair else (key, floor)
        self.request_versions: list = []
        # FETCH only: version -> the request id that wrote it, where an answer knew.
        self.requests: dict = {}
        self._message_type = message_type
        self._reply_type = FetchReply if message_type is Fetch else LookupReply
        self._key = key
        self._deadline = deadline
        self._on_done = on_done
        self.answers: Answers = []
        # A joining node asks every peer, not a majority (NodeCore.joining).
        self._needed = len(core.peer_ids) if everyone else core.quorum - 1
        self._asked: dict[str, int] = {}
        self._done = False
        self._timers: list = []
        candidates = core.usable_peers()
        if candidates:
            start = core.next_rotation() % len(candidates)
            candidates = candidates[start:] + candidates[:start]
        self._candidates = candidates
        self.reachable = len(candidates) + 1

    def start(self) -> None:
        core = self._core
        core.stats.quorum_rounds += 1
        if self._needed == 0:
            self._finish(True)
            return
        if len(self._candidates) < self._needed:
            self._finish(False)
            return
        self._timers.append(core.timers.schedule(core.now + core.config.heartbeat_interval / 2, self._hedge))
        self._timers.append(core.timers.schedule(self._deadline, self._expire))
        self._ask_more()

    def _ask_more(self) -> None:
        while not self._done and self._candidates and len(self._asked) < self._needed:
            self._ask(self._candidates.pop(0))
        if not self._done and not self._asked:
            self._finish(False)

    def _ask(self, peer: str) -> None:
        request_id = self._core.ask(peer, self._message_type, self._fields, lambda reply, peer=peer: self._answered(peer, reply))
        if request_id is not None:
            self._asked[peer] = request_id

    def _answered(self, peer: str, reply: object) -> None:
        if self._done or self._asked.pop(peer, None) is None:
            return
        if self._core.now >= self._deadline:
            # A reply read only after the deadline (this node was paused, say)
            # ends the round as the deadline would have: an operation never
            # acts past its deadline, which tombstone collection relies on.
            self._expire()
            return
        if isinstance(reply, self._reply_type):
            self._core.adopt_floor(reply.floor)
            if getattr(reply, "request_version", None) is not None:
                self.request_versions.append((reply.request_version, bool(reply.request_tentative)))
            if getattr(reply, "request", None) is not None:
                self.requests[reply.version] = reply.request
            self.answers.append((peer, Copy(reply.version, reply.deleted, getattr(reply, "value", None))))
            self._needed -= 1
            if self._needed == 0:
                self._finish(True)
                return
        self._ask_more()

    def _hedge(self) -> None:
        if self._done or not self._candidates:
            return
        self._core.stats.hedged_requests += 1
        while self._candidates:
            self._ask(self._candidates.pop(0))

    def _expire(self) -> None:
        if not self._done:
            self._finish(False)

    def _finish(self, ok: bool) -> None:
        self._done = True
        for timer in self._timers:
            timer.cancel()
        for request_id in self._asked.values():
            self._core.forget(request_id)
        self._asked.clear()
        if not ok:
            self.reachable = len(self.answers) + 1
        # Let go of the operation that owns this round: the two would otherwise
        # form a cycle that only the garbage collector frees (see Timer.cancel).
        on_done, self._on_done = self._on_done, None
        on_done(self.answers if ok else None)
