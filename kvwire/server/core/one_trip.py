"""A PUT in one round trip: propose a tag, and let the replicas' answers be the LOOKUP.

The coordinator mints a tag above its own copy, commits it here, and sends it
with the value to every peer at once. A replica
applies it only if it is above what the replica holds, and answers with what it
held either way. The PUT is acknowledged once a majority, this node included,
*applied* that tag (or holds exactly it): a replica holding a newer tag does
not count, since that tag may belong to a write that finished before this one
began.

When a majority refuses (each holds a newer tag), the tag is dead: no majority
can ever hold it as its newest, so no read can return it. Nor can one have
returned it already: this node committed it first, but gives its copy of the
key to no quorum reader (a peer's FETCH, its own quorum reads, hint replay, a disk
read begun before the PUT) until the PUT is decided (``NodeCore.committed_copy``
and ``loaded``). A joining peer's anti-entropy pull is no quorum reader: it reads
as a ``consistency=one`` GET does (``NodeCore._unordered_hold``), waiting only
while the PUT is in progress, since a joiner votes only once caught up from every
peer (``hold-joining-pulls``). Without that hold, a quorum read
whose own copy was older took the tag from here while the replicas were
refusing it for concurrent writes, and the retry then put the value above a
write that began after the read (``serve-in-progress``, twenty clients on ten
keys with no fault at all). A PUT that ends with its dead tag still this node's
newest copy keeps them held until this node has fetched a newer one
(``dead_copy.py``). Only for a dead tag does the
coordinator try again, with a tag above every answer, which the replicas
compare just as the first: the second attempt is the LOOKUP round, merged into
the first. If fewer refuse and no majority applies, the outcome is left
undecided (NO_QUORUM, ``maybe_applied``): trying a higher tag while the first
may still be read could let a reader see the value, then a later write, then
the value again.

Why it is linearizable (ABD's argument, with "applied" in place of "minted
above a majority"): a write acknowledged at tag T was applied by a majority,
each holding less than T when it came. Any write acknowledged before this one
began is on a majority too, the two majorities share a replica, and that
replica held the earlier tag when T came: so T is above it.

``created`` is exact in the same sense as the LOOKUP path's: the newest copy the
answers showed (this node's and every replica's, before this write's own tags)
was absent.

A PUT left undecided leaves its key *stranded* on this node: its copy may be
above anything a majority holds (a coordinator partitioned away, not yet
knowing it, keeps writing). A retry through another node cannot find that
attempt, and if this node went on minting above its own stranded copies, the
first attempt's value could later surface above writes made after the retry.
So a stranded key takes the LOOKUP round here until one such write of it has
succeeded, and so does a key whose one-round-trip PUT is still undecided
(``one_trips``): each stranded copy is at most one above what this node held.

Only the first attempt of a PUT takes this path (a retry might find its
earlier attempt's tag and finish it, which LOOKUP does, ``applied.py``), only
with every peer usable, and only in clusters of three nodes: with more, a dead
tag could be applied and remembered (with its request id) by a replica the
next attempt does not reach.

Any write that ends with ``maybe_applied`` strands its key
(``_ReplicatedWrite._answer``), and the LOOKUP path will not mint above such
a copy while no answer holds it (``operations.Write._mint``).

Stranded keys are kept in memory and marked durably (``NodeCore.strand``), and
rebuilt at start from those marks and the tentative request records on disk.
"""

from __future__ import annotations

from typing import Any

from ...protocol.errors import NoQuorumError
from ...protocol.messages import PutReply, Version
from .dead_copy import DeadCopyRepair
from .fanout import FAILED, OK, Fanout
from .keydir import Copy
from .operations import MINTS_WITHOUT_WAITING, WRITE_NO_QUORUM, _ReplicatedWrite, disk_error
from .services import CoreServices

# The cluster size for a PUT to take one round trip: with more nodes, see above;
# with two, a refusal by the one peer can never be a majority's, so every race
# would end undecided where a LOOKUP round would have succeeded.
ONE_TRIP_NODES = 3
# Keys stranded at once before every PUT through this node takes the LOOKUP
# path: a bound on the set's memory after a long partition.
MAX_STRANDED = 100_000


# As node.py's SERVES_IN_PROGRESS: the LOOKUP round after a stall moved the one
# seed in 60,000 that reached ``joining-vouches``'s case, so that mutant also
# trusts PUTs read after a stall, as the core did before (docs/design.md 3).
TRUSTS_AFTER_STALL = frozenset({"one-trip-after-stall", "joining-vouches"})


def takes_one_trip(core: CoreServices, request) -> bool:
    """Whether this PUT goes out in one round trip."""
    if core.mutant == "no-lookup" or core.joining or core.cluster_size != ONE_TRIP_NODES:
        return False
    if len(core.stranded) >= MAX_STRANDED or jumps_the_floor(core, core.keydir.latest_version(request.key)):
        return False
    if request.retry and core.mutant != "one-trip-retries":
        return False
    if core.now < core.stalled_until and core.mutant not in TRUSTS_AFTER_STALL:
        # Read just after this node could not run: it may have waited here while
        # its client gave up on it and had it applied elsewhere (NodeCore._clock).
        return False
    if request.request is not None and core.applied.find(request.request, request.key, core.now) is not None:
        return False  # this node applied it already: the LOOKUP path finishes that write
    if (request.key in core.stranded or request.key in core.one_trips) and core.mutant != "ignore-stranded":
        return False
    if request.key in core.writes_in_progress and core.mutant not in MINTS_WITHOUT_WAITING:
        # A proposal above a copy still in progress here would be stacked on it:
        # the LOOKUP path waits for that write instead (operations.Write._mint).
        return False
    return len(core.usable_peers()) == len(core.peer_ids)


def jumps_the_floor(core: CoreServices, above: Version) -> bool:
    """Whether a tag minted above ``above`` would jump to the tag floor (tombstones.py).
    Other nodes may not have adopted that floor yet and mint below it, so an
    undecided copy there would outrank their later writes. Such a tag takes the
    LOOKUP round, which writes nothing until a majority has answered, so no copy
    of it is left on a node cut off from the others."""
    return core.tombstones.floor_target > above.counter and core.mutant != "one-trip-over-floor"


# As operations.py's MINTS_WITHOUT_WAITING: waiting for a first-hand answer to know
# ``created`` (``OneTripWrite._created_unknown``, 2026-12-06) moved the seeds that
# caught ``serve-in-progress`` (2106, whose search from 2000 then found none within
# the default count) and ``count-newer-as-applied`` (20), so those mutants also
# answer at once, as the core did before.
ANSWERS_CREATED_SECOND_HAND = frozenset({"created-second-hand", "serve-in-progress", "count-newer-as-applied"})


class OneTripWrite(_ReplicatedWrite):
    __slots__ = (
        "_acknowledged", "_acks_first_hand", "_acks_second_hand", "_attempt", "_commits_pending", "_dead",
        "_fanout", "_heard", "_mine", "_newest_heard", "_packed", "_refused_tags",
    )

    def __init__(self, core: CoreServices, token: Any, request, packed: bytes | None) -> None:
        super().__init__(core, token, request)
        self._packed = packed
        self._attempt = 0
        self._mine: set[Version] = set()  # every tag this write minted
        self._dead: set[Version] = set()  # those a majority refused
        # Those a replica refused: it held newer, which may be a write acknowledged
        # before this PUT began (its majority's other member not answering here).
        self._refused_tags: set[Version] = set()
        self._acknowledged: Version | None = None
        self._heard: list[Copy] = []  # what replicas held before this write's tags reached them
        self._newest_heard = core.keydir.latest_version(request.key)
        self._commits_pending = 0  # this write's tags handed to the disk and not yet done

    def _success(self) -> PutReply:
        before = [copy for copy in self._heard if copy.version < self._version and copy.version not in self._mine]
        created = max(before, key=lambda copy: copy.version).absent
        return PutReply(self._request.id, self._version, created)

    def start(self) -> None:
        self._core.one_trip_started(self._request.key)
        self._propose()

    def _answer(self, error: Exception | None) -> None:
        if self._answered:
            return
        # The fanout's callback refers to this write: let go of it, or the two
        # would form a cycle only the garbage collector frees (rounds.py says why).
        self._fanout = None
        super()._answer(error)
        if not self._commits_pending:
            self._release_readers()

    def _release_readers(self) -> None:
        """Once the PUT is answered and every tag it minted is committed here (or
        refused by the disk): give the key's readers its copy, unless that copy is
        a dead tag. A commit still under way when the PUT is answered (its tags
        went to the peers with it) may yet make a dead tag this node's copy."""
        core, key = self._core, self._request.key
        committed = core.keydir.committed.get(key)
        if committed is not None and committed.version in self._dead and core.mutant != "serve-dead-tags":
            # Its readers stay held until this node holds a newer copy (dead_copy.py).
            DeadCopyRepair(core, key, committed.version).start()
            return
        if (committed is not None and committed.version in self._refused_tags - self._dead
                and committed.version != self._acknowledged and core.mutant != "serve-refused-tags"):
            # Undecided, but refused by a replica holding newer: with the third node
            # silent, that newer copy may be a write acknowledged before this PUT
            # began (on the refuser and the silent node), and this tag below it. A
            # reader given it would see this value, then that older write's (a chaos
            # run of partitions and pauses, 24 clients on 3 keys, saw it): held as a
            # dead tag's readers are, until this node holds newer, or a peer holds it too.
            DeadCopyRepair(core, key, committed.version, undecided=True).start()
            return
        core.one_trip_ended(key)

    def _propose(self) -> None:
        core, key = self._core, self._request.key
        local = core.keydir.latest(key)
        if local.version not in self._mine:
            self._heard.append(local)
        # The first tag is proposed above this node's copy alone; a dead tag's retry
        # is minted above every answer, a majority's, like a LOOKUP PUT's (minter.py).
        self._version = version = core.mint(key, max(local.version, self._newest_heard), proposed=not self._attempt)
        self._mine.add(version)
        self._started_here()
        self._attempt += 1
        attempt = self._attempt
        self._acks = self._refused = self._failed = 0  # this attempt's, this node's own in _acks
        # Of this attempt's peer acknowledgements, those that said what the replica held
        # before this write's tag came (``_replied``); the others held it already.
        self._acks_first_hand = self._acks_second_hand = 0
        self._local_pending = True
        self._commits_pending += 1
        self._fanout = None

        def stored(error: Exception | None) -> None:
            self._commits_pending -= 1
            request_id = self._request.request
            if error is None and request_id is not None and core.mutant != "forget-late-commits":
                # As for every write: a retry through this node finds the tag and
                # finishes that write, rather than apply the PUT a second time.
                # Tentative until a peer applies it (see ``Applied.tentative``).
                # Remembered even if the PUT was answered meanwhile (its deadline
                # passed while this node was stopped): the row is durable, a
                # reader may be given it, and its write-back must carry the id.
                core.applied.remember(request_id, key, version, core.now, tentative=True)
            if error is not None and not core.commits_first:
                core.lost_a_sent_tag(key, version)  # its REPLICATEs went out with it
            if self._answered:
                if not self._commits_pending:
                    self._release_readers()
                return
            if attempt != self._attempt:
                return
            self._local_pending = False
            if error is not None:
                # The tag went to the peers with it: it may be applied there (and
                # then ``_answer`` strands the key, as for any such write).
                self._answer(disk_error(error, maybe_applied=not core.commits_first or attempt > 1))
                return
            self._acks += 1
            if core.commits_first:
                self._send(attempt)
            self._decide()

        # Committed here while the peers commit it (operations._ReplicatedWrite._commit).
        core.store(key, version, False, self._request.value, self._packed, stored, request=self._request.request,
                   tentative=True)
        if not core.commits_first:
            self._send(attempt)

    def _send(self, attempt: int) -> None:
        core = self._core
        fanout = Fanout(core, self._request.key, self._version, False, self._request.value, core.peer_ids,
                        self._deadline, lambda peer, outcome: self._replied(attempt, peer, outcome),
                        request=self._request.request, exact=True)
        # Peers that failed at once (unusable now) may have decided it already:
        # then keep no reference, or the two would form a cycle (``_answer``).
        self._fanout = None if self._answered or attempt != self._attempt else fanout

    def _created_unknown(self) -> bool:
        """Acknowledged by a majority, but not by a majority whose members said what they
        held before this tag came, while a peer's answer is still to come. A replica
        that had the tag second hand (a quorum read wrote it back from the replica that
        took it from us) hid the live value it held before: ``created`` came from this
        node's stale copy alone, True over a value acknowledged and read before this PUT
        began (a probe driving real cores by hand; seed 839 of the default run with a
        check of ``created``). The replica that took it from us answers with what it held."""
        if not self._acks_second_hand or 1 + self._acks_first_hand >= self._core.quorum:
            return False
        return self._peers_answered() < len(self._core.peer_ids)

    def _peers_answered(self) -> int:
        """This attempt's answers from peers (``_acks`` counts this node's own commit too)."""
        return self._acks - (not self._local_pending) + self._refused + self._failed

    def _expire(self) -> None:
        if not self._answered and self._quorum_reached():
            # Waiting only to learn ``created``: the write itself is acknowledged.
            self._acknowledged = self._version
            self._answer(None)
            return
        super()._expire()

    def _replied(self, attempt: int, peer: str, outcome: str) -> None:
        if attempt != self._attempt or self._answered:
            return
        reply = self._fanout.replies.get(peer) if self._fanout is not None else None
        if reply is not None:
            if reply.prior is not None and reply.prior not in self._mine:
                self._heard.append(Copy(reply.prior, bool(reply.prior_deleted), None))
            self._newest_heard = max(self._newest_heard, reply.version)
        if outcome == OK:
            self._acks += 1
            if reply is not None and reply.prior is not None and (reply.prior in self._mine or reply.prior > self._version):
                # It held this tag already (a quorum read's write-back from a replica that
                # took it from us, a duplicate), or newer (a DELETE that read it): what it
                # held before the tag came is unknown, and ``created`` cannot count it.
                self._acks_second_hand += 1
            else:
                self._acks_first_hand += 1
            if self._request.request is not None:
                # A peer applied it: with this node, a majority of three held less
                # when it came, so it is above every write finished before this
                # PUT began (the module docstring), whatever comes after.
                self._core.applied.remember(self._request.request, self._request.key, self._version, self._core.now)
        elif outcome == FAILED:
            self._failed += 1
        else:
            self._refused += 1
            self._refused_tags.add(self._version)
        self._decide()

    def _decide(self) -> None:
        core = self._core
        if self._answered:
            return
        if self._quorum_reached():
            if self._created_unknown() and core.mutant not in ANSWERS_CREATED_SECOND_HAND:
                return  # until the replica that had the tag from us answers (or ``_expire``)
            self._acknowledged = self._version
            self._answer(None)
            return
        if self._refused >= (1 if core.mutant == "retry-after-any-refusal" else core.quorum):
            # A dead tag: a retry of this PUT could only leave it undecided
            # (operations.Write._complete), so it is not offered to one.
            self._dead.add(self._version)
            if self._request.request is not None:
                core.applied.forget(self._request.request, self._request.key, self._version)
            if core.now < self._deadline and not jumps_the_floor(core, self._newest_heard):
                core.stats.one_trip_retries += 1
                self._propose()
                return
            if core.now < self._deadline:
                # Nothing anyone can read was written: a retry takes the LOOKUP path.
                core.stats.no_quorum_writes += 1
                self._answer(NoQuorumError(
                    f"{WRITE_NO_QUORUM}: PUT of {self._request.key!r}: its tag was behind a majority's and the tag "
                    "floor is above theirs; nothing was written", maybe_applied=False))
                return
        answered = self._peers_answered()
        if self._acks + len(core.peer_ids) - answered + self._local_pending < core.quorum:
            self._no_quorum(f"{self._acks} of {core.cluster_size} nodes took its tag, {self._refused} held a newer "
                            f"one and {self._failed} did not answer", maybe_applied=True)
