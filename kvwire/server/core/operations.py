"""The coordinator's operations, each a small state machine driven by the core's events.

The rules (docs/design.md, "The correctness model"):

- PUT, first attempt, every peer usable: one round trip (``one_trip.py``).
- PUT otherwise (a retry, a peer down): LOOKUP the tag on a majority (this
  node included), mint ``(highest counter + 1, this node)``, commit it here and
  REPLICATE it to every peer; acknowledge once a majority, this node included,
  holds it or something newer.
- Every write commits its tag here before any peer sees it: otherwise a crash
  in between could let the restarted node, not knowing the tag, mint it again
  for another value.
- Quorum GET: FETCH a majority, take the newest, write it back to those of
  that majority that were behind (ABD), then answer.
- DELETE: a quorum read first. Absent: NOT_FOUND, a linearizable read of
  absence. Live at version P: a tombstone T > P, committed here, then sent to
  the peers with ``expect = P``: a replica applies it only if it holds nothing
  newer than P. Each replica applies at most one write conditioned on P (after
  it, it holds more than P), and two majorities meet, so of concurrent
  DELETEs of one live value at most one can be acknowledged. One that loses
  the race may have left its tombstone on a minority, so it answers CONFLICT
  with ``maybe_applied``, never a NOT_FOUND or "deleted" it cannot prove.
"""

from __future__ import annotations

from typing import Any

from ...protocol.errors import ConflictError, KeyNotFoundError, KvwireError, NoQuorumError, UnavailableError
from ...protocol.messages import Delete as DeleteRequest
from ...protocol.messages import DeleteReply, Fetch, GetReply, Lookup, PutReply, Version
from .fanout import FAILED, OK, Fanout
from .keydir import Copy
from .rounds import Answers, MajorityRound
from .services import CoreServices


WRITE_NO_QUORUM = "Failed to replicate to quorum of nodes"
JOINING = ("this node is joining the cluster (catching up from its peers), and until then what it coordinates "
           "needs every node's answer ({} of {} answered); {}")


def joining_refusal(core: CoreServices, reachable: int, **kwargs) -> UnavailableError:
    """A joining node's refusal of what it cannot coordinate. It said "another node
    can take it" when none could (a probe's two nodes joining at once, the third
    alone caught up): the advice now follows the votes this node sees."""
    voters = core.voters_up()
    if voters >= core.quorum:
        advice = "another node can take it"
    else:
        advice = (f"no node can now: {voters} of {core.cluster_size} nodes have caught up (the others are joining "
                  f"or DOWN), and a majority needs {core.quorum}; retry once one has joined")
    return UnavailableError(JOINING.format(reachable, core.cluster_size, advice), **kwargs)


class QuorumRead:
    """Newest copy on a majority, written back to those of it that were behind.

    ``on_done(newest, None)`` or ``on_done(None, error)``, exactly once, by the
    deadline at the latest: a slow disk here (a Load, or this node's own
    write-back commit) makes the read fail in time rather than hang. What it
    started goes on for whoever else waits on it.
    """

    __slots__ = (
        "_answers", "_core", "_deadline", "_done", "_everyone", "_key", "_local", "_on_done", "_round",
        "_timer", "_waiting",
    )

    def __init__(self, core: CoreServices, key: str, deadline: float, on_done, *, everyone: bool = False) -> None:
        self._core = core
        self._key = key
        self._deadline = deadline
        self._on_done = on_done
        self._local: Copy | None = None
        self._answers: Answers | None = None
        self._done = False
        self._everyone = everyone
        self._waiting: list[str | None] = []  # write-back targets still to confirm
        self._round = MajorityRound(core, Fetch, key, deadline, self._round_done, everyone=everyone)
        self._timer = core.timers.schedule(deadline, self._expire)

    def start(self) -> None:
        self._round.start()
        if not self._done:
            self._core.committed_copy(self._key, self._local_done)

    def _finish(self, newest: Copy | None, error: Exception | None) -> None:
        if not self._done:
            self._done = True
            self._timer.cancel()
            self._on_done(newest, error)

    def _expire(self) -> None:
        self._finish(None, NoQuorumError(
            f"quorum read of {self._key!r} could not finish in time"
            f"{' (bringing a majority up to date)' if self._waiting else ''}"))

    def _round_done(self, answers: Answers | None) -> None:
        if answers is None:
            core = self._core
            if self._everyone:
                self._finish(None, joining_refusal(core, self._round.reachable))
                return
            self._finish(None, NoQuorumError(
                f"quorum read of {self._key!r} needs {core.quorum} of {core.cluster_size} nodes but "
                f"{self._round.reachable} answered"))
            return
        self._answers = answers
        self._maybe_ready()

    def _local_done(self, copy: Copy | KvwireError) -> None:
        if isinstance(copy, KvwireError):
            self._finish(None, copy)
            return
        self._local = copy
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self._local is None or self._answers is None or self._done:
            return
        if self._core.now >= self._deadline:  # no write-back past the deadline (rounds.py says why)
            self._expire()
            return
        answers = [(None, self._local), *self._answers]
        newest = max((copy for _, copy in answers), key=lambda copy: copy.version)
        behind = [source for source, copy in answers if copy.version < newest.version]
        if behind and newest.deleted and self._core.tombstones.settled(self._key, newest.version):
            # A tombstone being garbage collected: no replica holds a live older
            # version, so those holding nothing read as it does (tombstones.py).
            behind = [source for source, copy in answers if copy.version < newest.version and not copy.absent]
        if not behind or self._core.mutant == "no-write-back":
            self._finish(newest, None)
            return
        self._core.stats.write_backs += 1
        self._write_back(newest, behind)

    def _write_back(self, newest: Copy, behind: list[str | None]) -> None:
        """ABD's second phase: the majority that answered must hold ``newest`` before the reply."""
        core, key = self._core, self._key
        self._waiting = list(behind)

        def settled(source: str | None, ok: bool) -> None:
            if self._done or source not in self._waiting:
                return
            if not ok:
                self._finish(None, NoQuorumError(
                    f"quorum read of {key!r} could not bring a majority up to date; use consistency "
                    "'one' for this node's copy, which may be stale"))
                return
            self._waiting.remove(source)
            if not self._waiting:
                self._finish(newest, None)

        peers = [source for source in behind if source is not None]
        # The PUT's request id travels with its version, so that the replicas
        # brought up to date remember it too (applied.py).
        request = self._round.requests.get(newest.version) or core.applied.request_of(key, newest.version)

        def stored(error: Exception | None) -> None:
            if error is None and request is not None:
                core.applied.remember(request, key, newest.version, core.now)
            settled(None, error is None)

        if None in behind:
            core.store(key, newest.version, newest.deleted, newest.value, None, stored, request=request)
        if peers:
            Fanout(core, key, newest.version, newest.deleted, newest.value, peers, self._deadline,
                   lambda peer, outcome: settled(peer, outcome == OK), request=request,
                   read=core.mutant != "forget-read-requests")


class QuorumGet:
    __slots__ = ("_core", "_request", "_token")

    def __init__(self, core: CoreServices, token: Any, request) -> None:
        self._core = core
        self._token = token
        self._request = request

    def start(self) -> None:
        core = self._core
        QuorumRead(core, self._request.key, core.now + core.config.write_timeout, self._done,
                   everyone=core.joining).start()

    def _done(self, newest: Copy | None, error: Exception | None) -> None:
        request = self._request
        if type(error) is NoQuorumError:
            # A GET's way out, said here rather than by the read, which a DELETE makes too
            # (and a DELETE has no consistency 'one': a probe found its error offering one).
            error = NoQuorumError(f"{error.message}; use consistency 'one' (kvwire-cli get --consistency one) "
                                  "to read this node's copy, which may be stale", maybe_applied=error.maybe_applied)
        if error is not None:
            self._core.respond(self._token, error)
        elif newest.absent:
            self._core.respond(self._token, KeyNotFoundError(f"key {request.key!r} not found"))
        else:
            self._core.respond(self._token, GetReply(request.id, newest.value, newest.version))


class _ReplicatedWrite:
    """What PUT and DELETE share: commit a version here, then replicate it and count a majority.

    Subclasses mint ``_version`` and call ``_commit``; they say what a success
    replies (``_success``). The deadline answers NO_QUORUM if no majority
    (this node included) holds the version by then.
    """

    __slots__ = (
        "_acks", "_answered", "_core", "_deadline", "_deleted", "_exact", "_expect", "_failed", "_firm",
        "_holds_key", "_in_progress", "_local_pending", "_missed", "_refused", "_request", "_timer", "_token",
        "_value", "_version", "_waking_now", "counted_here",
    )

    def __init__(self, core: CoreServices, token: Any, request) -> None:
        # Its failures are counted in this node's stats (HEALTH, /metrics) unless a
        # peer forwarded it (ForwardedDelete), which counts what it tells its client.
        self.counted_here = True
        self._core = core
        self._token = token
        self._request = request
        self._deadline = core.now + core.config.write_timeout
        self._answered = False
        self._version: Version | None = None  # the new tag, once minted
        self._expect: Version | None = None
        self._acks = self._failed = self._refused = 0
        self._local_pending = False  # this node's own commit of ``_version`` is under way
        self._in_progress = False  # a tag of this write is committed here, or on its way
        self._missed: list[str] = []  # peers a conditional tombstone did not reach or was refused by
        # Count only replicas that hold exactly ``_version``, not a newer one (Write._complete).
        self._exact = False
        # Minted above a majority's newest (Write._mint): above every write finished
        # before the PUT began, so a replica holding newer still remembers its request.
        self._firm = False
        # Woken after waiting for another write of the key, running its round again:
        # the next PUT waiting stays asleep until this one is done (NodeCore._wake_a_waiter).
        self._holds_key = False
        self._waking_now = False  # inside the wake-up's call: it says so by what it returns
        self._timer = core.timers.schedule(self._deadline, self._expire)

    def _success(self) -> Any:
        raise NotImplementedError

    @property
    def _request_id(self) -> str | None:
        return getattr(self._request, "request", None)  # a PUT's; a DELETE has none

    def _quorum_reached(self) -> bool:
        """A majority holds the version, and this node's own commit of it is done:
        a success its own disk then refused would leave it voting without it."""
        return self._acks >= self._core.quorum and not self._local_pending

    def _expire(self) -> None:
        self._no_quorum("no majority held it in time", maybe_applied=self._version is not None)

    def _no_quorum(self, why: str, *, maybe_applied: bool) -> None:
        if self._answered:
            # Answered already (its deadline came first, and its round's ends after):
            # _answer would ignore this one, and HEALTH counted one failure twice.
            return
        if self.counted_here:
            self._core.stats.no_quorum_writes += 1
        verdict = "may or may not have been applied" if maybe_applied else "nothing was written"
        self._answer(NoQuorumError(
            f"{WRITE_NO_QUORUM}: {self._request.op.name} of {self._request.key!r}: {why}; {verdict}",
            maybe_applied=maybe_applied))

    def _commit(self, deleted: bool, value: Any, packed: bytes | None) -> None:
        """Commit the version here and send it to every peer at once: the peers'
        commits run alongside this node's, one fsync on the way, not two. A peer
        may so hold a tag this node then loses (its disk refuses it, or it is
        killed first): ``NodeCore.lost_a_sent_tag`` and an unclean restart make
        this node catch up from every peer before it votes again."""
        self._deleted, self._value = deleted, value
        self._local_pending = True
        self._started_here()
        self._core.store(self._request.key, self._version, deleted, value, packed, self._stored,
                         request=self._request_id, tentative=self._exact)
        if not self._core.commits_first:
            self._replicate()

    def _started_here(self) -> None:
        """This write's first tag is on its way to this node's disk: until it is
        decided, a PUT of the key through this node waits before minting above it
        (``Write._mint``)."""
        if not self._in_progress:
            self._in_progress = True
            self._core.write_started(self._request.key)
        self._let_go_of_the_key()

    def _replicate(self) -> None:
        core = self._core
        if core.peer_ids:
            Fanout(core, self._request.key, self._version, self._deleted, self._value, core.peer_ids,
                   self._deadline, self._replicated, expect=self._expect, request=self._request_id,
                   exact=self._exact, read=self._firm and core.mutant != "forget-superseded-requests")

    def _stored(self, error: Exception | None) -> None:
        core = self._core
        self._local_pending = False
        if error is not None:
            sent = bool(core.peer_ids) and not core.commits_first
            if sent:
                core.lost_a_sent_tag(self._request.key, self._version)
            # The disk refused it: say so, not "no quorum"; its REPLICATEs went out.
            self._answer(disk_error(error, maybe_applied=sent))
            return
        request_id = self._request_id
        if self._exact and core.joining and core.mutant != "joining-vouches":
            # Finishing a tentative tag counts only replicas that hold it as their
            # newest, and a joining node's newest proves nothing: the write that
            # superseded the tag may be one its lost disk held. Its own copy counts
            # neither way, as a joining replica's answer does not (fanout.py).
            self._failed += 1
        elif self._exact and (latest := core.keydir.latest_version(self._request.key)) != self._version \
                and not core.observed.deleted_after_reading(self._request.key, latest, self._version):
            self._refused += 1  # holds a newer tag: not this write's (nor one whose DELETE read it)
        else:
            if request_id is not None:
                core.applied.remember(request_id, self._request.key, self._version, core.now, tentative=self._exact)
            self._acks += 1
        if self._quorum_reached():
            self._answer(None)
        else:
            self._check_reachable()
        if core.commits_first:
            self._replicate()

    def _replicated(self, peer: str, outcome: str) -> None:
        core = self._core
        if outcome == OK:
            self._acks += 1
            if self._quorum_reached():
                self._answer(None)
            return
        if self._expect is not None:
            # A conditional tombstone's misses are hinted only if its DELETE
            # wins: replay drops the condition, so a losing tombstone must not
            # be spread by it.
            self._missed.append(peer)
            if self._answered and self._acks >= core.quorum:
                self._hint_missed()
        if outcome == FAILED:
            self._failed += 1
        else:
            self._refused += 1
        self._check_reachable()

    def _check_reachable(self) -> None:
        """Answer now if a majority can no longer hold the version."""
        core = self._core
        reachable = core.cluster_size - self._failed - self._refused
        if self._answered or reachable >= core.quorum:
            return
        if self._exact and self._refused:
            self._no_quorum(f"its earlier attempt's tag {tuple(self._version)} is not the newest on a majority (it "
                            "was overwritten since, or never taken)", maybe_applied=True)
        elif self._exact:
            # Nobody refused the tag: the nodes did not answer or failed (its own first
            # round's tag included, when that round failed the same way). Said as it is.
            self._no_quorum(self._too_few_took_it(reachable), maybe_applied=True)
        elif self._refused:
            if self.counted_here:
                core.stats.delete_conflicts += 1
            self._answer(ConflictError(
                f"DELETE of {self._request.key!r} raced with a concurrent write of it and may or may "
                "not have taken effect; read the key to see", maybe_applied=True))
        else:
            self._no_quorum(self._too_few_took_it(reachable), maybe_applied=True)

    def _too_few_took_it(self, could: int) -> str:
        # It said "1 of 3 nodes reachable" of two peers that had answered, their disks
        # refusing the write (a lifecycle probe's finding).
        return (f"{could} of {self._core.cluster_size} nodes could take it (the others did not answer, or failed "
                "to commit it)")

    def _answer(self, error: Exception | None) -> None:
        if self._answered:
            return
        self._answered = True
        self._timer.cancel()
        if error is not None and getattr(error, "maybe_applied", False):
            # This node may hold the key at a tag no majority has (Write._mint).
            self._core.strand(self._request.key, self._version)
        if error is None and self._expect is not None:
            self._hint_missed()
        self._core.respond(self._token, self._success() if error is None else error)
        if self._in_progress:
            # Last: a PUT waiting to mint (Write._mint) must see the key stranded
            # if this write failed.
            self._core.write_decided(self._request.key)
        self._let_go_of_the_key()

    def _let_go_of_the_key(self) -> None:
        """A woken PUT is done with its round (it minted, waits again, or ended): the next may wake."""
        if self._holds_key:
            self._holds_key = False
            if not self._waking_now:
                self._core.woken_put_done(self._request.key)

    def _hint_missed(self) -> None:
        missed, self._missed = self._missed, []
        for peer in missed:
            self._core.hints.add(peer, self._request.key, self._version)


# As node.py's REUSES_NAMES: waiting for a write of the key in progress here moved
# the seeds that reached ``join-without-requests``'s case (3194) and
# ``one-trip-over-floor``'s (4672), and seeds 4,000-7,999 and 5,000-8,999 of their
# runs found no other, so those mutants also mint at once, as the core did before
# (docs/design.md 3); so do ``stack-on-stranded``, whose one seed (37669, a search
# past CI's seeds) it moved too, and ``ignore-stranded`` (2822; seeds 3,000-6,999
# of partitions alone found no other).
MINTS_WITHOUT_WAITING = frozenset({
    "stack-on-in-progress", "join-without-requests", "one-trip-over-floor", "stack-on-stranded", "ignore-stranded",
})


class Write(_ReplicatedWrite):
    """PUT: LOOKUP a majority, mint a tag above it, commit here, replicate, count a majority."""

    __slots__ = ("_above_own", "_created", "_packed", "_round")

    def __init__(self, core: CoreServices, token: Any, request, packed: bytes | None) -> None:
        super().__init__(core, token, request)
        self._packed = packed
        self._created = False
        self._round: MajorityRound | None = None
        # Minted above this node's own copy (not an earlier attempt's tag finished).
        self._above_own = False

    def _success(self) -> PutReply:
        if self._above_own:
            # A majority now holds a tag above this node's copy (one_trip.py, stranded).
            self._core.stranded.discard(self._request.key)
        return PutReply(self._request.id, self._version, self._created)

    def start(self) -> None:
        core, request = self._core, self._request
        if request.request is not None and core.mutant != "ignore-request-id":
            applied = core.applied.find(request.request, request.key, core.now)
            if applied is not None:
                self._complete(applied.version, applied.tentative)
                return
        if core.quorum == 1 or core.mutant == "no-lookup":
            self._mint([])  # a lone node is its own majority: no round to run
            return
        self._round = MajorityRound(core, Lookup, request.key, self._deadline, self._looked_up, request=request.request,
                                    everyone=core.joining)
        self._round.start()

    def _looked_up(self, answers: Answers | None) -> None:
        core = self._core
        if answers is None:
            if core.joining:
                # Nothing was written: a DELETE forwarded here runs on its forwarder.
                self._answer(joining_refusal(core, self._round.reachable, maybe_applied=False))
                return
            self._no_quorum(f"{self._round.reachable} of {core.cluster_size} nodes answered, {core.quorum} needed",
                            maybe_applied=False)
            return
        found = list(self._round.request_versions)
        request_id = self._request.request
        if request_id is not None:
            # This node's own record is read again now, not only at start: an
            # earlier attempt's tag may have landed here during the round (a
            # quorum read's write-back, its own REPLICATE), and been read and
            # overwritten since; a new tag would apply the PUT a second time,
            # above that later write. The simulator's workload does not reach
            # this (docs/design.md 1.2, step 6), so it has no mutant;
            # tests/test_core.py drives it step by step.
            own = core.applied.find(request_id, self._request.key, core.now)
            if own is not None:
                found.append((own.version, own.tentative))
        if found and core.mutant != "ignore-request-id":
            newest = max(version for version, _ in found)
            # Tentative only if no answer knew it held by more than its coordinator.
            self._complete(newest, all(tentative for version, tentative in found if version == newest))
            return
        self._mint([copy for _, copy in answers])

    def _complete(self, version: Version, tentative: bool) -> None:
        """The same PUT (same request id) was applied before, at ``version``, on some
        replica: finish that write rather than make a second one. Replicas apply
        ``version`` unless they hold it or newer, and a majority holding it (or
        newer) acknowledges it, exactly as for the first attempt."""
        core = self._core
        if core.keydir.latest_version(self._request.key) < version and version.counter <= core.tombstones.floor_target:
            # Below the tag floor and not held here: the key may have been deleted
            # since, and the tombstone collected everywhere, so writing it again
            # could bring back a deleted value. Say it may have been applied.
            if not self._answered:
                core.stats.no_quorum_writes += 1
            self._answer(NoQuorumError(
                f"{WRITE_NO_QUORUM}: PUT of {self._request.key!r}: its request id was applied at "
                f"{tuple(version)}, too long ago to complete now; it may or may not have been applied",
                maybe_applied=True))
            return
        self._version = version
        self._created = False  # what the first attempt found is not known here
        # A tentative tag may be one a majority refused, which no read returns, so
        # a replica holding a newer tag proves nothing: finished only where it is
        # the newest, else undecided. Any other was above every write finished
        # before its PUT began, so newer tags held now came after it.
        self._exact = tentative and self._core.mutant != "complete-over-newer"
        # A firm tag's replicas that hold newer count as its acknowledgement (above), so
        # each must remember the request at it, as those of a LOOKUP PUT's tag do
        # (``read``): else a later attempt's majority without this node found no
        # record, and wrote the PUT a second time, over a write acknowledged after it
        # (sim seed 1100540 of fifteen clients that give up after 0.6 s, pauses and
        # lost messages).
        self._firm = not tentative and self._core.mutant != "complete-unrecorded"
        self._commit(False, self._request.value, self._packed)

    def _woken(self, copies: list[Copy]) -> bool:
        """No write of the key is in progress here any more: True if this PUT now runs
        its round again, and holds the key until it is done (``_let_go_of_the_key``)."""
        if self._answered:
            return False
        self._holds_key = self._waking_now = True
        try:
            self._mint_after_waiting(copies)
        finally:
            self._waking_now = False
        return self._holds_key

    def _mint_after_waiting(self, copies: list[Copy]) -> None:
        """``_mint``, once the write of the key it waited for is decided. For a PUT with a
        request id, the PUT starts again (``start``): that write may have been an earlier
        attempt of this same PUT, whose record is here now, to finish rather than apply the
        PUT a second time; and the round's answers are from before the wait, which can be
        long (writes of a hot key queue here): meanwhile its client may have given up on
        this node, had it applied elsewhere, and a later write acknowledged. Minted on those
        answers, it was applied a second time, above that write (python -m kvwire.sim
        --seed 931189 --ops 400 --faults pause,network --clients 15 --client-timeout 0.6)."""
        request_id, core = self._request.request, self._core
        if request_id is not None and core.mutant not in ("ignore-request-id", "mint-on-stale-lookup"):
            self.start()  # this node's own record, then its majority, asked again
            return
        if request_id is not None and core.mutant == "mint-on-stale-lookup":  # the own record alone
            own = core.applied.find(request_id, self._request.key, core.now)
            if own is not None:
                self._complete(own.version, own.tentative)
                return
        self._mint(copies)

    def _mint(self, copies: list[Copy]) -> None:
        core, key = self._core, self._request.key
        # This node's own tag is read now, not with the round: a write of this
        # key that it started meanwhile is pending here, and the new tag must
        # pass it, or two writes in flight would share one tag.
        own = core.keydir.latest(key)
        answered = max(copy.version for copy in copies) if copies else None
        if answered is not None and key in core.writes_in_progress and own.version > answered \
                and core.mutant not in MINTS_WITHOUT_WAITING:
            # This node's copy is a write of the key still in progress here, which no
            # answer holds: a tag above it would be two above what the majority held
            # (the stacking below, before that write has failed). Wait until it is
            # decided: on a majority then, or a failed copy, which the rule below
            # refuses to pass (python -m kvwire.sim --seed 731 --seeds 1 --faults
            # disk,network,one-way,pause).
            # Woken before, it waits again ahead of the others.
            core.after_writes_of(key, lambda: self._woken(copies), first=self._holds_key)
            self._let_go_of_the_key()
            return
        if answered is not None and key in core.stranded and max(own.version, core.lost_tag(key)) > answered \
                and core.mutant != "stack-on-stranded":
            # A write of the key failed here, and no answer holds this node's
            # copy: a tag above it would be two above what the majority held.
            # Should this PUT fail too, a retry elsewhere would be acknowledged
            # lower, and a write after that retry, one above it, could still be
            # below this tag, which would surface above it later (docs/design.md
            # 1.2, step 2). Nothing is written: the client tries another node,
            # and this node mints again once its copy has spread (hint replay)
            # or a newer one has come.
            self._no_quorum("this node holds a copy of the key from a write that failed here, above what the "
                            "majority answered; try another node", maybe_applied=False)
            return
        copies.append(own)
        newest = max(copies, key=lambda copy: copy.version)
        self._created = newest.absent
        self._version = core.mint(self._request.key, newest.version)
        self._above_own = self._firm = True
        self._commit(False, self._request.value, self._packed)


class Delete(_ReplicatedWrite):
    """DELETE: a quorum read, then a tombstone conditioned on the live version it found.
    ``forwarded``: run for the peer a client sent it to (ForwardedDelete)."""

    __slots__ = ()

    def __init__(self, core: CoreServices, token: Any, request, *, forwarded: bool = False) -> None:
        super().__init__(core, token, request)
        self.counted_here = not forwarded

    def _success(self) -> DeleteReply:
        # Its tombstone is above this node's copy (``_read``) and on a majority.
        self._core.stranded.discard(self._request.key)
        return DeleteReply(self._request.id, self._version)

    def start(self) -> None:
        QuorumRead(self._core, self._request.key, self._deadline, self._read, everyone=self._core.joining).start()

    def _read(self, newest: Copy | None, error: Exception | None) -> None:
        core, key = self._core, self._request.key
        if self._answered:
            return
        if error is not None:
            if isinstance(error, UnavailableError):
                # Joining: nothing was written, so the DELETE's forwarder (or the
                # client, on another node) can run it.
                self._answer(UnavailableError(error.message, maybe_applied=False))
            else:
                self._no_quorum(f"could not read the key on a majority first ({error.message})", maybe_applied=False)
            return
        if newest.absent:
            self._answer(KeyNotFoundError(f"key {key!r} not found"))
            return
        if core.keydir.latest_version(key) > newest.version:
            # This node already holds something newer (a write in flight or
            # just committed); the tombstone would be refused here. Read again
            # once it is settled; the deadline bounds the retries (a key
            # written without pause), and answers NO_QUORUM with nothing written.
            pending = core.keydir.newest_pending(key)
            if pending is not None:
                core.after_write(pending.write_id, lambda _error: self._answered or self.start())
            else:
                self.start()
            return
        self._expect = newest.version
        self._version = core.mint(self._request.key, newest.version)
        core.observed.note(key, self._version, self._expect)
        self._commit(True, None, None)


def disk_error(error: Exception, *, maybe_applied: bool) -> Exception:
    """This node's disk refused a write; if peers were sent it, it may be applied there."""
    if maybe_applied and isinstance(error, KvwireError) and error.maybe_applied is not True:
        error = type(error)(f"{error.message}; its peers were sent it, so it may or may not have been applied")
        error.maybe_applied = True
    return error


class ForwardedDelete:
    """A DELETE handed to the node that coordinates DELETEs (``CoreServices.delete_owner``).

    It runs at most once: this node runs it itself only if the owner could not
    have (it was never sent, or the owner answered that it wrote nothing). An
    owner that goes silent leaves it undecided: NO_QUORUM with
    ``maybe_applied``. Running it here as well could apply it twice, first to
    one value and then, after a concurrent PUT, to the next.
    """

    __slots__ = ("_core", "_owner", "_request", "_request_id", "_settled", "_timer", "_token")

    def __init__(self, core: CoreServices, token: Any, request, owner: str) -> None:
        self._core = core
        self._token = token
        self._request = request
        self._owner = owner
        self._settled = False

    def start(self) -> None:
        core = self._core
        self._request_id = core.ask(self._owner, DeleteRequest, (self._request.key,), self._answered)
        if self._request_id is None:
            self._settled = True
            Delete(core, self._token, self._request).start()
            return
        # The owner's own write timeout, plus its round trip.
        self._timer = core.timers.schedule(core.now + 2 * core.config.write_timeout, self._expire)

    def _answered(self, reply: Any) -> None:
        if self._settled:
            return
        self._settled = True
        self._timer.cancel()
        if isinstance(reply, DeleteReply):
            reply = DeleteReply(self._request.id, reply.version)
        elif isinstance(reply, KvwireError) and reply.maybe_applied is False:
            Delete(self._core, self._token, self._request).start()  # the owner wrote nothing
            return
        elif not isinstance(reply, KvwireError) or isinstance(reply, ConnectionError):
            reply = self._undecided("the link to it closed")
        elif isinstance(reply, ConflictError):
            self._core.stats.delete_conflicts += 1  # counted where the client is told (Delete.counted_here)
        elif isinstance(reply, NoQuorumError):
            self._core.stats.no_quorum_writes += 1
        self._core.respond(self._token, reply)

    def _expire(self) -> None:
        if not self._settled:
            self._settled = True
            self._core.forget(self._request_id)
            self._core.respond(self._token, self._undecided("it did not answer in time"))

    def _undecided(self, why: str) -> NoQuorumError:
        self._core.stats.no_quorum_writes += 1
        return NoQuorumError(
            f"{WRITE_NO_QUORUM}: DELETE of {self._request.key!r} went to {self._owner}, which coordinates "
            f"deletes, and {why}; it may or may not have been applied", maybe_applied=True)
