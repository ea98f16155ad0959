"""The one replicate path: send a version of a key to peers, with one failure policy.

Writes, DELETE's conditional tombstone, a quorum read's write-back and hint
replay all go through ``Fanout``. A peer that cannot take the version now (not
usable, the request failed, or no answer by the deadline) gets a durable hint,
so it is delivered when the peer is back; its late reply, if any, is ignored.
"""

from __future__ import annotations

from typing import Any, Callable

from ...protocol.messages import Replicate, ReplicateReply, Version
from .services import CoreServices


OK = "ok"  # the peer holds this version, or (unconditional, not exact) a newer one
REFUSED = "refused"  # a conditional or exact REPLICATE the peer did not apply
FAILED = "failed"  # no answer: hinted


class Fanout:
    def __init__(
        self,
        core: CoreServices,
        key: str,
        version: Version,
        deleted: bool,
        value: Any,
        peers: list[str],
        deadline: float,
        on_outcome: Callable[[str, str], None],
        *,
        expect: Version | None = None,
        hint: bool = True,
        request: str | None = None,
        exact: bool = False,
        read: bool = False,
    ) -> None:
        """``exact``: a peer counts only if it applied this version or holds exactly
        it, not a newer one (a one-round-trip PUT's tag, ``one_trip.py``); the
        peers' replies are kept in ``replies`` for the caller to read."""
        self._core = core
        self.key = key
        self.version = version
        self._expect = expect
        self._exact = exact
        self.replies: dict[str, ReplicateReply] = {}
        self._hint = hint
        self._on_outcome = on_outcome
        self._outstanding: dict[str, int] = {}
        self._timer = None
        fields = (key, version, None if deleted else value, deleted, expect, request, True if read else None)
        for peer in peers:
            request_id = core.ask(peer, Replicate, fields, lambda reply, peer=peer: self._answered(peer, reply))
            if request_id is None:
                self._settle(peer, FAILED)
            else:
                self._outstanding[peer] = request_id
        if self._outstanding:
            self._timer = core.timers.schedule(deadline, self._expire)

    def _answered(self, peer: str, reply: object) -> None:
        if self._outstanding.pop(peer, None) is None:
            return
        if isinstance(reply, ReplicateReply):
            # A conditional tombstone counts only where the condition held and
            # it was applied: the same tag can reach a replica without any
            # condition (a quorum read's write-back), so holding it proves nothing.
            if self._exact:
                self.replies[peer] = reply
                if reply.joining and self._core.mutant != "count-newer-as-applied":
                    # A joining node may lack writes it acknowledged before its disk
                    # was lost: its answer proves nothing either way.
                    outcome = FAILED
                elif (reply.applied or reply.version == self.version or reply.observed
                      or self._core.mutant == "count-newer-as-applied"):
                    # ``observed``: the peer holds newer but knows this version took
                    # effect (a DELETE read it, or a firm record of its PUT; observed.py).
                    outcome = OK
                else:
                    outcome = REFUSED
            else:
                outcome = OK if self._expect is None or reply.applied else REFUSED
            self._settle(peer, outcome)
        else:
            self._settle(peer, FAILED)
        if not self._outstanding and self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        for peer, request_id in list(self._outstanding.items()):
            self._core.forget(request_id)
            del self._outstanding[peer]
            self._settle(peer, FAILED)

    def _settle(self, peer: str, outcome: str) -> None:
        # A version this node does not hold (a write-back of another's copy)
        # is not hinted: replay could only send what this node has. A
        # conditional tombstone is never hinted here, since replay drops the
        # condition: its DELETE hints the peers that missed it once it has won.
        core = self._core
        if (self._hint and outcome == FAILED and self._expect is None
                and core.keydir.latest_version(self.key) >= self.version):
            core.hints.add(peer, self.key, self.version)
        self._on_outcome(peer, outcome)
