"""Anti-entropy: replicas compared in the background, by key bucket, and their differences exchanged.

Every ``repair_interval`` the node takes the next usable peer in turn and sends
it DIGESTS, one digest per key bucket (``buckets.py``). The peer answers with
the buckets that differ. For each of those the node sends its entries, a page
at a time (SYNC); the peer answers which keys each side holds newer. The node
pulls the keys the peer holds newer with FETCH and stores them through the
same ``store`` every write goes through, so version tags decide as they do
everywhere: a repair can only ever move a replica forward. What the node holds
newer the peer pulls in its own rounds: every pair of nodes is compared from
both sides, and pulling only means no key crosses twice (two peers pushing to
a node that lost its disk would send it everything twice). A joining node's
round ends by copying the peer's PUT request records too, a page at a time
(REQUESTS, ``applied.py``). Transfers are paced
at ``repair_rate`` keys a second with a bounded window, and pause while this
node's disk has a backlog of foreground writes, so a refill yields to clients.

Like Cassandra's repair and Riak's active anti-entropy, this is what brings a
replica that lost its disk, or missed writes no hint recorded (hints are
bounded, ``hints.py``), back to holding every live key without any read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Collection

from ...protocol.errors import (BadRequestError, KvwireConnectionError, KvwireError, KvwireTimeoutError,
                                UnknownOpError)
from ...protocol.limits import MAX_SYNC_ENTRIES, REPAIR_BUCKETS
from ...protocol.messages import (
    NO_VERSION, Digests, DigestsReply, Fetch, FetchReply, Requests, RequestsReply, Sync, SyncReply, Version,
)
from .buckets import BucketIndex
from .effects import Notice
from .keydir import Entry
from .services import CoreServices

# Pulls in flight at once.
TRANSFER_WINDOW = 64
# How often paced transfers are started; each tick may start repair_rate * TICK.
TICK = 0.05
# Writes waiting for this node's disk above which transfers, pages and new
# rounds wait: a refill must not deepen a backlog that clients' writes are
# already queued behind.
YIELD_PENDING_WRITES = 256
# A bucket is paged through only if it still differs this long after the
# first comparison: longer than a write takes to reach every replica when the
# nodes are not overloaded (milliseconds), well under a repair interval.
CONFIRM_DELAY = 0.3
# A repair request unanswered after this many write timeouts has failed.
REQUEST_TIMEOUT_WRITES = 2
# SYNC pages awaiting their answer at once, in one round: a node that lost its
# disk pages through every bucket its peer holds a key in, one round trip each
# (all 1,024 with a peer that predates digests with tombstones).
PAGES_IN_FLIGHT = 16
LINK_DOWN = "its link went down"
# Transfers queued above which no further SYNC page is sent.
ENTRIES_PER_TRANSFER = 10
QUEUED_TRANSFERS = 4 * TRANSFER_WINDOW


@dataclass
class PeerRepair:
    """One peer's repair record, for HEALTH (``describe``)."""

    rounds: int = 0
    failed_rounds: int = 0
    last_completed: float | None = None
    # Of the last completed round:
    differing_buckets: int = 0
    keys_received: int = 0  # pulled from the peer
    keys_peer_lacks: int = 0  # held newer here: the peer pulls them in its rounds
    # Since this node started, over every round:
    total_received: int = 0
    # Rounds failed since the last that completed: the first is logged, and
    # the next to complete says how many there were (not every one, each
    # repair_interval, for as long as a peer refuses).
    failing: int = 0

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "failed_rounds": self.failed_rounds,
            "last_completed_s_ago": None if self.last_completed is None else round(now - self.last_completed, 3),
            "differing_buckets": self.differing_buckets,
            "keys_received": self.keys_received,
            "keys_peer_lacks": self.keys_peer_lacks,
            "keys_received_total": self.total_received,
        }


class _Round:
    """One comparison with one peer, from DIGESTS to the last transfer."""

    def __init__(self, peer: str, started: float) -> None:
        self.peer = peer
        self.started = started
        self.buckets: deque[int] = deque()
        self.pages: deque[tuple[int, str, bool, list[str]]] = deque()
        self.differing = 0
        self.peer_lacks = 0
        self.received = 0
        # A joining node's round: tombstones too (digests and pages), and it counts
        # as caught up only if nothing was left behind (complete stays True).
        self.full = False
        self.generation = 0  # the core's join_generation when it began
        self.complete = True
        self.pages_in_flight = 0
        self.retry_at: float | None = None  # a _next_page scheduled for then
        self.transfers = 0  # queued or in flight
        self.exchanging = True  # DIGESTS and SYNC pages still under way
        # A joining round's last step, the peer's request records (REQUESTS):
        # None before it, False while its pages come, True once copied.
        self.requests_copied: bool | None = None


class Repair:
    def __init__(self, core: CoreServices) -> None:
        self._core = core
        self.index: BucketIndex | None = None
        self.status = {peer: PeerRepair() for peer in core.peer_ids}
        self._turn = 0
        self._round: _Round | None = None
        # (round, key) to pull, waiting for the pacer
        self._queue: deque[tuple[_Round, str]] = deque()
        self._in_flight = 0
        self._allowance = 0.0
        self._refilled = core.now
        self._pacer = None
        self._starting = False

    def start(self) -> None:
        core = self._core
        if core.peer_ids and core.mutant != "no-repair":
            core.timers.schedule(core.now + core.config.repair_interval, self._next_round)

    def ensure_index(self) -> BucketIndex:
        """The bucket index, built at first use, and from then on the keydir's
        changes reach it and the tombstone collector (which times tombstones)."""
        if self.index is None:
            core = self._core
            keydir = core.keydir
            index = self.index = BucketIndex(keydir.committed)
            tombstones = core.tombstones
            tombstones.track(keydir.committed)

            def changed(key: str, old: Entry | None, new: Entry | None) -> None:
                index.changed(key, old, new)
                tombstones.changed(key, old, new)

            keydir.watch = changed
        return self.index

    # --- this node's rounds -----------------------------------------------------------

    def _next_round(self) -> None:
        core = self._core
        core.timers.schedule(core.now + core.config.repair_interval, self._next_round)
        self.try_round()

    def try_round(self, *, skip: Collection[str] = ()) -> None:
        """Begin a round with the next usable peer not in ``skip``, unless one is
        under way or the disk is busy."""
        core = self._core
        if self._round is not None:
            return  # the last one is still moving keys: one at a time
        if core.pending_writes >= YIELD_PENDING_WRITES:
            return  # clients' writes are queued for the disk: compare later
        peers = core.peer_ids
        for offset in range(len(peers)):
            peer = peers[(self._turn + offset) % len(peers)]
            if peer not in skip and core.usable(peer):
                self._turn = (self._turn + offset + 1) % len(peers)
                self._begin(peer)
                return

    def _begin(self, peer: str) -> None:
        round_ = self._round = _Round(peer, self._core.now)
        self.status[peer].rounds += 1
        if self._core.joining:
            # A joining node needs every version, tombstones too: it compares
            # digests that cover them, and pages through the buckets that differ.
            round_.full = True
            round_.generation = self._core.join_generation
        self._compare(round_, None)

    def _compare(self, round_: _Round, suspects: list[int] | None) -> None:
        """Send DIGESTS; ``suspects``: the buckets the first comparison found differing."""
        core = self._core
        if self._round is not round_:
            return
        taken = core.now
        # A joining node's digests cover tombstones (the mutant's, live keys only).
        full = round_.full and core.mutant != "join-by-live-digests"
        digests = self.ensure_index().packed_digests(tombstones=full)
        sent = self._ask(round_.peer, Digests, (digests, core.tombstones.floor_target, True if full else None),
                         lambda reply: self._digests_answered(round_, reply, taken, suspects))
        if sent is None:
            self._fail(round_, LINK_DOWN)

    def _digests_answered(self, round_: _Round, reply: Any, taken: float, suspects: list[int] | None) -> None:
        if not isinstance(reply, DigestsReply):
            self._fail(round_, self._failure(Digests, reply))
            return
        core = self._core
        tombstones = core.tombstones
        tombstones.peer_floor_reported(round_.peer, reply.floor)
        tombstones.adopt(reply.floor)
        # Digests with tombstones differ wherever live ones do (and maybe more):
        # a mismatch too many only delays a collection.
        tombstones.observed(round_.peer, reply.buckets, taken)
        tombstones.collect()
        if round_.full:
            # Paged through at once: a write still on its way only costs a page.
            # A peer that predates ``tombstones`` compared live keys only, and
            # says nothing of the rest: every bucket, as before the field.
            buckets = reply.buckets if reply.tombstones or self._core.mutant == "join-by-live-digests" \
                else range(REPAIR_BUCKETS)
            round_.buckets.extend(buckets)
            round_.differing = len(round_.buckets)
            self._next_page(round_)
            return
        if suspects is None and reply.buckets:
            # A write on its way to the peer makes its bucket differ for a
            # moment; under load that is many buckets in every comparison. Only
            # buckets that still differ a little later are paged through.
            core.timers.schedule(core.now + CONFIRM_DELAY, lambda: self._compare(round_, reply.buckets))
            return
        buckets = reply.buckets if suspects is None else sorted(set(suspects) & set(reply.buckets))
        round_.differing = len(buckets)
        round_.buckets.extend(buckets)
        self._next_page(round_)

    def _next_page(self, round_: _Round) -> None:
        """Send SYNC pages, up to ``PAGES_IN_FLIGHT`` at once, as the rate and the
        disk allow; when none is left to send or await, the exchange is over."""
        core = self._core
        round_.retry_at = None
        while self._round is round_ and round_.pages_in_flight < PAGES_IN_FLIGHT:
            if core.pending_writes >= YIELD_PENDING_WRITES or len(self._queue) >= QUEUED_TRANSFERS:
                # Under a write backlog every bucket can differ for a moment; and
                # pages must not run ahead of the transfers they produce.
                self._page_later(round_)
                return
            if not round_.pages:
                if not round_.buckets:
                    if round_.pages_in_flight == 0:
                        round_.exchanging = False
                        self._maybe_finish(round_)
                    return
                bucket = round_.buckets.popleft()
                keys = self.ensure_index().sorted_keys(bucket)
                after = ""
                pages = [keys[start:start + MAX_SYNC_ENTRIES] for start in range(0, len(keys), MAX_SYNC_ENTRIES)] or [[]]
                for number, page in enumerate(pages):
                    round_.pages.append((bucket, after, number == len(pages) - 1, page))
                    after = page[-1] if page else after
            bucket, after, last, page = round_.pages[0]
            # Pages share the rate with transfers (an entry costs a tenth of a key
            # moved), so comparing many keys is paced as moving them is.
            cost = len(page) / ENTRIES_PER_TRANSFER
            self._refill_allowance()
            if self._allowance < cost:
                self._page_later(round_)
                return
            round_.pages.popleft()
            self._allowance -= cost
            committed = core.keydir.committed
            entries = []
            for key in page:
                entry = committed.get(key)
                # A key gone since the page was cut is sent as held at no version,
                # so that the page still ends at its last key: the peer offers it.
                entries.append([key, 0, "", False] if entry is None else
                               [key, entry.version.counter, entry.version.node, entry.deleted])
            round_.pages_in_flight += 1
            sent = self._ask(round_.peer, Sync, (bucket, after, last, entries, True if round_.full else None),
                             lambda reply: self._sync_answered(round_, reply))
            if sent is None:
                self._fail(round_, LINK_DOWN)
                return

    def _page_later(self, round_: _Round) -> None:
        if round_.retry_at is None:
            round_.retry_at = self._core.now + TICK
            self._core.timers.schedule(round_.retry_at, lambda: self._next_page(round_))

    def _sync_answered(self, round_: _Round, reply: Any) -> None:
        round_.pages_in_flight -= 1
        if not isinstance(reply, SyncReply):
            self._fail(round_, self._failure(Sync, reply))
            return
        round_.peer_lacks += len(reply.wanted)
        if len(reply.offered) >= MAX_SYNC_ENTRIES:
            round_.complete = False  # the peer held back the rest for a later round
        for key in reply.offered:
            self._enqueue(round_, key)
        self._next_page(round_)

    def _fail(self, round_: _Round, why: str) -> None:
        round_.complete = False
        if self._round is round_:
            self._round = None
            status = self.status[round_.peer]
            status.failed_rounds += 1
            status.failing += 1
            if status.failing == 1:
                # Unlogged, a peer refusing every round (a frame limit too small for
                # SYNC pages, found by a probe) left replicas apart, and a joining
                # node out of every majority, with nothing said but a count in HEALTH.
                joining = " (this node, joining, takes part in no majority until a round with every peer completes)"
                self._core.effects.append(Notice(
                    "repair_failing",
                    f"anti-entropy with peer {round_.peer} failed: {why}; it is tried again in turn"
                    f"{joining if round_.full else ''}, and logged again once a round with {round_.peer} completes",
                    {"peer": round_.peer}))

    def _failure(self, asked: type, reply: Any) -> str:
        """Why a repair request failed, for the log, from what came back."""
        if reply is None:
            waited = REQUEST_TIMEOUT_WRITES * self._core.config.write_timeout
            return f"no answer to {asked.__name__} (its link closed, or none came within {waited:g} s)"
        if isinstance(reply, (KvwireConnectionError, KvwireTimeoutError)):
            # Raised on this side (the link lost, or dropped here as silent), not the
            # peer's ERROR: "it answered with UNAVAILABLE" sent an operator looking for a
            # fault on a peer that had said nothing (an operations probe's finding).
            return f"no answer to {asked.__name__} (its link was lost: {reply.message})"
        if isinstance(reply, KvwireError):
            return f"it answered {asked.__name__} with {reply.code.name}: {reply.message}"
        return f"it answered {asked.__name__} with {type(reply).__name__}"

    def _maybe_finish(self, round_: _Round) -> None:
        if self._round is round_ and not round_.exchanging and round_.transfers == 0:
            if round_.full and round_.complete and not round_.requests_copied \
                    and self._core.mutant != "join-without-requests":
                if round_.requests_copied is None:
                    round_.requests_copied = False
                    self._copy_requests(round_, 0)
                return
            self._round = None
            status = self.status[round_.peer]
            if status.failing:
                self._core.effects.append(Notice(
                    "repair_recovered", f"anti-entropy with peer {round_.peer} completed a round, after {status.failing} "
                    "that failed", {"peer": round_.peer, "failed_rounds": status.failing}))
                status.failing = 0
            status.last_completed = self._core.now
            status.differing_buckets = round_.differing
            status.keys_received = round_.received
            status.keys_peer_lacks = round_.peer_lacks
            if round_.full and round_.complete:
                self._core.repair_round_completed(round_.peer, round_.generation)

    def _copy_requests(self, round_: _Round, cursor: int) -> None:
        """Ask for the peer's request records after ``cursor``, one page at a time;
        the round counts for joining only once the last page is copied."""
        if self._ask(round_.peer, Requests, (cursor,),
                     lambda reply: self._requests_answered(round_, cursor, reply)) is None:
            self._fail(round_, LINK_DOWN)

    def _requests_answered(self, round_: _Round, cursor: int, reply: Any) -> None:
        if self._round is not round_:
            return
        if isinstance(reply, UnknownOpError):
            # A peer built before REQUESTS: it has no way to give its records,
            # and refusing to join beside it would keep this node out for ever.
            # But the operator hears of it: what it does not give is lost here.
            self._core.effects.append(Notice(
                "requests_unsupported",
                f"peer {round_.peer} does not know REQUESTS (a kvwire older than it), so this node joins without "
                "its records of recent PUT request ids: a client's retry of a PUT made in the last minute may be "
                "applied a second time; upgrade that peer",
                {"peer": round_.peer}))
            reply = RequestsReply(0, [], 0, True)
        if not isinstance(reply, RequestsReply):
            self._fail(round_, self._failure(Requests, reply))
            return
        if not reply.last and reply.cursor <= cursor:
            self._fail(round_, f"its REQUESTS pages did not move on past cursor {cursor}")  # else: paging for ever
            return
        self._core.copy_request_records(reply.records)
        if reply.last:
            round_.requests_copied = True
            self._maybe_finish(round_)
        else:
            self._copy_requests(round_, reply.cursor)

    # --- paced transfers ----------------------------------------------------------------

    def _enqueue(self, round_: _Round, key: str) -> None:
        round_.transfers += 1
        self._queue.append((round_, key))
        if self._pacer is None:
            self._pace()

    def _ask(self, peer: str, message_type: type, fields: tuple, handler: Callable[[Any], None]) -> int | None:
        return ask_with_deadline(self._core, peer, message_type, fields, handler)

    def _pace(self) -> None:
        """Start what the rate, the window and the disk allow; come back in a tick for the rest."""
        core = self._core
        self._pacer = None
        self._start_transfers()
        if self._queue:
            self._pacer = core.timers.schedule(core.now + TICK, self._pace)

    def _start_transfers(self) -> None:
        if self._starting:
            return  # a transfer that finished at once, inside the loop below: it carries on
        core = self._core
        self._starting = True
        try:
            self._refill_allowance()
            while (self._queue and self._allowance >= 1 and self._in_flight < TRANSFER_WINDOW
                   and core.pending_writes < YIELD_PENDING_WRITES):
                round_, key = self._queue.popleft()
                self._allowance -= 1
                self._in_flight += 1
                self._pull(round_, key)
        finally:
            self._starting = False

    def _refill_allowance(self) -> None:
        """A token bucket of ``repair_rate`` a second, holding two ticks' worth, or a full page's."""
        core = self._core
        rate = core.config.repair_rate
        capacity = max(2 * rate * TICK, MAX_SYNC_ENTRIES / ENTRIES_PER_TRANSFER)
        self._allowance = min(self._allowance + (core.now - self._refilled) * rate, capacity)
        self._refilled = core.now

    def _transferred(self, round_: _Round, moved: bool) -> None:
        self._in_flight -= 1
        if self._queue:
            self._start_transfers()  # a slot is free: no need to wait for the next tick
        round_.transfers -= 1
        if moved:
            round_.received += 1
            self.status[round_.peer].total_received += 1
        else:
            round_.complete = False
        self._maybe_finish(round_)

    def _pull(self, round_: _Round, key: str) -> None:
        core = self._core

        def fetched(reply: Any) -> None:
            if not isinstance(reply, FetchReply) or reply.version == NO_VERSION:
                self._transferred(round_, False)
                return
            def stored(error: Exception | None) -> None:
                if error is None and reply.request is not None:
                    core.applied.remember(reply.request, key, reply.version, core.now, tentative=core.joining)
                self._transferred(round_, error is None)

            core.store(key, reply.version, reply.deleted, None if reply.deleted else reply.value, None, stored,
                       request=reply.request, tentative=core.joining)

        # ``repair``: a joining peer answers it (only its reads' FETCHes wait), so
        # nodes joining at once, after a whole cluster lost power, catch up from each other.
        if self._ask(round_.peer, Fetch, (key, None, True), fetched) is None:
            self._transferred(round_, False)

    # --- a peer's rounds: answering DIGESTS and SYNC ---------------------------------------

    def answer_digests(self, peer: str | None, request: Digests) -> DigestsReply:
        full = bool(request.tombstones)
        differing = self.ensure_index().differing(request.digests, tombstones=full)
        tombstones = self._core.tombstones
        tombstones.adopt(request.floor)
        if peer in self.status:
            tombstones.observed(peer, differing, self._core.now)
        return DigestsReply(request.id, differing, tombstones.floor, True if full else None)

    def answer_sync(self, request: Sync) -> SyncReply:
        """Which keys of the page's range each side holds newer. A tombstone on one
        side against nothing (or another tombstone) on the other is no difference:
        both read as absent, and the digests ignore it too."""
        entries = request.entries
        if not request.last and not entries:
            raise BadRequestError("SYNC with last false must carry at least one entry (its range ends at the last)")
        after = request.after
        through = None if request.last else entries[-1][0]
        committed = self._core.keydir.committed
        keydir = self._core.keydir
        theirs: dict[str, Entry] = {}
        wanted = []
        for key, counter, node, deleted in entries:
            version = Version(counter, node)
            theirs[key] = Entry(version, deleted)
            mine = keydir.latest(key)
            if version > mine.version and not (deleted and mine.absent):
                wanted.append(key)
        offered = []
        for key in self.ensure_index().sorted_keys(request.bucket):
            if key <= after or (through is not None and key > through):
                continue
            mine_entry = committed.get(key)
            if mine_entry is None:
                continue
            their_entry = theirs.get(key)
            their_version = NO_VERSION if their_entry is None else their_entry.version
            their_absent = their_entry is None or their_entry.deleted
            if mine_entry.version > their_version and (request.tombstones or not (mine_entry.deleted and their_absent)):
                offered.append(key)
                if len(offered) == MAX_SYNC_ENTRIES:
                    break  # the rest waits for the next round
        return SyncReply(request.id, wanted, offered)

    def describe(self, peer: str, now: float) -> dict[str, Any]:
        return self.status[peer].describe(now)


def ask_with_deadline(core: CoreServices, peer: str, message_type: type, fields: tuple,
                      handler: Callable[[Any], None]) -> int | None:
    """``core.ask`` with a deadline: a reply that never comes (a message lost, a
    peer that hangs without its link closing) fails the request (``handler(None)``)
    rather than leaving what asked waiting for ever."""
    answered = False

    def settle(reply: Any) -> None:
        nonlocal answered
        if not answered:
            answered = True
            timer.cancel()
            handler(reply)

    def expire() -> None:
        core.forget(request_id)
        settle(None)

    timer = core.timers.schedule(core.now + REQUEST_TIMEOUT_WRITES * core.config.write_timeout, expire)
    request_id = core.ask(peer, message_type, fields, settle)
    if request_id is None:
        timer.cancel()
    return request_id
