"""What a benchmark records: latencies in HdrHistogram, an open-loop schedule, a timeline.

Latency is always ``completed - intended_start``. In a closed loop the intended
start is when the request was sent. In an open loop (``--rate``) it is when the
``Schedule`` said the request was due, whether or not it could be sent then: a
server that stalls for 200 ms at 1,000 requests/s delays 200 requests, not one,
and their latencies say so. This is wrk2's correction for coordinated omission
(Gil Tene, "How NOT to Measure Latency").

All times are seconds on one monotonic clock; nothing here reads a clock, so
tests drive it with made-up times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

# 1 µs to 60 s at 3 significant digits: 0.1 % resolution, about 140 kB a histogram.
LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS = 1, 60_000_000, 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


class LatencyRecorder:
    """An HdrHistogram of request latencies in microseconds; merges across processes."""

    def __init__(self) -> None:
        self.histogram = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def __len__(self) -> int:
        return self.histogram.get_total_count()

    def record(self, intended_start: float, completed: float) -> None:
        micros = round((completed - intended_start) * 1e6)
        self.histogram.record_value(min(max(micros, LOWEST_US), HIGHEST_US))

    def encode(self) -> bytes:
        """A compact form to send to another process; ``merge`` takes it."""
        return self.histogram.encode()

    def merge(self, other: LatencyRecorder | bytes) -> None:
        histogram = other.histogram if isinstance(other, LatencyRecorder) else HdrHistogram.decode(other)
        self.histogram.add(histogram)

    def percentile_ms(self, percent: float) -> float | None:
        if not len(self):
            return None
        return self.histogram.get_value_at_percentile(percent) / 1000

    def summary_ms(self) -> dict[str, float | None]:
        """p50, p90, p99, p999 and max in milliseconds; None for each when nothing was recorded."""
        summary = {name: self.percentile_ms(percent) for name, percent in PERCENTILES.items()}
        summary["max"] = self.histogram.get_max_value() / 1000 if len(self) else None
        return summary


class Schedule:
    """Fixed-rate intended start times for one stream of requests, from ``start``.

    ``due(now)`` says how many requests should have started by ``now`` and were
    not yet taken; ``take()`` hands out the next intended start. A sender that
    falls behind takes the backlog at once, each request keeping its own time.
    """

    def __init__(self, rate: float, start: float) -> None:
        if not rate > 0:
            raise ValueError(f"a schedule's rate must be positive, got {rate}")
        self.interval = 1.0 / rate
        self.start = start
        self.taken = 0

    def next_start(self) -> float:
        return self.start + self.taken * self.interval

    def due(self, now: float) -> int:
        if now < self.start:
            return 0
        started = math.floor((now - self.start) / self.interval) + 1  # starts at or before now
        # Settle rounding the same way next_start() computes a start, so a request is due exactly at it.
        while self.start + started * self.interval <= now:
            started += 1
        while started and self.start + (started - 1) * self.interval > now:
            started -= 1
        return max(0, started - self.taken)

    def take(self) -> float:
        intended = self.next_start()
        self.taken += 1
        return intended


@dataclass
class _Bucket:
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class Timeline:
    """Successes, errors and latency per ``interval`` seconds, by completion time from ``start``."""

    def __init__(self, start: float, interval: float = 0.1) -> None:
        if not interval > 0:
            raise ValueError(f"a timeline's interval must be positive, got {interval}")
        self.start, self.interval = start, interval
        self.buckets: dict[int, _Bucket] = {}
        self.success_times: list[float] = []

    def _bucket(self, when: float) -> _Bucket:
        index = max(0, int((when - self.start) / self.interval))
        bucket = self.buckets.get(index)
        if bucket is None:
            bucket = self.buckets[index] = _Bucket()
        return bucket

    def success(self, intended_start: float, completed: float) -> None:
        bucket = self._bucket(completed)
        bucket.ok += 1
        bucket.latencies_ms.append((completed - intended_start) * 1000)
        self.success_times.append(completed)

    def error(self, when: float) -> None:
        self._bucket(when).errors += 1

    def rows(self, until: float) -> list[dict[str, float | int | None]]:
        """One row per interval from ``start`` to ``until``, empty intervals included."""
        count = max(0, math.ceil((until - self.start) / self.interval))
        rows = []
        for index in range(count):
            bucket = self.buckets.get(index, _Bucket())
            rows.append({
                "t": round(index * self.interval, 6),
                "ok": bucket.ok,
                "errors": bucket.errors,
                "p99_ms": _nearest_rank(bucket.latencies_ms, 0.99),
            })
        return rows

    def longest_stall(self, until: float) -> float:
        """The longest time, in seconds, with no successful completion between ``start`` and ``until``."""
        times = [self.start, *sorted(t for t in self.success_times if self.start <= t <= until), until]
        return max(later - earlier for earlier, later in zip(times, times[1:]))


def _nearest_rank(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)], 3)
