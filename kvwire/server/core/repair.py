"""Anti-entropy: replicas compared in the background, by key bucket, and their differences exchanged.

Every ``repair_interval`` the node takes the next usable peer in turn and sends
it DIGESTS, one digest per key bucket (``buckets.py``). The peer answers with
the buckets that differ. For each of those the node sends its entries, a page
at a time (SYNC); the peer answers which keys each side holds newer. The node
pushes the first kind with REPLICATE and pulls the second with FETCH, through
the same ``store`` every write goes through, so version tags decide as they do
everywhere: a repair can only ever move a replica forward. Transfers are paced
at ``repair_rate`` keys a second with a bounded window, and pause while this
node's disk has a backlog of foreground writes, so a refill yields to clients.

Like Cassandra's repair and Riak's active anti-entropy, this is what brings a
replica that lost its disk, or missed writes no hint recorded (hints are
bounded, ``hints.py``), back to holding every live key without any read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ...protocol.errors import BadRequestError
from ...protocol.limits import MAX_SYNC_ENTRIES
from ...protocol.messages import NO_VERSION, Digests, DigestsReply, Fetch, FetchReply, Sync, SyncReply, Version
from .buckets import BucketIndex
from .fanout import OK, Fanout
from .keydir import Entry
from .services import CoreServices

# Pushes and pulls in flight at once, all peers together.
TRANSFER_WINDOW = 64
# How often paced transfers are started; each tick may start repair_rate * TICK.
TICK = 0.05
# Writes waiting for this node's disk above which transfers wait: a refill
# must not deepen a backlog that clients' writes are already queued behind.
YIELD_PENDING_WRITES = 256


@dataclass
class PeerRepair:
    """One peer's repair record, for HEALTH (``describe``)."""

    rounds: int = 0
    failed_rounds: int = 0
    last_completed: float | None = None
    # Of the last completed round:
    differing_buckets: int = 0
    keys_sent: int = 0
    keys_received: int = 0
    # Since this node started, over every round:
    total_sent: int = 0
    total_received: int = 0

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "failed_rounds": self.failed_rounds,
            "last_completed_s_ago": None if self.last_completed is None else round(now - self.last_completed, 3),
            "differing_buckets": self.differing_buckets,
            "keys_sent": self.keys_sent,
            "keys_received": self.keys_received,
            "keys_sent_total": self.total_sent,
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
        self.sent = 0
        self.received = 0
        self.transfers = 0  # queued or in flight
        self.exchanging = True  # DIGESTS and SYNC pages still under way


class Repair:
    def __init__(self, core: CoreServices) -> None:
        self._core = core
        self.index: BucketIndex | None = None
        self.status = {peer: PeerRepair() for peer in core.peer_ids}
        self._turn = 0
        self._round: _Round | None = None
        # (round, "push" or "pull", key) waiting for the pacer
        self._queue: deque[tuple[_Round, str, str]] = deque()
        self._in_flight = 0
        self._allowance = 0.0
        self._pacer = None

    def start(self) -> None:
        core = self._core
        if core.peer_ids and core.mutant != "no-repair":
            core.timers.schedule(core.now + core.config.repair_interval, self._next_round)

    def ensure_index(self) -> BucketIndex:
        if self.index is None:
            keydir = self._core.keydir
            self.index = BucketIndex(keydir.committed)
            keydir.watch = self.index.changed
        return self.index

    # --- this node's rounds -----------------------------------------------------------

    def _next_round(self) -> None:
        core = self._core
        core.timers.schedule(core.now + core.config.repair_interval, self._next_round)
        if self._round is not None:
            return  # the last one is still moving keys: one at a time
        peers = core.peer_ids
        for offset in range(len(peers)):
            peer = peers[(self._turn + offset) % len(peers)]
            if core.usable(peer):
                self._turn = (self._turn + offset + 1) % len(peers)
                self._begin(peer)
                return

    def _begin(self, peer: str) -> None:
        core = self._core
        index = self.ensure_index()
        round_ = self._round = _Round(peer, core.now)
        self.status[peer].rounds += 1
        sent = core.ask(peer, Digests, (index.packed_digests(), 0), lambda reply: self._digests_answered(round_, reply))
        if sent is None:
            self._fail(round_)

    def _digests_answered(self, round_: _Round, reply: Any) -> None:
        if not isinstance(reply, DigestsReply):
            self._fail(round_)
            return
        round_.differing = len(reply.buckets)
        round_.buckets.extend(reply.buckets)
        self._next_page(round_)

    def _next_page(self, round_: _Round) -> None:
        if self._round is not round_:
            return
        if not round_.pages:
            if not round_.buckets:
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
        bucket, after, last, page = round_.pages.popleft()
        committed = self._core.keydir.committed
        entries = []
        for key in page:
            entry = committed.get(key)
            if entry is not None:  # gone since the page was cut: the peer offers it if it has it
                entries.append([key, entry.version.counter, entry.version.node, entry.deleted])
        if not last and not entries:
            self._next_page(round_)
            return
        sent = self._core.ask(round_.peer, Sync, (bucket, after, last, entries),
                              lambda reply: self._sync_answered(round_, reply))
        if sent is None:
            self._fail(round_)

    def _sync_answered(self, round_: _Round, reply: Any) -> None:
        if not isinstance(reply, SyncReply):
            self._fail(round_)
            return
        for key in reply.wanted:
            self._enqueue(round_, "push", key)
        for key in reply.offered:
            self._enqueue(round_, "pull", key)
        self._next_page(round_)

    def _fail(self, round_: _Round) -> None:
        if self._round is round_:
            self._round = None
            self.status[round_.peer].failed_rounds += 1

    def _maybe_finish(self, round_: _Round) -> None:
        if self._round is round_ and not round_.exchanging and round_.transfers == 0:
            self._round = None
            status = self.status[round_.peer]
            status.last_completed = self._core.now
            status.differing_buckets = round_.differing
            status.keys_sent = round_.sent
            status.keys_received = round_.received

    # --- paced transfers ----------------------------------------------------------------

    def _enqueue(self, round_: _Round, direction: str, key: str) -> None:
        round_.transfers += 1
        self._queue.append((round_, direction, key))
        if self._pacer is None:
            self._allowance = 0.0
            self._pace()

    def _pace(self) -> None:
        core = self._core
        self._pacer = None
        self._allowance = min(self._allowance + core.config.repair_rate * TICK, core.config.repair_rate * TICK * 2)
        while (self._queue and self._allowance >= 1 and self._in_flight < TRANSFER_WINDOW
               and core.pending_writes < YIELD_PENDING_WRITES):
            round_, direction, key = self._queue.popleft()
            self._allowance -= 1
            self._in_flight += 1
            if direction == "push":
                self._push(round_, key)
            else:
                self._pull(round_, key)
        if self._queue:
            self._pacer = core.timers.schedule(core.now + TICK, self._pace)

    def _transferred(self, round_: _Round, direction: str, moved: bool) -> None:
        self._in_flight -= 1
        round_.transfers -= 1
        if moved:
            status = self.status[round_.peer]
            if direction == "push":
                round_.sent += 1
                status.total_sent += 1
            else:
                round_.received += 1
                status.total_received += 1
        self._maybe_finish(round_)

    def _push(self, round_: _Round, key: str) -> None:
        core = self._core

        def send(copy: Any) -> None:
            if isinstance(copy, Exception) or copy.version == NO_VERSION or not core.usable(round_.peer):
                self._transferred(round_, "push", False)
                return
            Fanout(core, key, copy.version, copy.deleted, copy.value, [round_.peer],
                   core.now + core.config.write_timeout,
                   lambda _peer, outcome: self._transferred(round_, "push", outcome == OK), hint=False)

        core.committed_copy(key, send)

    def _pull(self, round_: _Round, key: str) -> None:
        core = self._core

        def fetched(reply: Any) -> None:
            if not isinstance(reply, FetchReply) or reply.version == NO_VERSION:
                self._transferred(round_, "pull", False)
                return
            core.store(key, reply.version, reply.deleted, None if reply.deleted else reply.value, None,
                       lambda error: self._transferred(round_, "pull", error is None))

        if core.ask(round_.peer, Fetch, (key,), fetched) is None:
            self._transferred(round_, "pull", False)

    # --- a peer's rounds: answering DIGESTS and SYNC ---------------------------------------

    def answer_digests(self, request: Digests) -> DigestsReply:
        return DigestsReply(request.id, self.ensure_index().differing(request.digests), 0)

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
            if mine_entry.version > their_version and not (mine_entry.deleted and their_absent):
                offered.append(key)
                if len(offered) == MAX_SYNC_ENTRIES:
                    break  # the rest waits for the next round
        return SyncReply(request.id, wanted, offered)

    def describe(self, peer: str, now: float) -> dict[str, Any]:
        return self.status[peer].describe(now)
