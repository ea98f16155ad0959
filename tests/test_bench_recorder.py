"""bench.recorder on made-up clocks: HdrHistogram percentiles, the open-loop schedule and
its correction for coordinated omission, and the failover timeline."""

import pytest

from kvwire.bench.recorder import LatencyRecorder, Schedule, Timeline

SERVICE_S = 0.001
STALL = (1.0, 1.5)  # the server answers nothing in between


def simulate_open_loop(rate: float, seconds: float) -> tuple[LatencyRecorder, LatencyRecorder]:
    """One connection, one request in flight, against a server that stalls: latency from the
    intended start (corrected) and from the moment the request was actually sent (naive)."""
    corrected, naive = LatencyRecorder(), LatencyRecorder()
    schedule, now = Schedule(rate, start=0.0), 0.0
    while schedule.next_start() < seconds:
        if not schedule.due(now):
            now = schedule.next_start()
            continue
        intended, sent = schedule.take(), now
        begins = STALL[1] if STALL[0] <= sent < STALL[1] else sent
        now = begins + SERVICE_S  # completed; with one in flight, the next can only go now
        corrected.record(intended, now)
        naive.record(sent, now)
    return corrected, naive


def test_latency_counts_from_the_intended_start_so_a_stall_shows_in_the_percentiles():
    corrected, naive = simulate_open_loop(rate=200, seconds=3.0)
    assert len(corrected) == len(naive) == 600
    # Naive timing sees one slow request: the one sent as the stall began.
    assert naive.percentile_ms(99) == pytest.approx(1.0, rel=0.01)
    assert naive.summary_ms()["max"] == pytest.approx(500, rel=0.01)
    # From the schedule, the 100 requests due during the stall all waited, up to 500 ms.
    assert corrected.percentile_ms(90) > 200
    assert corrected.percentile_ms(99) > 400
    assert corrected.summary_ms()["max"] == pytest.approx(501, rel=0.01)
    assert corrected.percentile_ms(50) == pytest.approx(1.0, rel=0.01)


def test_percentiles_are_exact_to_three_significant_digits():
    recorder = LatencyRecorder()
    for micros in range(1, 10_001):  # 1 µs .. 10 ms, once each
        recorder.record(0.0, micros / 1e6)
    summary = recorder.summary_ms()
    assert summary["p50"] == pytest.approx(5.0, rel=0.002)
    assert summary["p90"] == pytest.approx(9.0, rel=0.002)
    assert summary["p99"] == pytest.approx(9.9, rel=0.002)
    assert summary["p999"] == pytest.approx(9.99, rel=0.002)
    assert summary["max"] == pytest.approx(10.0, rel=0.002)


def test_an_empty_recorder_reports_none_and_merging_across_processes_adds_counts():
    assert LatencyRecorder().summary_ms() == dict.fromkeys(["p50", "p90", "p99", "p999", "max"])
    fast, slow = LatencyRecorder(), LatencyRecorder()
    for _ in range(99):
        fast.record(0.0, 0.001)
    slow.record(0.0, 2.0)
    merged = LatencyRecorder()
    merged.merge(fast.encode())  # as a worker process sends it
    merged.merge(slow)
    assert len(merged) == 100
    assert merged.percentile_ms(50) == pytest.approx(1.0, rel=0.001)
    assert merged.summary_ms()["max"] == pytest.approx(2000, rel=0.001)


def test_a_schedule_hands_out_the_backlog_each_with_its_own_time():
    schedule = Schedule(rate=100, start=10.0)
    assert schedule.due(9.99) == 0
    assert schedule.due(10.0) == 1
    assert schedule.due(10.095) == 10  # 10.00, 10.01, ... 10.09
    assert [round(schedule.take(), 6) for _ in range(3)] == [10.0, 10.01, 10.02]
    assert schedule.due(10.095) == 7
    with pytest.raises(ValueError, match="rate must be positive"):
        Schedule(rate=0, start=0.0)


def test_the_timeline_buckets_by_completion_and_finds_the_longest_stall():
    timeline = Timeline(start=100.0, interval=0.1)
    for n in range(10):  # 100 per second for 0.1 s, 1 ms each
        timeline.success(100.0 + n / 100, 100.001 + n / 100)
    timeline.error(100.25)
    timeline.success(100.3, 100.72)  # waited 420 ms
    rows = timeline.rows(until=101.0)
    assert [row["t"] for row in rows] == [pytest.approx(t / 10) for t in range(10)]
    assert [row["ok"] for row in rows] == [10, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    assert [row["errors"] for row in rows] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert rows[0]["p99_ms"] == pytest.approx(1.0) and rows[1]["p99_ms"] is None
    assert rows[7]["p99_ms"] == pytest.approx(420.0)
    # Last success of the first burst at 100.091, next at 100.72.
    assert timeline.longest_stall(until=101.0) == pytest.approx(0.629)
