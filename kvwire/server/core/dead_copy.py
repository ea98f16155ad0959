"""Bringing this node past a dead tag of its own before any reader sees it.

A one-round-trip PUT commits its tag here before any peer sees it. When a
majority refuses the tag (each holds a newer one), the tag is dead: it sits
below a write that may have been acknowledged before this PUT began, so no
reader may ever be given it. While the PUT is undecided, this node holds its
readers (``NodeCore.committed_copy``). If the PUT then ends without a newer
tag of its own committed here (the tag floor stopped its retry, or the retry's
commit failed), the dead tag is still this node's newest copy, and releasing
the readers would hand it out: a quorum read pairing it with a stale answer
returned the value of a PUT that answered "nothing was written", and could go
on to return the refusers' older-tagged but later write after it
(``python -m kvwire.sim --seed 773 --seeds 1 --ops 400 --faults
crash,disk,network --clients 15 --client-timeout 0.6``).

So the readers stay held while this node fetches the key from its peers: each
refuser held its newer tag durably when it refused, so any answer now is newer,
and once this node has committed it the readers are released. A failed round
is tried again every heartbeat interval; readers waiting meanwhile fail at
their own deadlines, as they would on a silent peer. Kept in memory: after a
restart the dead tag is served like any other copy (the key is only stranded
then, from its tentative request record, so new PUTs of it through this node
take the LOOKUP round).
"""

from __future__ import annotations

from ...protocol.messages import Fetch, Version
from .keydir import Copy
from .rounds import Answers, MajorityRound
from .services import CoreServices


class DeadCopyRepair:
    """``undecided``: the tag is a PUT's left undecided after a refusal (its client told
    ``maybe_applied``), not a dead one. Its readers are then also released once a peer
    answers holding exactly that tag: this node and that peer are a majority, and a write
    acknowledged above the tag would be on one of them, above it; the peer serves the tag
    already. Without it the readers were held for good once every replica held the tag
    (the refuser's newer copy lost with its disk), and the hints of the key with them
    (``python -m kvwire.sim --seed 542010 --ops 200 --nodes 3 --faults
    crash,pause,partition,one-way,disk,network --clients 5``). A dead tag's refusers held
    newer durably, so no peer can answer with it, and its client was told nothing was
    written: that rule stays as it was.

    Nor could the readers of an undecided tag go while no peer held it: with the
    refuser's newer copy lost with its disk and the others below the tag, no answer
    could be newer or equal, and the readers, the key's hints and a rejoining peer's
    pull of the key were held for good (``python -m kvwire.sim --seed 721429 --ops 200
    --nodes 3 --faults crash,pause,partition,one-way,disk,network --clients 5``). So
    the readers also go once a majority's answers are below the tag: this node holds
    the tag and those voters hold less (a joining peer, which may lack what it was
    sent, refuses this FETCH), so no write above the tag was acknowledged, for it
    would be on a majority, and so on one of them. The PUT, whose client was told it
    may have been applied, takes effect now, as an undecided write may; a write above
    the tag still under way may take effect after it. Asking every peer first, as the
    rule was, held the key's readers, and a peer's quorum read of it, for as long as
    any one peer was down (a review of the core, 2026-12-07: the refuser gone for good,
    the other replica up and below the tag; ``ask-every-peer-below``)."""

    def __init__(self, core: CoreServices, key: str, dead: Version, *, undecided: bool = False) -> None:
        self._core = core
        self._key = key
        self._dead = dead
        self._undecided = undecided
        self._round: MajorityRound | None = None

    def start(self) -> None:
        core = self._core
        core.repairing_tags[self._key] = self._undecided  # for consistency=one reads (NodeCore._unordered_hold)
        committed = core.keydir.committed.get(self._key)
        if committed is None or committed.version != self._dead:
            core.one_trip_ended(self._key)  # a newer copy came here meanwhile
            return
        self._round = MajorityRound(core, Fetch, self._key, core.now + core.config.write_timeout, self._fetched)
        self._round.start()

    def _try_later(self) -> None:
        self._core.timers.schedule(self._core.now + self._core.config.heartbeat_interval, self.start)

    def _fetched(self, answers: Answers | None, *, from_every_peer: bool = False) -> None:
        copies = [copy for _, copy in answers or ()]
        newest: Copy | None = max(copies, key=lambda copy: copy.version) if copies else None
        core, key = self._core, self._key
        if newest is not None and newest.version == self._dead and self._undecided \
                and core.mutant != "hold-readers-of-a-held-tag":
            core.one_trip_ended(key)
            return
        if answers is not None and (newest is None or newest.version < self._dead) and self._undecided \
                and core.mutant != "hold-undecided-below-every-peer":
            if from_every_peer or core.mutant != "ask-every-peer-below":
                core.one_trip_ended(key)  # no write above the tag was acknowledged
                return
            self._round = MajorityRound(core, Fetch, key, core.now + core.config.write_timeout,
                                        lambda every: self._fetched(every, from_every_peer=True),
                                        everyone=True, repair=True)
            self._round.start()
            return
        if newest is None or newest.version <= self._dead:
            self._try_later()
            return
        request = self._round.requests.get(newest.version)

        def stored(error: Exception | None) -> None:
            if error is not None:
                self._try_later()
                return
            if request is not None:
                core.applied.remember(request, key, newest.version, core.now)
            core.one_trip_ended(key)

        core.store(key, newest.version, newest.deleted, newest.value, None, stored, request=request)
