"""Tombstone garbage collection: a tombstone is removed once no replica can need it.

A tombstone stops an older value from coming back. It can go once every
replica has stopped holding any live version of its key, has kept that up for
``tombstone_grace``, and a newer write can no longer be outranked by a copy of
the tombstone still held elsewhere. Three rules make that so:

1. **Evidence, per peer and bucket.** Anti-entropy's digests cover only live
   keys. Each comparison with a peer tells, per bucket, whether the peer's
   live keys matched this node's; a run of matches with no mismatch between
   is a *streak*. A tombstone in bucket b, committed here at t0, qualifies
   once every peer's streak in b began, and t0 passed, at least
   ``tombstone_grace`` before that peer's latest match. So for the whole grace
   period no replica held a live version of the key, and any message carrying
   an older one (sent by an operation that began before, each bounded by its
   deadline) has long arrived and been refused by a tombstone still in place.
   A peer that is down gives no evidence: its tombstones wait for it, as
   Cassandra's do for repair within gc_grace_seconds.
2. **A floor under every tag.** Before removing tombstones up to counter c,
   this node makes c its durable *tag floor*, and waits until every peer has
   reported a durable floor of at least c (peers adopt any floor they are
   sent). Every tag minted afterwards, by any node, is above its floor; a
   node that lost its disk learns the floor from the LOOKUP or FETCH replies
   of its first round. So no new write can sit below a copy of the tombstone
   that another replica has not removed yet, where that replica would count
   it as "held a newer version" and the write would vanish behind it.
3. **Only an unchanged tombstone.** The keydir removes an entry only if it is
   still that tombstone with no write pending, and the disk deletes the row
   only if it still holds that tag.
"""

from __future__ import annotations

import math
from collections import deque

from ...protocol.limits import REPAIR_BUCKETS
from ...protocol.messages import Version
from .buckets import bucket_of
from .effects import Purge, SaveFloor
from .keydir import MAX_ACCEPTED_COUNTER, Entry
from .services import CoreServices

# Tombstones removed in one collection at most; the rest go at the next (every
# repair_interval, and after each comparison with a peer). Removing one costs about
# 10 us of the event loop, so the burst when a returning peer's evidence makes a
# long outage's tombstones all qualify at once would hold it for seconds.
MAX_PURGES_PER_COLLECTION = 5_000
_NONE_WAITING: dict[str, float] = {}


class TombstoneCollector:
    def __init__(self, core: CoreServices, floor: int) -> None:
        self._core = core
        self.floor = floor  # durable: what this node reports to peers
        self.floor_target = floor  # at least floor: what it mints above, and asks others to adopt
        self.peer_floor: dict[str, int] = {}
        # Per bucket, key -> when this node committed its tombstone (or started, for
        # one loaded), oldest first: a collection walks each bucket's only as far as
        # they qualify. It walked them all, each weighed on its own at every
        # collection, though one that waits on a peer's evidence waits with its whole
        # bucket, and those younger than the grace period with it: with a replica
        # down, 1.8 s of the event loop a collection at 1,000,000 tombstones (a
        # review), long enough for its peers to take it for dead.
        # Only the buckets that hold one: a node with none (the usual case) costs
        # nothing a collection, and one with a few only their buckets, walked in
        # bucket order (as before: the simulator's seeds replay as they did).
        self._by_bucket: dict[int, dict[str, float]] = {}
        self._streak_start = {peer: [None] * REPAIR_BUCKETS for peer in core.peer_ids}
        self._last_match = {peer: [None] * REPAIR_BUCKETS for peer in core.peer_ids}
        # The buckets whose streak is None, per peer: a comparison then touches only
        # those and the differing ones, not all 1024 in Python (the simulator runs
        # one every 0.2 s per node and peer).
        self._unstarted = {peer: set(range(REPAIR_BUCKETS)) for peer in core.peer_ids}
        self.purged = 0
        # key -> (tombstone version, when) for tombstones removed within the last
        # grace period: a quorum read must not write them back (``settled``).
        self._recent: dict[str, tuple[Version, float]] = {}
        self._recent_order: deque[tuple[float, str]] = deque()  # (when, key), oldest first

    def track(self, committed: dict[str, Entry]) -> None:
        for key, entry in committed.items():
            if entry.deleted:
                self._start(key)

    def changed(self, key: str, old: Entry | None, new: Entry | None) -> None:
        if new is not None and new.deleted:
            self._start(key)
        elif old is not None and old.deleted:
            self._end(key)

    def _start(self, key: str) -> None:
        """A tombstone of ``key`` committed now: it goes to the end of its bucket's line."""
        waiting = self._by_bucket.setdefault(bucket_of(key), {})
        waiting.pop(key, None)
        waiting[key] = self._core.now

    def _end(self, key: str) -> None:
        bucket = bucket_of(key)
        waiting = self._by_bucket.get(bucket)
        if waiting is not None and waiting.pop(key, None) is not None and not waiting:
            del self._by_bucket[bucket]

    @property
    def waiting(self) -> int:
        """Tombstones held here and not yet collected."""
        return sum(map(len, self._by_bucket.values()))

    def adopt(self, floor: int) -> None:
        """A floor heard from a peer: mint above it from now on, and make it durable.
        Not one further above this node's highest tag than a REPLICATE's may be
        (``ServerConfig.max_version_jump``): a floor is a collected tombstone's tag,
        never so far ahead, and minting above 2**63 - 1 would fail every commit."""
        if floor <= self.floor_target:
            return
        core = self._core
        if floor > min(core.keydir.highest_counter + core.config.max_version_jump, MAX_ACCEPTED_COUNTER):
            return
        self.floor_target = floor
        core.effects.append(SaveFloor(floor))

    def floor_saved(self, floor: int) -> None:
        if floor > self.floor:
            self.floor = floor

    def observed(self, peer: str, differing: list[int], when: float) -> None:
        """A comparison with ``peer`` (digests taken at ``when``) found these buckets differing."""
        streak, last = self._streak_start[peer], self._last_match[peer]
        differs = set(differing)
        for bucket in self._unstarted[peer] - differs:
            streak[bucket] = when  # a streak begins
        kept = [(bucket, last[bucket]) for bucket in differs]
        last[:] = [when] * REPAIR_BUCKETS  # every bucket but the differing ones matched now
        for bucket, matched in kept:
            streak[bucket] = None
            last[bucket] = matched
        self._unstarted[peer] = differs

    def _quiet_everywhere(self, bucket: int, since: float, grace: float) -> bool:
        """Whether every peer's live keys in ``bucket`` have matched this node's, with
        no mismatch, over a window of at least ``grace`` that starts after ``since``."""
        window = self._quiet_window(bucket)
        return window is not None and window[1] - max(since, window[0]) >= grace

    def _quiet_window(self, bucket: int) -> tuple[float, float] | None:
        """When every peer's streak in ``bucket`` had begun, and this node's now or the
        earliest of their latest matches, whichever is first; None while a peer has none."""
        start, end = -math.inf, self._core.now
        for peer in self._core.peer_ids:
            first, last = self._streak_start[peer][bucket], self._last_match[peer][bucket]
            if first is None:
                return None
            start, end = max(start, first), min(end, last)
        return start, end

    def settled(self, key: str, version: Version) -> bool:
        """Whether tombstone ``version`` of ``key`` is past needing to be spread: it
        qualifies for removal here, or this node removed it (or a newer one) lately.
        A quorum read then leaves replicas with nothing for the key as they are:
        writing the tombstone back to one that already removed it would only bring
        it back, and undo the collection, for as long as the key is being read."""
        recent = self._recent.get(key)
        if recent is not None and recent[0] >= version:
            return True
        bucket = bucket_of(key)
        since = self._by_bucket.get(bucket, _NONE_WAITING).get(key)
        grace = self._core.config.tombstone_grace
        return (since is not None and self._core.now - since >= grace
                and self._quiet_everywhere(bucket, since, grace))

    def peer_floor_reported(self, peer: str, floor: int) -> None:
        self.peer_floor[peer] = floor

    def collect(self) -> None:
        """Remove every tombstone that qualifies, raising the floor first where needed
        (up to MAX_PURGES_PER_COLLECTION of them, the rest at the next collection)."""
        core = self._core
        now, grace = core.now, core.config.tombstone_grace
        recent, order = self._recent, self._recent_order
        while order and now - order[0][0] >= grace:
            when, key = order.popleft()
            held = recent.get(key)
            if held is not None and held[1] == when:
                del recent[key]
        if not self._by_bucket:
            return
        peers = core.peer_ids
        ready: list[tuple[str, Version]] = []
        committed = core.keydir.committed
        evidence = core.mutant != "gc-without-evidence"
        for bucket in sorted(self._by_bucket):
            waiting = self._by_bucket[bucket]
            window = self._quiet_window(bucket) if evidence else (-math.inf, now)
            if window is None:
                continue
            start, end = window
            # Oldest first: once one does not qualify, no later one of this bucket does.
            for key, committed_at in waiting.items():
                if now - committed_at < grace or end - max(committed_at, start) < grace:
                    break
                ready.append((key, committed[key].version))
                if len(ready) >= MAX_PURGES_PER_COLLECTION:
                    break
            if len(ready) >= MAX_PURGES_PER_COLLECTION:
                break
        if not ready:
            return
        highest = max(version.counter for _, version in ready)
        if core.mutant != "no-floor":
            self.adopt(highest)
            settled = min([self.floor, *(self.peer_floor.get(peer, 0) for peer in peers)])
            ready = [(key, version) for key, version in ready if version.counter <= settled]
        for key, version in ready:
            if core.keydir.purge(key, version):
                self._end(key)
                recent[key] = (version, now)
                order.append((now, key))
                core.forget_value(key)
                core.effects.append(Purge(key, version))
                self.purged += 1
