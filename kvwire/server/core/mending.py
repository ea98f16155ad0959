"""Mending a value found damaged on this node's disk, from a peer's copy of the same version.

A value whose bytes changed on disk is refused when read (UNAVAILABLE, and
clients read another node's copy), but its version tag is whole, so
anti-entropy, which compares tags, finds nothing to repair: the key stayed
refused here until a write replaced it, one replica short, and with a peer
down its quorum reads failed. A read that meets the damage now asks the peers,
in turn, for their committed copy (a repair FETCH, which a joining peer
answers too); the first whose version is the damaged row's gives its value,
and the row is rewritten in place (``Mend``), only while it is still that
version. A version tag names one write, so a copy of that tag is that
write's value. A peer holding a newer version gives nothing here: anti-entropy
brings that one, through ``store``, as it brings any newer write.
"""

from __future__ import annotations

from typing import Any

from ...protocol.errors import UnavailableError
from ...protocol.messages import NO_VERSION, Fetch, FetchReply, Version
from .effects import Mend, Notice
from .repair import ask_with_deadline
from .services import CoreServices

# Keys being mended at once: a disk damaged in many places is past mending key
# by key (docs/operations.md, "Reads through one node fail").
MAX_MENDING = 64
# Keys whose failed mending was told: the first thousand, once each.
MAX_TOLD = 1000
# Keys resting after a mending ended, mended (its commit still to come) or not:
# asked for again only a repair interval later. Two nodes holding damaged copies
# of one key asked each other for ever otherwise, each peer's FETCH meeting the
# damage and starting a new round (a review's finding), and every read before a
# mend's commit queued a second copy of the value for it.
MAX_RESTING = 1000


class DamagedValueError(UnavailableError):
    """This node's copy of a value is damaged on its disk: UNAVAILABLE, so that a
    client reads another node's copy; ``version`` is the damaged row's, to mend."""

    def __init__(self, message: str = "", *, key: str = "", version: Version = NO_VERSION,
                 maybe_applied: bool | None = None) -> None:
        super().__init__(message, maybe_applied=maybe_applied)
        self.key = key
        self.version = version


class Mending:
    def __init__(self, core: CoreServices) -> None:
        self._core = core
        self._mending: dict[str, Version] = {}
        self._told: set[str] = set()
        self._resting: dict[str, float] = {}  # key -> until when it is not asked for again

    def start(self, key: str, version: Version) -> None:
        """Ask the peers for ``key`` at ``version``, unless it is being asked for already,
        rests after a mending just ended, or 64 keys are being mended (the next read asks)."""
        now = self._core.now
        if key in self._mending or len(self._mending) >= MAX_MENDING or self._resting.get(key, now) > now:
            return
        self._resting.pop(key, None)
        self._mending[key] = version
        self._ask_next(key, version, list(self._core.peer_ids))  # a lone node's list is empty: it says so

    def _rest(self, key: str) -> None:
        del self._mending[key]
        if len(self._resting) >= MAX_RESTING:
            now = self._core.now
            self._resting = {held: until for held, until in self._resting.items() if until > now}
        if len(self._resting) < MAX_RESTING:
            self._resting[key] = self._core.now + self._core.config.repair_interval

    def _ask_next(self, key: str, version: Version, peers: list[str]) -> None:
        core = self._core
        while peers:
            peer = peers.pop(0)
            # ``repair``: a joining peer answers it too, as it answers anti-entropy's pulls.
            if ask_with_deadline(core, peer, Fetch, (key, None, True),
                                 lambda reply, peer=peer: self._answered(key, version, peer, peers, reply)) is not None:
                return
        self._rest(key)
        if key not in self._told and len(self._told) < MAX_TOLD:
            self._told.add(key)
            core.effects.append(Notice(
                "damaged_value_unmended",
                f"no peer gave the value of {key!r} at {tuple(version)}, damaged on this node's disk: it stays refused "
                "here until a write of the key replaces it, or anti-entropy brings a newer copy; a read of it "
                "asks the peers again, a repair interval from now at the soonest",
                {"key": key}))

    def _answered(self, key: str, version: Version, peer: str, peers: list[str], reply: Any) -> None:
        if isinstance(reply, FetchReply) and reply.version == version and not reply.deleted:
            self._rest(key)
            self._told.discard(key)
            self._core.effects.append(Mend(key, version, reply.value, peer))
            return
        self._ask_next(key, version, peers)
