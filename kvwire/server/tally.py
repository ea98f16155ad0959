"""Counts a node keeps for its metrics: plain integers, cheap enough for every request.

prometheus-client's own Counter and Histogram take a lock and look up a label
child on every update, about 1-2 µs each; a GET costs the node about 10 µs in
all, so three of them per request would cost several times the 5% budget
(README "What the metrics cost"). The node adds to these instead, and
``kvwire.server.metrics`` reads them when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict, deque

from ..protocol.errors import ErrorCode
from ..protocol.messages import Consistency, Get

# Request latency: from 50 µs (a GET answered from memory) to 10 s (far past
# the write timeout), about three buckets a decade.
LATENCY_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0, 10.0)
# Rows in one group commit: 1 when idle, thousands under load (max_batch_rows is 4096).
BATCH_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4096)
# One group commit's transaction, fsync included: about 1-5 ms on a healthy disk.
COMMIT_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# An error code -> its result label in the metrics.
RESULT_LABELS = {code: code.name.lower() for code in ErrorCode}
# HEALTH's recent request rate and p99 cover this many seconds.
RECENT_WINDOW_S = 10


class Buckets:
    """A histogram as plain counts: one observation is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs in it (Prometheus' le is <=).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        return cumulative(self.bounds, self.counts)


def cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    """Per-bucket counts as Prometheus' cumulative ``(le, count)`` pairs, +Inf last."""
    buckets, running = [], 0
    for bound, count in zip((*(repr(float(bound)) for bound in bounds), "+Inf"), counts):
        running += count
        buckets.append((bound, running))
    return buckets


class OpTally(Buckets):
    """One op's requests (a GET's per consistency): answers by result, and their latency histogram.

    ``answer_ok`` (inlined in ``kvwire/server/connection.py`` for replies given
    at once) and two clock reads are the metrics' whole per-request cost: about
    0.4 µs, 5% of a GET's instructions (README "What the metrics cost").
    """

    __slots__ = ("op", "consistency", "ok", "errors")

    def __init__(self, op: str, consistency: str) -> None:
        super().__init__(LATENCY_BOUNDS)
        self.op = op
        self.consistency = consistency
        self.ok = 0
        self.errors: defaultdict[str, int] = defaultdict(int)

    def answer_ok(self, seconds: float) -> None:
        self.ok += 1
        self.observe(seconds)

    def answer(self, result: str, seconds: float) -> None:
        """An answer by result code: ``ok``, or an error code's name in lower case."""
        if result == "ok":
            self.ok += 1
        else:
            self.errors[result] += 1
        self.observe(seconds)

    def results(self) -> dict[str, int]:
        counts = dict(self.errors)
        if self.ok:
            counts["ok"] = self.ok
        return counts


class RequestMetrics:
    """Requests answered by this node, by op, consistency and result, and their latency by op."""

    def __init__(self) -> None:
        self._by_type: dict[type, OpTally] = {}
        self._by_name: dict[tuple[str, str], OpTally] = {}
        # GETs are told apart by consistency; one that names none is a quorum read.
        self.get_one = self.tally("get", "one")
        self.get_quorum = self.tally("get", "quorum")
        # A DELETE a peer forwarded to this node, which coordinates DELETEs: not a second client request.
        self.forwarded_delete = self.tally("delete_forwarded")
        self.connections_refused = 0
        self.connections_timed_out = 0
        self.connections_evicted = 0
        self._snapshots: deque[tuple[float, int, list[int]]] = deque(maxlen=RECENT_WINDOW_S + 1)

    def tally(self, op: str, consistency: str = "") -> OpTally:
        """The tally of ``op`` (and, for GET, ``consistency``), made on first use."""
        tally = self._by_name.get((op, consistency))
        if tally is None:
            tally = self._by_name[(op, consistency)] = OpTally(op, consistency)
        return tally

    def tally_of_type(self, kind: type) -> OpTally:
        """The tally of a request type other than GET, found by its type: hashing a type is
        the cheapest lookup there is, and this runs for every request."""
        tally = self._by_type.get(kind)
        if tally is None:
            tally = self._by_type[kind] = self.tally(kind.__name__.lower())
        return tally

    def tally_of_request(self, request) -> OpTally:
        """The tally of ``request``: a GET's by its consistency, any other by its type."""
        if type(request) is Get:
            return self.get_one if request.consistency is Consistency.ONE else self.get_quorum
        return self.tally_of_type(type(request))

    def tallies(self) -> list[OpTally]:
        return sorted(self._by_name.values(), key=lambda tally: (tally.op, tally.consistency))

    def latency_by_op(self) -> dict[str, tuple[list[int], float]]:
        """Each op's histogram counts and sum, its consistencies merged."""
        merged: dict[str, tuple[list[int], float]] = {}
        for tally in self.tallies():
            counts, total = merged.get(tally.op, ([0] * len(tally.counts), 0.0))
            merged[tally.op] = ([a + b for a, b in zip(counts, tally.counts)], total + tally.total)
        return merged

    # --- the last few seconds, for HEALTH and the cluster page ----------------------------

    def take_snapshot(self, now: float) -> None:
        """Called about once a second: remember the totals, so HEALTH can say what changed lately."""
        merged = [0] * (len(LATENCY_BOUNDS) + 1)
        for tally in self._by_name.values():
            for index, value in enumerate(tally.counts):
                merged[index] += value
        self._snapshots.append((now, sum(merged), merged))

    def recent(self) -> dict[str, float | None]:
        """Requests per second and p99 latency (ms) between the oldest and newest snapshot."""
        if len(self._snapshots) < 2:
            return {"window_s": 0.0, "per_s": 0.0, "p99_ms": None}
        (then, count_then, counts_then), (now, count_now, counts_now) = self._snapshots[0], self._snapshots[-1]
        elapsed = now - then
        delta = [after - before for after, before in zip(counts_now, counts_then)]
        p99 = _quantile(0.99, delta)
        return {
            "window_s": round(elapsed, 1),
            "per_s": round((count_now - count_then) / elapsed, 1) if elapsed > 0 else 0.0,
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        }


def _quantile(q: float, counts: list[int]) -> float | None:
    """The q-quantile of a histogram's per-bucket counts, interpolated linearly
    within its bucket as Prometheus' histogram_quantile does; None if empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(counts):
        if below + count >= rank and count:
            if index == len(LATENCY_BOUNDS):
                return LATENCY_BOUNDS[-1]  # in +Inf: the highest finite bound, as Prometheus answers
            lower = LATENCY_BOUNDS[index - 1] if index else 0.0
            upper = LATENCY_BOUNDS[index]
            return lower + (upper - lower) * (rank - below) / count
        below += count
    return LATENCY_BOUNDS[-1]
