"""The node core: all replication logic, no I/O. Events in, effects out.

The shell hands the core every event (a request from a client or a peer, a
peer's reply or failure, a commit finished, a row loaded, a link opened or
closed, any frame heard from a peer, a tick of the clock) with the current
time, and performs the effects the core appends to ``effects``
(``kvwire.server.core.effects``). The same code runs in production under
asyncio (``kvwire.server.node``) and in the deterministic cluster simulator
(``kvwire.sim``), which replaces only the shell.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Any, Callable

from ...protocol.errors import ForbiddenError, InternalServerError, KeyNotFoundError, KvwireError, UnavailableError
from ...protocol.messages import (
    NO_VERSION,
    Consistency,
    Delete,
    Digests,
    Fetch,
    FetchReply,
    Get,
    GetReply,
    Lookup,
    LookupReply,
    Ping,
    Pong,
    Put,
    Replicate,
    ReplicateReply,
    Requests,
    RequestsReply,
    Sync,
    Version,
)
from ...protocol.limits import FRAME_OVERHEAD_BYTES, MAX_REQUEST_RECORDS
from ..cache import MISSING, ValueCache
from ..config import ServerConfig
from ..failure_detector import FailureDetector, PeerState
from .effects import CloseLink, DropConnections, Effect, Joined, Load, Notice, PeerStateChanged, Persist, Respond, SaveRequests, Send, Strand
from .hints import SWEEP_INTERVAL, HintBook
from .keydir import NO_COPY, Copy, Entry, Keydir, mark_holds
from .operations import Delete as DeleteOp
from .operations import ForwardedDelete, QuorumGet, Write
from .applied import MAX_AGE as REQUEST_MEMORY
from .applied import AppliedRequests, StaleWriteRefused
from .minter import member_of, minter_name, proposed_name
from .observed import ObservedVersions
from .one_trip import OneTripWrite, takes_one_trip
from .mending import DamagedValueError, Mending
from .repair import Repair
from .tombstones import TombstoneCollector
from .services import CoreStats
from .timers import Timers

# The most a REQUESTS_REPLY page's records take (applied.page), in bytes.
REQUESTS_PAGE_BYTES = 256 * 1024

# cached_value's answer for a key that holds no live value (never written, or deleted).
KEY_ABSENT = object()

# Deliberately broken variants, for showing that the simulator catches real
# bugs (python -m kvwire.sim --mutant NAME). Production never sets one.
MUTANTS = (
    "no-lookup",  # every PUT's tag is this node's own + 1, counting replicas holding newer as holding it
    "no-write-back",  # a quorum read answers without bringing its majority up to date
    "ack-before-commit",  # a write counts as held before it is durable
    "no-tag-tiebreak",  # tags carry no node id, so two writers can mint the same one
    "no-delete-condition",  # replicas apply a DELETE's tombstone whatever they hold
    "keep-silent-link",  # a peer found silent keeps its old connection
    "no-hint-replay",  # hints are stored but never replayed
    "no-repair",  # anti-entropy never runs
    "gc-without-evidence",  # tombstones are removed once old, whatever the peers hold
    "no-floor",  # tombstones are removed without raising the tag floor first, and tags ignore it
    "ignore-request-id",  # a PUT sent again with its request id is written a second time
    "no-join-guard",  # a node joining with an empty disk answers LOOKUP and FETCH and counts as a majority at once
    "count-newer-as-applied",  # a one-round-trip PUT counts a replica holding a newer tag as holding its own
    "retry-after-any-refusal",  # a one-round-trip PUT tries a higher tag while its first may still be read
    "one-trip-retries",  # a PUT sent again (same request id) takes the one-round-trip path too
    "complete-over-newer",  # a retried PUT finishes its earlier tag where replicas hold newer ones
    "one-trip-over-floor",  # a one-round-trip PUT mints straight over the tag floor, above what others hold
    "ignore-stranded",  # a key left undecided by a one-round-trip PUT keeps taking one round trip
    "volatile-request-ids",  # PUT request ids are remembered in memory only, so a restart forgets them
    "ignore-observed",  # a replica whose tombstone's DELETE read a refused one-round-trip tag does not say so
    "forget-read-requests",  # a replica holding newer than a quorum read's write-back does not remember its request
    "serve-in-progress",  # a reader is given the tag of a one-round-trip PUT still in progress here
    "stack-on-stranded",  # a LOOKUP PUT mints above this node's copy from a failed write that no answer holds
    "joining-vouches",  # a joining node finishing a retried PUT's tentative tag counts its own copy of it
    "one-trip-after-stall",  # a first PUT read just after this node stalled takes one round trip
    "forget-superseded-requests",  # a replica holding newer than a LOOKUP PUT's tag does not remember its request
    "forget-late-commits",  # a one-round-trip PUT's commit that lands after its answer leaves no request record
    "forget-failed-reads",  # a replica whose disk refused a LOOKUP PUT's tag keeps no record of its request
    "serve-dead-tags",  # a one-round-trip PUT that ends on its own dead tag lets its readers have it
    "keep-floor-to-self",  # LOOKUP and FETCH do not carry the coordinator's tag floor to the replicas
    "vote-after-lost-send",  # a node that sent a tag it does not hold (crash, failed commit) votes at once
    "remint-lost-tags",  # a node whose commit of a tag it sent failed mints that tag again
    "no-repair-while-joining",  # a joining node refuses anti-entropy's FETCH too, so joining nodes wait on each other
    "join-by-live-digests",  # a joining node skips the buckets whose live keys match, newer tombstones and all
    "join-without-requests",  # a joining node does not copy its peers' PUT request records
    "reuse-minter-name",  # a node restarted on a lost disk or after an unclean stop mints under the name it had
    "proposals-rank-level",  # a one-round-trip PUT's first tag ranks with tags minted above a majority, by name
    "stack-on-in-progress",  # a PUT mints above this node's copy from a write still in progress that no answer holds
    "always-stops-cleanly",  # a node stopped while joining, or holding a lost tag, starts again as after a clean stop
    "serve-refused-tags",  # a one-round-trip PUT left undecided after a refusal lets its readers have its tag
    "volatile-stranded",  # a key a write left undecided here is stranded in memory only: a clean restart forgets it
    "created-second-hand",  # a one-round-trip PUT answers created from replicas that had its tag already
    "write-after-long-stall",  # a write read after a stall longer than request ids are kept is started
    "hold-readers-of-a-held-tag",  # an undecided PUT's readers stay held though a peer holds its very tag
    "hold-undecided-below-every-peer",  # ... and though every peer answers below its tag
    "ask-every-peer-below",  # ... until every peer, not a majority, answers below its tag
    "hold-local-reads",  # a consistency=one GET waits, as quorum readers do, for an undecided PUT of its key
    "serve-failed-to-one-reads",  # a consistency=one GET is given a tag of a PUT in progress, or of one that failed
    "mint-on-stale-lookup",  # a LOOKUP PUT that waited for a write of its key here mints on its round's old answers
    "hold-joining-pulls",  # a joining peer's repair FETCH waits behind a PUT of the key left undecided here
    "complete-unrecorded",  # a retried PUT finishing its firm tag asks no replica holding newer to remember it
    "keep-readers-held",  # readers held behind a one-round-trip PUT of their key stay held once it is decided
)
# Rules that the hold on readers (``committed_copy``) now keeps the simulator from
# reaching: their mutants also serve in-progress tags, as the core did before the
# hold, and so show that each rule is still needed behind it (docs/design.md 3).
SERVES_IN_PROGRESS = frozenset({
    "serve-in-progress", "retry-after-any-refusal", "one-trip-over-floor", "ignore-observed", "forget-read-requests",
})
# Rules whose cases the simulator stopped reaching, within the seeds and mixes
# tried, once a write's local commit overlapped its REPLICATEs (docs/design.md
# 3): their mutants also commit before they replicate, and do not join after an
# unclean stop, as the core did before, and so show that each rule was needed
# then, not that the overlapped core needs it. The rules stay.
COMMITS_FIRST = frozenset({
    "one-trip-retries", "one-trip-over-floor", "volatile-request-ids", "ignore-observed", "forget-read-requests",
    "stack-on-stranded", "forget-superseded-requests", "forget-late-commits", "keep-floor-to-self",
})
# Likewise, remembering a firm tag's request when the disk refuses it moved seed
# 21740, the one that reached ``stack-on-stranded``'s case, and no other was
# found without this (10420 then, searched with this and COMMITS_FIRST in place;
# 37669 since a node's own stall is no peer's silence).
FORGETS_FAILED_READS = frozenset({"forget-failed-reads", "stack-on-stranded"})
# Rules whose cases the simulator stopped reaching, within the seeds and mixes
# searched, once a start that may have lost a tag it minted took a new name
# (minter.py, docs/design.md 3): on the seeds that caught them, the node minted
# such a tag again. Their mutants also mint under the name they had, as the core
# did before, and so show that each rule was needed then. The rules stay: each
# still guards a case a new name does not (a lost tag above what the node mints
# next, a tombstone above it), which the simulator has not reached since.
REUSES_NAMES = frozenset({"vote-after-lost-send", "join-by-live-digests"})
# Likewise, once a one-round-trip PUT's first tag ranked below the others of its
# counter (minter.py): the seeds that caught these moved, and seeds 15,000-18,999
# and 38,000-41,999 of their runs found none, so their mutants also propose under
# the plain name, as the core did before. Each rule still guards its own case.
PROPOSES_LEVEL = frozenset({"proposals-rank-level", "join-by-live-digests", "stack-on-stranded"})


class NodeCore:
    # Slots (the connection's comment, kvwire/server/connection.py): past 30 attributes
    # an instance __dict__ has no shared keys in CPython 3.11, and attribute reads slow down.
    __slots__ = (
        "_after_writes", "_caught_up_from", "_waking", "_held_readers", "_loads", "_lost_tags", "_outstanding",
        "_page_bytes", "_pings", "_proposer", "_request_ids", "_rotation", "_write_ids", "_writes", "applied",
        "cache", "cluster_size", "commits_first", "config", "connected", "detector", "effects", "hints",
        "join_generation", "joining", "keydir", "last_stall", "mending", "minter", "mutant", "node_id", "now",
        "observed", "one_trips", "peer_ids", "peers_joining", "peers_refusing_writes", "quorum", "repair",
        "disk_stalled",
        "repairing_tags", "stalled_until", "stats", "stranded", "timers", "tombstones", "writes_in_progress",
    )

    def __init__(
        self,
        config: ServerConfig,
        now: float,
        *,
        committed: dict[str, Entry] | None = None,
        hints: dict[str, dict[str, Version]] | None = None,
        floor: int = 0,
        requests: list[tuple[str, str, Version, float, bool]] | None = None,
        stranded: list[tuple[str, Version]] | None = None,
        joining: bool = False,
        unclean: bool = False,
        incarnation: str = "",
        mutant: str | None = None,
    ) -> None:
        if mutant is not None and mutant not in MUTANTS:
            raise ValueError(f"unknown mutant {mutant!r}; choose from {', '.join(MUTANTS)}")
        self.config = config
        self.node_id = config.node_id
        # The node field of every tag this node mints (minter.py): the shell gives
        # a new incarnation to a start that may have lost a tag it minted.
        reuses_name = mutant == "reuse-minter-name" or mutant in REUSES_NAMES
        self.minter = minter_name(config.node_id, "" if reuses_name else incarnation)
        # A one-round-trip PUT's first tag is minted under this one (minter.py); made
        # once here, not per PUT.
        self._proposer = self.minter if mutant in PROPOSES_LEVEL else proposed_name(self.minter)
        self.quorum = config.quorum
        self.cluster_size = config.cluster_size
        self.peer_ids = [member.node_id for member in config.peers]
        self.mutant = mutant
        self.now = now
        # Until then, PUTs may be requests that waited while this process could
        # not run (stopped, or a stalled loop): their clients may have given up and
        # sent them again elsewhere, so they take the LOOKUP round (one_trip.py).
        self.stalled_until = -math.inf
        # How long that last stall was: past the request ids' memory (applied.MAX_AGE),
        # a write read then is refused (``request``).
        self.last_stall = 0.0
        self.effects: list[Effect] = []
        self.keydir = Keydir(committed)
        self.cache = ValueCache(config.cache_entries, config.cache_bytes)
        self.timers = Timers()
        self.stats = CoreStats()
        self.hints = HintBook(self, hints)
        self.detector = FailureDetector(self.peer_ids, config.failure_timeout, now)
        self.connected: set[str] = set()
        self._rotation = itertools.count()
        self._request_ids = itertools.count(1)
        # request id -> (peer, handler of the reply, or of None for a failure)
        self._outstanding: dict[int, tuple[str, Callable[[Any], None]]] = {}
        self._pings: dict[str, int] = {}
        # Peers whose last PONG (or HELLO_REPLY) said they are joining: UP, but no voters
        # (voters_up). Forgotten when the peer goes DOWN.
        self.peers_joining: set[str] = set()
        # Peers whose last PONG said their disk refuses writes: UP, and voters, but every
        # write they are sent fails, which HEALTH counts (the shell's quorum_state).
        # Kept while the peer is DOWN, until a PONG says otherwise. The rounds do not
        # use it: a write sent there fails there, as it would anyway.
        self.peers_refusing_writes: set[str] = set()
        # Set by the shell while this node's disk is not completing writes (a commit
        # held past --disk-stall-timeout): the error every peer's REPLICATE gets then.
        self.disk_stalled: Exception | None = None
        self._write_ids = itertools.count(1)
        # write id -> (key, version, deleted, value, callbacks for its outcome)
        self._writes: dict[int, tuple[str, Version, bool, Any, list[Callable[[Exception | None], None]]]] = {}
        # key -> its Load's waiters: (callback, retried, ordered), as committed_copy takes them.
        self._loads: dict[str, list[tuple[Callable[[Copy | KvwireError], None], bool, bool]]] = {}
        self.tombstones = TombstoneCollector(self, floor)
        self.applied = AppliedRequests()
        # A REQUESTS_REPLY page's records stay under this (and under the frame
        # limit, which peers of one configuration share): 500 records at the
        # longest id and key would be about 600 KiB.
        self._page_bytes = min(REQUESTS_PAGE_BYTES, config.limits.max_frame_bytes - FRAME_OVERHEAD_BYTES)
        # What recent conditional tombstones here were conditioned on (observed.py).
        self.observed = ObservedVersions(remember=mutant != "ignore-observed")
        # Keys a write left undecided here, until a LOOKUP write passes them (one_trip.py, Write._mint).
        self.stranded: set[str] = set()
        self.one_trips: set[str] = set()  # keys with a one-round-trip PUT in progress here
        # Of those, the keys whose PUT has ended on a tag this node is bringing itself
        # past (dead_copy.py): True where the PUT's client was told it may have been
        # applied (undecided), False where it was told nothing was written (a dead tag).
        self.repairing_tags: dict[str, bool] = {}
        # Writes of each key whose tag is committed here and not yet decided, and what
        # waits for them to be (operations.Write._mint).
        self.writes_in_progress: dict[str, int] = {}
        # key -> the PUTs waiting to mint until no write of it is in progress here, oldest first.
        self._after_writes: dict[str, deque[Callable[[], bool]]] = {}
        # Keys whose woken PUT runs its LOOKUP round again: the next waits for it (_wake_a_waiter).
        self._waking: set[str] = set()
        # Readers of those keys' committed copies, waiting for the PUT to be decided (one_trip.py),
        # each with whether its copy was already asked for once more (``loaded``), and whether it is ordered.
        self._held_readers: dict[str, list[tuple[Callable[[Copy | KvwireError], None], bool, bool]]] = {}
        for request_id, key, version, at, tentative in requests or ():  # the durable log (``Persist.request``)
            self.applied.remember(request_id, key, version, at, tentative=tentative)
            if tentative and member_of(version.node) == self.node_id and self.mutant != "ignore-stranded":
                self.stranded.add(key)  # maybe undecided when this node stopped (one_trip.py)
        for key, version in stranded or ():  # marked durably by ``strand`` (Strand)
            if mark_holds(self.keydir.committed.get(key), version) and self.mutant != "ignore-stranded":
                self.stranded.add(key)
        # A node joining an existing cluster with an empty data directory (--join:
        # its disk was lost, or it replaces a removed member) holds none of the
        # cluster's writes yet. A write acknowledged by a majority that included
        # its old disk may now be on one other node only, so until anti-entropy
        # has caught it up from every peer (``repair_round_completed``) it takes
        # no part in majorities: it refuses LOOKUP and FETCH, and the reads and
        # writes it coordinates ask every peer. Cassandra's bootstrap and etcd's
        # --initial-cluster-state=existing stand in the same place.
        # After an unclean stop (``unclean``: killed, power lost) the same holds for
        # another reason: a write commits here while its REPLICATEs are already out
        # (``operations._ReplicatedWrite``), so a peer may hold a tag this node sent
        # and then lost. Voting before it has that copy back, this node and the
        # third could mint a later write below it, and the lost tag, a failed
        # write's, would surface above that write (``lost_a_sent_tag``).
        self.commits_first = mutant in COMMITS_FIRST
        self.joining = (joining or (unclean and mutant != "vote-after-lost-send" and not self.commits_first)) \
            and bool(self.peer_ids) and mutant != "no-join-guard"
        if joining and not self.peer_ids:
            # A lone node on a joining directory (a restored backup's mark) has caught
            # up from every peer, there being none: the mark goes, or every start
            # would take a new incarnation (minter.py).
            self.effects.append(Joined())
        # Bumped each time this node starts joining again: only a round begun since counts.
        self.join_generation = 0
        # key -> the newest tag this node sent and then failed to commit (``lost_a_sent_tag``).
        self._lost_tags: dict[str, Version] = {}
        self._caught_up_from: set[str] = set()
        self.repair = Repair(self)
        self.mending = Mending(self)
        self.timers.schedule(now + config.repair_interval, self._collect_tombstones)
        if self.peer_ids:
            self.timers.schedule(now, self._heartbeat)
            self.timers.schedule(now + SWEEP_INTERVAL, self._sweep_hints)
            self.repair.start()
        else:
            # No heartbeat to wake it: without this an idle lone node took a minute
            # without requests for a stall, and refused the next write (``_clock``).
            self.timers.schedule(now + config.heartbeat_interval, self._keep_time)

    # --- the shell's side ------------------------------------------------------------------

    def _clock(self, now: float) -> None:
        """Every entry point's time. The heartbeat timer (a lone node's ``_keep_time``)
        wakes a live core at least every heartbeat interval (under half the failure timeout, by the config's
        check), so a longer gap means this process did not run, and a client waiting
        on it may have sent its PUT to another node. Half the failure timeout, not
        all of it: the peers mark this node DOWN a failure timeout after its last
        frame reached them, and its last event can come later than that frame, so a
        client that moves on at DOWN may have waited less than the failure timeout
        by this node's own clock. (``StallWatch`` warns once its 100 ms check runs half
        the failure timeout late, a gap of 0.35 s by default: gaps between the two
        take the LOOKUP round without a warning.)"""
        if now - self.now > self.config.failure_timeout / 2:
            self.stalled_until = now + self.config.failure_timeout
            self.last_stall = now - self.now
            self.detector.excuse(self.now, now)
            if self.last_stall > REQUEST_MEMORY and self.mutant != "write-after-long-stall":
                self.effects.append(DropConnections(self.last_stall))
        self.now = now

    def take_effects(self) -> list[Effect]:
        effects, self.effects = self.effects, []
        return effects

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def tick(self, now: float) -> None:
        self._clock(now)
        self.timers.run_due(now)

    def request(self, token: Any, request: Any, now: float, *, from_peer: bool = False, packed: bytes | None = None,
                peer: str | None = None) -> None:
        """A client's or peer's request; answered by a ``Respond(token, ...)`` effect, now or later.
        ``peer``: the sending member's node id, when ``from_peer`` and the shell knows it."""
        self._clock(now)
        kind = type(request)
        if ((kind is Put or kind is Delete) and self.now < self.stalled_until and self.last_stall > REQUEST_MEMORY
                and self.mutant != "write-after-long-stall"):
            # Read just after this process could not run for longer than request ids are
            # kept (a hung machine): sent before that, its client has moved on, and may
            # have had it applied elsewhere and a newer write acknowledged since. Started,
            # its LOOKUP round would find no record of the id and write it again, over that
            # newer write (a load balancer's probe: a PUT it retried at once surfaced 72 s
            # later). Refused, it is applied nowhere.
            self.respond(token, StaleWriteRefused(
                f"this node could not run for {self.last_stall:.0f} s (stopped, or starved of CPU), longer than "
                f"request ids are kept ({REQUEST_MEMORY:g} s): a write read now may be one its client gave up on "
                "and sent elsewhere; request not started", maybe_applied=False))
            return
        if kind is Get:
            if self.quorum > 1 and request.consistency is not Consistency.ONE:
                QuorumGet(self, token, request).start()  # asks every peer while joining
            else:
                # ``one`` promises no order, only this node's committed copy: behind a
                # one-round-trip PUT of the key it waits only while the PUT is in progress
                # (_unordered_hold), not while peers that would decide it are away.
                self.committed_copy(request.key, lambda copy: self._answer_local_get(token, request, copy),
                                    ordered=(request.consistency is not Consistency.ONE
                                             or self.mutant == "hold-local-reads"))
        elif kind is Put:
            if takes_one_trip(self, request):
                OneTripWrite(self, token, request, packed).start()
            else:
                Write(self, token, request, packed).start()
        elif kind is Delete:
            owner = self.delete_owner()
            if from_peer or owner == self.node_id:
                DeleteOp(self, token, request, forwarded=from_peer).start()
            else:
                ForwardedDelete(self, token, request, owner).start()
        elif kind in (Replicate, Lookup, Fetch, Digests, Sync, Requests):
            if not from_peer:
                self.respond(token, ForbiddenError(
                    f"{kind.__name__.upper()} is accepted only on a connection that said HELLO with role 'peer'"))
            elif kind is Replicate:
                self._replicate(token, request, packed)
            elif self.joining and (kind is Lookup or (kind is Fetch and (
                    not request.repair or self.mutant == "no-repair-while-joining"))):
                self.respond(token, UnavailableError(
                    "this node is joining the cluster (catching up from its peers) and takes no part in majorities yet"))
            elif kind is Lookup:
                self.adopt_floor(request.floor)  # before answering: its reply's floor says so (rounds.py)
                copy = self.keydir.latest(request.key)
                applied = None if request.request is None else self.applied.find(request.request, request.key, now)
                self.respond(token, LookupReply(request.id, copy.version, copy.deleted, self.tombstones.floor_target,
                                                None if applied is None else applied.version,
                                                True if applied is not None and applied.tentative else None))
            elif kind is Digests:
                self.respond(token, self.repair.answer_digests(peer, request))
            elif kind is Sync:
                try:
                    self.respond(token, self.repair.answer_sync(request))
                except KvwireError as exc:
                    self.respond(token, exc)
            elif kind is Requests:
                # Answered while joining too, as anti-entropy's FETCH is.
                records, cursor, last = self.applied.page(request.cursor, MAX_REQUEST_RECORDS, now, self._page_bytes)
                self.respond(token, RequestsReply(request.id, records, cursor, last))
            else:
                self.adopt_floor(request.floor)
                # A joining peer's anti-entropy pull is not held behind a one-round-trip PUT
                # of the key left undecided here (one_trip.py): deciding it needs a majority's
                # answers, and with both peers joining neither could vote before it had that
                # key, so the key, its readers and its hints were held for good and no node
                # joined (seed 1009156 of the default mix). The joiner votes only once caught
                # up from every peer, so a newer tag elsewhere reaches it first; an undecided
                # tag may take effect, and a dead one is refused it (NodeCore._unordered_hold).
                ordered = not (request.repair and peer in self.peers_joining and self.mutant != "hold-joining-pulls")
                self.committed_copy(request.key, lambda copy: self._answer_fetch(token, request, copy), ordered=ordered)
        else:
            raise TypeError(f"the core does not handle {kind.__name__}")

    def answer_from_memory(self, request: Get) -> Any:
        """A GET that needs no round and no disk (alone, or ``consistency=one``, and
        the value cached or the key absent): its reply or error, at once; else None.

        The same answer ``request`` would give, without the effects machinery,
        for a GET read through the codec; one read by its bytes takes
        ``cached_value`` alone (kvwire.protocol.get_frames). A key with a
        one-round-trip PUT here is left to ``request`` (NodeCore._unordered_hold).
        """
        found = self.cached_value(request.key, request.consistency)
        if found is None:
            return None
        if found is KEY_ABSENT:
            return KeyNotFoundError(f"key {request.key!r} not found")
        return GetReply(request.id, *found)

    def cached_value(self, key: str, consistency: Consistency | None) -> tuple[Any, Version] | object | None:
        """What a GET of ``key`` answers from memory: ``(value, version)`` when the
        value is cached here, KEY_ABSENT when the key holds no live value; None
        when it needs a round or the disk, with no cache miss counted (``request``
        then reads it through committed_copy, which counts it, once)."""
        if self.quorum > 1 and consistency is not Consistency.ONE:
            return None
        if key in self.one_trips and self.mutant != "serve-failed-to-one-reads":
            return None  # its copy may be a PUT's that fails: committed_copy decides (_unordered_hold)
        entry = self.keydir.committed.get(key)
        if entry is None or entry.deleted:
            return KEY_ABSENT
        value = self.cache.hit(key)
        if value is MISSING:
            return None
        return value, entry.version

    def peer_reply(self, peer: str, request_id: int, reply: Any, now: float) -> None:
        """A reply (or an ERROR reply) from ``peer`` to one of our requests."""
        self._clock(now)
        outstanding = self._outstanding.pop(request_id, None)
        if outstanding is not None:
            outstanding[1](reply)

    def peer_failed(self, peer: str, request_id: int, now: float) -> None:
        """One of our requests to ``peer`` will never be answered (its link closed)."""
        self.peer_reply(peer, request_id, None, now)

    def persisted(self, write_id: int, error: Exception | None, now: float) -> None:
        """A ``Persist`` finished: durable when ``error`` is None."""
        self._clock(now)
        key, version, deleted, value, callbacks = self._writes.pop(write_id)
        if self.keydir.settle(key, write_id, version, deleted, error is None):
            if deleted:
                self.cache.discard(key)
            else:
                self.cache.put(key, value)
        for callback in callbacks:
            callback(error)

    def found_damaged(self, key: str, version: Version, now: float) -> None:
        """The shell's scrub found ``key``'s value at ``version`` damaged on this node's disk:
        mend it from a peer's copy, as a read that met the damage would. Not if the key has
        a newer committed version since the row was read (it replaced the damage)."""
        self._clock(now)
        entry = self.keydir.committed.get(key)
        if entry is not None and entry.version == version:
            self.mending.start(key, version)

    def loaded(self, key: str, row: tuple[Version, bool, Any] | Exception | None, now: float) -> None:
        """A ``Load`` finished with the key's committed row, None if it has none,
        or the exception that reading it raised."""
        self._clock(now)
        waiting = self._loads.pop(key, ())
        if isinstance(row, Exception):
            if isinstance(row, DamagedValueError):
                self.mending.start(key, row.version)  # from a peer's copy of that version
            # A KvwireError says itself what went wrong (a damaged value: UNAVAILABLE, read another node's copy).
            error = row if isinstance(row, KvwireError) else InternalServerError(
                f"reading {key!r} from this node's disk failed: {row}")
            for callback, _retried, _ordered in waiting:
                callback(error)
            return
        copy = NO_COPY if row is None else Copy(*row)
        entry = self.keydir.committed.get(key)
        if entry is not None and copy.version < entry.version:
            # Read before a newer commit (a waiter may have joined this Load
            # after that commit, so the row could be older than its request):
            # ask once more, from the cache or a new Load. A second stale row
            # means the file lost a commit: an error, not a loop.
            for callback, retried, ordered in waiting:
                if retried:
                    callback(InternalServerError(
                        f"this node's disk holds {key!r} at {tuple(copy.version)}, older than its committed "
                        f"{tuple(entry.version)}"))
                else:
                    self.committed_copy(key, callback, _retried=True, ordered=ordered)
            return
        if not copy.deleted and copy.version != NO_VERSION and entry is not None and entry.version == copy.version:
            self.cache.put(key, copy.value)
        holds = self._holds_readers(key)
        for callback, retried, ordered in waiting:
            # A one-round-trip PUT of the key began while the row was being read: the
            # row may be its tag, so its readers wait as later ones do (committed_copy).
            hold = (True if ordered else self._unordered_hold(key)) if holds else False
            if hold is True:
                self._held_readers.setdefault(key, []).append((callback, retried, ordered))
            elif hold is False:
                callback(copy)
            else:
                callback(hold)

    def repair_round_completed(self, peer: str, generation: int) -> None:
        """A repair round with ``peer`` finished: this node holds every version the
        peer held when it began. A joining node has joined once it has that from
        every peer, in rounds begun since it started joining (``generation``):
        every acknowledged write is on some peer, and now here."""
        if not self.joining:
            return
        if generation == self.join_generation:
            self._caught_up_from.add(peer)
            if len(self._caught_up_from) == len(self.peer_ids):
                self.joining = False
                self.effects.append(Joined())
                return
        # The next round now, not at the next repair interval: until it has
        # caught up from every peer, this node votes in no majority.
        self.repair.try_round(skip=self._caught_up_from)

    def copy_request_records(self, records: list) -> None:
        """A page of a peer's PUT request records, copied while joining (repair.py):
        remembered as the peer holds them, and kept durably like this node's own."""
        kept = []
        for request, key, counter, node, tentative in records:
            version = Version(counter, node)
            if self.applied.remember(request, key, version, self.now, tentative=tentative):
                kept.append((request, key, version, tentative))  # new here: on disk too
        if kept:
            self.effects.append(SaveRequests(kept))

    @property
    def stops_cleanly(self) -> bool:
        """Whether a stop now leaves nothing for the next start to make up for. Not
        while joining: this node may lack a tag a peer holds. Nor while it knows of
        a tag it sent and lost that its copy of the key has not passed: that is
        kept in memory only, and a peer's request record may still name the tag
        after this node has caught up, so the next start must take a new name
        (minter.py) rather than forget it and mint the tag again. The shell's
        clean stop then leaves the data directory marked as after a kill."""
        if self.mutant == "always-stops-cleanly":
            return True
        latest = self.keydir.latest_version
        return not self.joining and all(lost <= latest(key) for key, lost in self._lost_tags.items())

    def lost_tag(self, key: str) -> Version:
        """The newest tag of ``key`` this node sent and failed to commit, or NO_VERSION."""
        return self._lost_tags.get(key, NO_VERSION)

    def lost_a_sent_tag(self, key: str, version: Version) -> None:
        """This node's disk refused ``version`` of ``key`` after its REPLICATEs went
        out: a peer may hold a tag this node does not, from a write that failed.
        This node never mints that tag again (``mint``), and until it has
        caught up from every peer it votes in no majority (as after an unclean
        stop, ``__init__``), or it and the third node could mint a later write
        below that tag, which would surface above it. Kept in memory: a restart
        before the key's copy here has passed the tag is an unclean one
        (``stops_cleanly``), which joins again under a new name."""
        if not self.peer_ids:
            return
        if self.mutant != "remint-lost-tags":
            self._lost_tags[key] = max(version, self._lost_tags.get(key, version))
        if self.mutant == "vote-after-lost-send":
            return
        # Even if joining already: rounds that ended before the loss did not see the tag.
        self.joining = True
        self.join_generation += 1
        self._caught_up_from.clear()
        self.repair.try_round()

    def strand(self, key: str, version: Version | None) -> None:
        """A write of ``key`` here ended undecided: this node may hold it at a tag no
        majority has (one_trip.py). Marked durably too, so that a restart, clean or
        not, still knows it: kept in memory only, a DELETE's tombstone (never hinted)
        or a LOOKUP PUT's tag left this node free to mint above it after a clean
        restart, two above what a majority held, and a write acknowledged after the
        client's retry elsewhere was lost to it."""
        self.stranded.add(key)
        if version is not None and self.mutant != "volatile-stranded":
            self.effects.append(Strand(key, version))

    def floor_saved(self, floor: int, now: float) -> None:
        """A ``SaveFloor`` committed."""
        self._clock(now)
        self.tombstones.floor_saved(floor)

    def link_up(self, peer: str, now: float, *, joining: bool = False) -> None:
        """A link to ``peer`` is open; ``joining``: its HELLO_REPLY said it cannot vote yet."""
        self.connected.add(peer)
        self._set_peer_joining(peer, joining)
        self.heard(peer, now)

    def link_down(self, peer: str, now: float) -> None:
        """The link closed: every request on it fails now (the shell may report them again)."""
        self._clock(now)
        self.connected.discard(peer)
        for request_id, (target, _handler) in list(self._outstanding.items()):
            if target == peer:
                self.peer_failed(peer, request_id, now)

    def heard(self, peer: str, now: float) -> None:
        """Any frame from ``peer`` proves it alive."""
        self._clock(now)
        transition = self.detector.mark_heard(peer, now)
        if transition is not None:
            self.effects.append(PeerStateChanged(transition))
            self.hints.peer_up(peer)
            if self.joining:
                self.repair.try_round()  # catch up as soon as there is someone to catch up from

    # --- services for operations ----------------------------------------------------------

    def usable(self, peer: str) -> bool:
        """UP by the detector and linked: worth sending to."""
        return peer in self.connected and self.detector.is_up(peer)

    def nodes_up(self) -> int:
        """Members this node sees UP, itself included (unless joining, when it takes
        no part in majorities): a majority of them is a quorum."""
        return (not self.joining) + sum(self.detector.is_up(peer) for peer in self.peer_ids)

    def voters_up(self) -> int:
        """``nodes_up`` without the peers that said they are joining: the members that
        can answer for a majority now, as HEALTH reports them."""
        detector, joining = self.detector, self.peers_joining
        return (not self.joining) + sum(detector.is_up(peer) and peer not in joining for peer in self.peer_ids)

    def refusing_writes_up(self) -> int:
        """Of ``voters_up``, the peers whose last PONG said their disk refuses writes."""
        detector, joining = self.detector, self.peers_joining
        return sum(detector.is_up(peer) and peer not in joining for peer in self.peers_refusing_writes)

    def usable_peers(self) -> list[str]:
        return [peer for peer in self.peer_ids if self.usable(peer)]

    def delete_owner(self) -> str:
        """The node that coordinates DELETEs, as this node sees it: the lowest id
        among itself and its usable peers. Only liveness depends on it (safety
        is the conditional tombstone's): concurrent DELETEs of one key through
        different nodes meet at one coordinator, which runs them one after the
        other, so one answers "deleted" and the others NOT_FOUND instead of all
        refusing each other's tombstones and answering CONFLICT."""
        return min([self.node_id, *self.usable_peers()])

    def next_rotation(self) -> int:
        return next(self._rotation)

    def ask(self, peer: str, message_type: type, fields: tuple, handler: Callable[[Any], None]) -> int | None:
        """Send a request to a usable peer; ``handler`` gets the reply, or None if it fails."""
        if not self.usable(peer):
            return None
        return self.ask_linked(peer, message_type, fields, handler)

    def forget(self, request_id: int) -> None:
        """No longer interested in this request's reply."""
        self._outstanding.pop(request_id, None)

    def respond(self, token: Any, reply: Any) -> None:
        self.effects.append(Respond(token, reply))

    def mint(self, key: str, above: Version, *, proposed: bool = False) -> Version:
        """A new tag for a write of ``key`` by this node; callers pass the newest tag they
        must pass, this node's own included. Never at or below the tag floor
        (``tombstones.py``), nor at or below a tag of the key this node sent and
        then failed to commit (``lost_a_sent_tag``): a peer may hold that one.
        ``proposed``: above this node's own copy only, not a majority's answers,
        so it ranks below every other tag of its counter (minter.py)."""
        lost = self._lost_tags.get(key)
        if lost is not None:
            if lost <= self.keydir.latest_version(key):
                del self._lost_tags[key]  # passed: the key's own copy is above it now
            above = max(above, lost)
        counter = above.counter if self.mutant == "no-floor" else max(above.counter, self.tombstones.floor_target)
        if self.mutant == "no-tag-tiebreak":
            return Version(counter + 1, "")
        return Version(counter + 1, self._proposer if proposed else self.minter)

    def adopt_floor(self, floor: int | None) -> None:
        """A tag floor a peer reported: this node mints above it from now on."""
        if floor:
            self.tombstones.adopt(floor)

    def forget_value(self, key: str) -> None:
        self.cache.discard(key)

    def store(self, key: str, version: Version, deleted: bool, value: Any, packed: bytes | None,
              on_done: Callable[[Exception | None], None], *, request: str | None = None,
              tentative: bool = False) -> None:
        """Make ``version`` durable here, unless this node already holds it or newer.

        ``on_done(None)`` once this node durably holds ``version`` or newer;
        never earlier, so "held" is never said of what a crash could lose.
        """
        keydir = self.keydir
        if version <= keydir.latest_version(key):
            pending = keydir.newest_pending(key)
            if pending is None:
                on_done(None)
            else:
                self.after_write(pending.write_id, on_done)
            return
        write_id = next(self._write_ids)
        keydir.accept(key, write_id, version, deleted)
        self._writes[write_id] = (key, version, deleted, value, [] if self.mutant == "ack-before-commit" else [on_done])
        self.effects.append(Persist(write_id, key, version, deleted, value, packed,
                                    None if self.mutant == "volatile-request-ids" else request, tentative))
        if self.mutant == "ack-before-commit":
            on_done(None)

    def _holds_readers(self, key: str) -> bool:
        """Whether a one-round-trip PUT of ``key`` is in progress here. Its tag, committed
        here first, may yet be refused by a majority and sent again higher (one_trip.py):
        a reader given it now could see the value, then a write that began after, then
        the value again."""
        return key in self.one_trips and self.mutant not in SERVES_IN_PROGRESS

    def _unordered_hold(self, key: str) -> bool | KvwireError:
        """What a ``consistency=one`` GET, or a joining peer's anti-entropy pull, does while
        a one-round-trip PUT of ``key`` holds the key's readers: True to wait with them,
        False to read this node's copy, or the error to answer with.

        ``one`` promises no order, but never a value no PUT wrote: a PUT whose client
        was told nothing was written wrote none. While the PUT is in progress it waits,
        at most the PUT's deadline. Once the PUT has ended undecided, its client was told
        it may have been applied, and the copy is served: held, the GET waited as long as
        the peers that would decide it were away, the very time a ``one`` read is for (a
        review of the core, 2026-12-07, on real nodes; ``hold-local-reads``). Once it has
        ended on a dead tag, the copy is a write that failed, and the GET is answered
        UNAVAILABLE at once, so that its client reads another node."""
        undecided = self.repairing_tags.get(key)
        if undecided is None or self.mutant == "hold-local-reads":
            return True
        if undecided or self.mutant == "serve-failed-to-one-reads":
            return False
        return UnavailableError(
            f"this node's copy of {key!r} is from a PUT that failed, and it has yet to fetch its peers' newer "
            "copy: read another node (or, pulling it, try again later)")

    def one_trip_started(self, key: str) -> None:
        self.one_trips.add(key)

    def write_started(self, key: str) -> None:
        self.writes_in_progress[key] = self.writes_in_progress.get(key, 0) + 1

    def write_decided(self, key: str) -> None:
        left = self.writes_in_progress[key] - 1
        if left:
            self.writes_in_progress[key] = left
            return
        del self.writes_in_progress[key]
        self._wake_a_waiter(key)

    def after_writes_of(self, key: str, callback: Callable[[], bool], *, first: bool = False) -> None:
        """Call ``callback`` once no write of ``key`` is in progress here, and no PUT woken
        before it is running its round again; ``first``: before the others waiting (one
        woken that must wait again). The callback returns True if it runs its round again,
        and then calls ``woken_put_done`` once it has started a write, waits again or ends."""
        waiting = self._after_writes.get(key)
        if waiting is None:
            waiting = self._after_writes[key] = deque()
        if first:
            waiting.appendleft(callback)
        else:
            waiting.append(callback)

    def woken_put_done(self, key: str) -> None:
        self._waking.discard(key)
        self._wake_a_waiter(key)

    def _wake_a_waiter(self, key: str) -> None:
        """Wake the PUTs waiting on ``key`` one at a time, oldest first: the next only once
        the woken one has minted (its write is then in progress), has ended, or (running its
        LOOKUP round again, as one with a request id does) says it is done. Each write
        decided woke them all: those with a request id ran their rounds again, all but one
        to wait again, so k PUTs of a hot key waiting here cost some k²/2 rounds (a review:
        100 waiting, 5,050 rounds)."""
        if key in self._waking:
            return  # a woken PUT is running its round, or this loop runs further up the stack
        waiting = self._after_writes.get(key)
        while waiting and key not in self.writes_in_progress:
            self._waking.add(key)
            holds = False
            try:
                holds = waiting.popleft()()
            finally:
                if not holds:
                    self._waking.discard(key)  # even if it raised: the key must not stay held by no one
            if holds:
                return  # it holds the key until woken_put_done
        if waiting is not None and not waiting:
            del self._after_writes[key]

    def one_trip_ended(self, key: str) -> None:
        """The one-round-trip PUT of ``key`` here is decided: its readers get the copy now."""
        self.one_trips.discard(key)
        self.repairing_tags.pop(key, None)
        if self.mutant == "keep-readers-held":
            return
        for callback, retried, ordered in self._held_readers.pop(key, ()):
            self.committed_copy(key, callback, _retried=retried, ordered=ordered)

    def after_write(self, write_id: int, callback: Callable[[Exception | None], None]) -> None:
        self._writes[write_id][4].append(callback)

    def committed_copy(self, key: str, callback: Callable[[Copy | KvwireError], None], *, _retried: bool = False,
                       ordered: bool = True) -> None:
        """This node's committed copy of ``key``, from memory or after a ``Load``;
        or, if reading the disk failed, the error to answer with. While a
        one-round-trip PUT of ``key`` is in progress here, once it is decided,
        unless the reader is not ``ordered`` (a ``consistency=one`` GET, a joining peer's
        pull: _unordered_hold)."""
        if self._holds_readers(key):
            hold = True if ordered else self._unordered_hold(key)
            if hold is True:
                self._held_readers.setdefault(key, []).append((callback, _retried, ordered))
                return
            if hold is not False:
                callback(hold)
                return
        entry = self.keydir.committed.get(key)
        if entry is None:
            callback(NO_COPY)
            return
        if entry.deleted:
            callback(Copy(entry.version, True, None))
            return
        value = self.cache.get(key)
        if value is not MISSING:
            callback(Copy(entry.version, False, value))
            return
        waiting = self._loads.get(key)
        if waiting is None:
            self._loads[key] = [(callback, _retried, ordered)]
            self.effects.append(Load(key))
        else:
            waiting.append((callback, _retried, ordered))

    # --- peer requests -----------------------------------------------------------------

    def _replicate(self, token: Any, request: Replicate, packed: bytes | None) -> None:
        """Apply a peer's version if newer than what this node holds (and, for a
        conditional tombstone, if what it holds is no newer than ``expect``).

        The reply's version is what this node holds afterwards. "Not applied" is
        said only once what supersedes it is durable.
        """
        key, version = request.key, request.version
        prior = self.keydir.latest(key)
        latest = prior.version
        expect = request.expect
        if expect is not None and latest > expect and self.mutant != "no-delete-condition":
            # Refused, and said at once even if what it holds is not yet
            # durable: a refusal never counts towards a DELETE's majority.
            self.respond(token, ReplicateReply(request.id, False, latest, latest, prior.deleted))
            return
        if (request.deleted and expect is None and latest == NO_VERSION
                and self.tombstones.settled(key, version)):
            # A tombstone this node collected (or would now): holding nothing reads
            # the same, and storing it again would restart its collection, for as
            # long as another node that still holds it writes it back here.
            self.respond(token, ReplicateReply(request.id, False, NO_VERSION, NO_VERSION, False))
            return
        applied = version > latest

        def reply(error: Exception | None) -> None:
            if error is not None:
                if request.read and request.request is not None and not request.deleted \
                        and self.mutant not in FORGETS_FAILED_READS:
                    # A firm tag (above every write finished before its PUT began) is
                    # worth knowing even when this disk refused it: a later attempt of
                    # the PUT coordinated here then finishes it, the newest of its
                    # tags, rather than an older one while this one waits on another
                    # node, free to surface above writes minted at its counter. In
                    # memory only, as nothing was committed.
                    self.applied.remember(request.request, key, version, self.now, tentative=self.joining)
                self.respond(token, error)
            else:
                held = self.keydir.latest_version(key)
                # Refused, but known to have taken effect: a DELETE read exactly this
                # version before its tombstone here superseded it, or this node holds a
                # firm record of the PUT at it (applied here once, or sent by a quorum
                # read's write-back: above every write finished before the PUT began).
                observed = not applied and not request.deleted and (
                    self.observed.deleted_after_reading(key, held, version)
                    or self._firm_at(request.request, key, version))
                # ``read``: the newest on a quorum read's majority, so its PUT took effect.
                taken = applied or observed or bool(request.read)
                if request.request is not None and (taken or held == version):
                    # Not a tag this node refused: a one-round-trip PUT's refused
                    # tag may never be read, so a retry must not finish it (one_trip.py).
                    # Firm only if applied now (or read), by a node that has not lost
                    # its disk: holding exactly the tag may be its own coordinator's
                    # tentative copy, and a joining node's holding proves nothing (applied.py).
                    self.applied.remember(request.request, key, version, self.now,
                                          tentative=self.joining or not taken)
                if self.joining:
                    # What it held proves nothing (writes it lost are missing), so it
                    # says so: a one-round-trip PUT does not count it (fanout.py).
                    self.respond(token, ReplicateReply(request.id, applied, held, None, None, True))
                else:
                    self.respond(token, ReplicateReply(request.id, applied, held, latest, prior.deleted, None,
                                                       observed or None))

        if self.disk_stalled is not None:
            # Queued behind the commit the disk holds, a peer's writes piled up in memory
            # for as long as it lasted (10,000 in a probe's 30 s stall), filled the peer's
            # link until heartbeats went unanswered, and committed in one burst that held
            # the loop a second when the disk came back. Refused as a failed commit is
            # refused, through ``reply``, so that a firm tag is remembered all the same
            # (a review: refused before the core, it was not, as the forget-failed-reads
            # mutant forgets it); its sender hints it.
            reply(self.disk_stalled)
            return
        if applied and expect is not None:
            self.observed.note(key, version, expect)
        self.store(key, version, request.deleted, None if request.deleted else request.value, packed, reply,
                   request=request.request, tentative=self.joining)

    def _firm_at(self, request_id: str | None, key: str, version: Version) -> bool:
        """Whether this node remembers ``request_id`` applied to ``key`` firmly at ``version``."""
        if request_id is None or self.mutant == "ignore-observed":
            return False
        record = self.applied.find(request_id, key, self.now)
        return record is not None and record.version == version and not record.tentative

    def _answer_fetch(self, token: Any, request: Fetch, copy: Copy | KvwireError) -> None:
        if isinstance(copy, KvwireError):
            self.respond(token, copy)
        else:
            self.respond(token, FetchReply(request.id, copy.version, copy.deleted, None if copy.deleted else copy.value,
                                           self.tombstones.floor_target,
                                           None if copy.deleted else self.applied.request_of(request.key, copy.version)))

    def _answer_local_get(self, token: Any, request: Get, copy: Copy | KvwireError) -> None:
        if isinstance(copy, KvwireError):
            self.respond(token, copy)
        elif copy.absent:
            self.respond(token, KeyNotFoundError(f"key {request.key!r} not found"))
        else:
            self.respond(token, GetReply(request.id, copy.value, copy.version))

    # --- failure detection -----------------------------------------------------------------

    def _keep_time(self) -> None:
        """A lone node's wake-up every heartbeat interval, so that ``_clock`` sees a
        gap only when this process could not run."""
        self.timers.schedule(self.now + self.config.heartbeat_interval, self._keep_time)

    def _heartbeat(self) -> None:
        """PING every linked peer (unless its last PING is unanswered: a hung peer
        must not pile them up), then mark DOWN those silent too long."""
        for peer in self.peer_ids:
            if peer in self.connected and peer not in self._pings:
                request_id = self.ask_linked(peer, Ping, (), lambda reply, peer=peer: self._ponged(peer, reply))
                self._pings[peer] = request_id
        for transition in self.detector.check(self.now):
            self.effects.append(PeerStateChanged(transition))
            if transition.state is PeerState.DOWN:
                # Whatever it said, it says again when it is back (HELLO_REPLY, PONG).
                # Not whether its disk refuses writes: HELLO_REPLY does not say, and
                # forgotten here it would count as taking writes until its first PONG
                # (a partition healed showed quorum for a heartbeat). That PONG says.
                self.peers_joining.discard(transition.peer)
                if self.mutant != "keep-silent-link":
                    self.effects.append(CloseLink(transition.peer))
        self.timers.schedule(self.now + self.config.heartbeat_interval, self._heartbeat)

    def _ponged(self, peer: str, reply: Any) -> None:
        """A heartbeat's answer: the peer may say it is joining, or that it has joined."""
        self._pings.pop(peer, None)
        if type(reply) is Pong:  # else no answer (the link failed): what the peer last said stands
            self._set_peer_joining(peer, reply.joining is True)
            self._set_peer_refusing_writes(peer, reply.writable is False)

    def _set_peer_joining(self, peer: str, joining: bool) -> None:
        self._set_peer_state(peer, joining, self.peers_joining, (
            "peer_joining", f"peer {peer} is joining: it takes no part in majorities until it has caught up "
            "from every peer"), ("peer_joined", f"peer {peer} has joined: it takes part in majorities"))

    def _set_peer_refusing_writes(self, peer: str, refusing: bool) -> None:
        was_refusing = peer in self.peers_refusing_writes
        self._set_peer_state(peer, refusing, self.peers_refusing_writes, (
            "peer_refuses_writes", f"peer {peer} says its disk refuses writes: every write sent there fails "
            "until it takes them again"), ("peer_takes_writes", f"peer {peer} takes writes again"))
        if was_refusing and not refusing:
            self.hints.replay(peer)  # held while it refused them (HintBook.replay)

    def _set_peer_state(self, peer: str, now_in: bool, members: set[str], entered: tuple[str, str],
                        left: tuple[str, str]) -> None:
        """``peer`` in ``members`` if ``now_in``, else not; a Notice (event, message) when that changes."""
        if now_in == (peer in members):
            return
        (members.add if now_in else members.discard)(peer)
        event, message = entered if now_in else left
        self.effects.append(Notice(event, message, {"peer": peer}))

    def build_repair_index(self) -> int:
        """Build anti-entropy's bucket index now, rather than at the first round that
        needs it: a pass over every key, about 1.5 s a million, which at a round held
        the event loop past its peers' failure timeout. The shell calls it before it
        listens for clients and peers, who then wait for nothing but its start (its
        in-process bridge and metrics, already listening, do wait). A lone node has no
        use for one. The number of keys indexed (0 if none was built)."""
        if not self.peer_ids or self.repair.index is not None:
            return 0
        self.repair.ensure_index()
        return len(self.keydir.committed)

    def _collect_tombstones(self) -> None:
        # Tombstones are timed from the keydir's changes. A lone node has no use
        # for anti-entropy's bucket index, which costs a pass over every key.
        if self.peer_ids:
            self.repair.ensure_index()
        elif self.keydir.watch is None:
            self.tombstones.track(self.keydir.committed)
            self.keydir.watch = self.tombstones.changed
        self.tombstones.collect()
        self.timers.schedule(self.now + self.config.repair_interval, self._collect_tombstones)

    def _sweep_hints(self) -> None:
        self.hints.sweep()
        self.timers.schedule(self.now + SWEEP_INTERVAL, self._sweep_hints)

    def ask_linked(self, peer: str, message_type: type, fields: tuple, handler: Callable[[Any], None]) -> int:
        """Like ``ask``, for a peer that is linked but maybe not yet UP (heartbeats)."""
        request_id = next(self._request_ids)
        self._outstanding[request_id] = (peer, handler)
        self.effects.append(Send(peer, request_id, message_type, fields))
        return request_id

    # --- health --------------------------------------------------------------------------

    def describe_peers(self, now: float) -> list[dict[str, Any]]:
        return [
            {
                "node_id": peer,
                "healthy": self.detector.is_up(peer),
                # Its last PONG said it is catching up: UP, but not counted in healthy_nodes.
                "joining": peer in self.peers_joining,
                # Its last PONG said its disk refuses writes: UP, but not counted in healthy_nodes.
                "writable": peer not in self.peers_refusing_writes,
                "state": self.detector.state(peer).value,
                "connected": peer in self.connected,
                "last_heard_ms": round(self.detector.silent_for(peer, now) * 1000, 1),
                "pending_hints": self.hints.count(peer),
                # Why this node stopped hinting the peer (a bound was passed), until it is UP again.
                "hinting_stopped": self.hints.stopped.get(peer),
                "down_transitions": self.detector.transitions.get((peer, PeerState.DOWN), 0),
                "up_transitions": self.detector.transitions.get((peer, PeerState.UP), 0),
                "repair": self.repair.describe(peer, now),
            }
            for peer in self.peer_ids
        ]

    @property
    def pending_writes(self) -> int:
        """Writes handed to the disk and not yet settled (each counted once)."""
        return len(self._writes)
