"""The core's virtual timers (kvwire.server.core.timers): order, cancellation, and a bounded heap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvwire.server.core.timers import MIN_CANCELLED_TO_COMPACT, Timers

# An operation: schedule a timer at a time, cancel the i-th timer scheduled so far, or run what is due by a time.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 50)),
        st.tuples(st.just("cancel"), st.integers(0, 10_000)),
        st.tuples(st.just("run"), st.integers(0, 60)),
    ),
    max_size=400,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_timers_fire_as_a_plain_sorted_list_says_whatever_is_cancelled(ops):
    timers, fired = Timers(), []
    expected_fired: list[int] = []
    model: list[tuple[int, int]] = []  # (when, number) of live timers, the reference
    handles = []
    for op, value in ops:
        if op == "schedule":
            number = len(handles)
            handles.append(timers.schedule(value, lambda number=number: fired.append(number)))
            model.append((value, number))
        elif op == "cancel" and handles:
            number = value % len(handles)
            handles[number].cancel()
            model = [entry for entry in model if entry[1] != number]
        elif op == "run":
            due = sorted(entry for entry in model if entry[0] <= value)
            expected_fired += [number for _, number in due]
            model = [entry for entry in model if entry[0] > value]
            timers.run_due(value)
        assert fired == expected_fired
        assert timers.next_deadline() == (min(model)[0] if model else None)


def test_a_timer_cancelled_after_it_ran_or_twice_counts_once():
    timers, fired = Timers(), []
    first = timers.schedule(1.0, lambda: fired.append(1))
    timers.run_due(1.0)
    first.cancel()  # it ran: nothing to drop
    second = timers.schedule(2.0, lambda: fired.append(2))
    second.cancel()
    second.cancel()
    third = timers.schedule(3.0, lambda: fired.append(3))
    timers.run_due(5.0)
    assert fired == [1, 3] and timers.next_deadline() is None and timers.entries == 0


def test_cancelled_timers_do_not_pile_up_in_the_heap():
    # Each quorum operation schedules its deadline seconds ahead and cancels it
    # within milliseconds: without compaction the heap held every one of them.
    timers = Timers()
    live = [timers.schedule(1_000.0 + index, lambda: None) for index in range(10)]
    for index in range(100_000):
        timers.schedule(5.0 + index * 1e-4, lambda: None).cancel()
        assert timers.entries <= 2 * (MIN_CANCELLED_TO_COMPACT + len(live)) + 1
    assert timers.next_deadline() == 1_000.0
