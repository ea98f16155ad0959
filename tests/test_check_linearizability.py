"""The per-key Wing–Gong–Lowe checker: hand-made histories, agreement with a
brute-force checker on many small random ones, its search budget, its speed,
and shrinking a violation to a small counterexample."""

import itertools
import random
import time

import pytest

from kvwire.check import Operation, check_linearizable, shrink

ABSENT = object()  # the brute-force model's own "no live value"


def op(index, kind, start, end, outcome, value=None, *, key="k", client=0):
    return Operation(client, kind, key, start, end, outcome, value, None, "n1", index)


def verdict(*operations, **options):
    return check_linearizable(operations, **options).verdict


# --- hand-made histories -----------------------------------------------------


def test_empty_history_is_linearizable():
    result = check_linearizable([])
    assert (result.verdict, result.keys, result.checked_keys, result.checked_operations) == ("ok", (), 0, 0)


def test_read_of_the_latest_completed_write_is_ok():
    assert verdict(op(0, "put", 0, 1, "ok", "a"), op(1, "put", 2, 3, "ok", "b"), op(2, "get", 4, 5, "ok", "b")) == "ok"


def test_stale_read_after_a_completed_write_is_a_violation():
    result = check_linearizable([op(0, "put", 0, 1, "ok", "a"), op(1, "put", 2, 3, "ok", "b"), op(2, "get", 4, 5, "ok", "a")])
    assert result.verdict == "violation"
    (key_result,) = result.keys
    assert key_result.key == "k" and key_result.verdict == "violation"
    assert "#2" in key_result.explanation.splitlines()[-1]  # the stale read is the op that could not be placed
    assert "holding 'b'" in key_result.explanation


@pytest.mark.parametrize("final", ["a", "b"])
def test_concurrent_writes_may_land_in_either_order(final):
    writes = (op(0, "put", 0, 5, "ok", "a"), op(1, "put", 1, 4, "ok", "b", client=1))
    assert verdict(*writes, op(2, "get", 6, 7, "ok", final)) == "ok"


def test_two_reads_cannot_see_concurrent_writes_in_both_orders():
    writes = (op(0, "put", 0, 5, "ok", "a"), op(1, "put", 1, 4, "ok", "b", client=1))
    reads = (op(2, "get", 6, 7, "ok", "a"), op(3, "get", 8, 9, "ok", "b"))
    assert verdict(*writes, *reads) == "violation"


def test_read_concurrent_with_a_write_may_see_old_or_new():
    for seen in ("a", "b"):
        assert verdict(op(0, "put", 0, 1, "ok", "a"), op(1, "put", 2, 6, "ok", "b"), op(2, "get", 3, 4, "ok", seen)) == "ok"


def test_touching_intervals_are_concurrent():
    # end == start: the read may still be ordered before the write.
    assert verdict(op(0, "put", 0, 1, "ok", "a"), op(1, "put", 2, 3, "ok", "b"), op(2, "get", 3, 4, "ok", "a")) == "ok"


def test_unknown_put_may_become_visible_later():
    history = [op(0, "put", 0, 1, "ok", "a"), op(1, "put", 2, None, "unknown", "b"), op(2, "get", 10, 11, "ok", "b")]
    assert verdict(*history) == "ok"


def test_unknown_put_may_never_become_visible():
    history = [op(0, "put", 0, 1, "ok", "a"), op(1, "put", 2, None, "unknown", "b"), op(2, "get", 10, 11, "ok", "a")]
    assert verdict(*history) == "ok"


def test_unknown_put_cannot_take_effect_before_it_started():
    history = [op(0, "put", 0, 1, "ok", "a"), op(1, "get", 2, 3, "ok", "b"), op(2, "put", 4, None, "unknown", "b")]
    assert verdict(*history) == "violation"


def test_unknown_put_once_seen_must_stay():
    first, unknown = op(0, "put", 0, 1, "ok", "a"), op(1, "put", 2, None, "unknown", "b")
    assert verdict(first, unknown, op(2, "get", 3, 4, "ok", "a"), op(3, "get", 5, 6, "ok", "b")) == "ok"
    assert verdict(first, unknown, op(2, "get", 3, 4, "ok", "b"), op(3, "get", 5, 6, "ok", "a")) == "violation"


def test_read_of_a_value_never_written_is_a_violation():
    result = check_linearizable([op(0, "put", 0, 1, "ok", "a"), op(1, "get", 2, 3, "ok", "z")])
    assert result.verdict == "violation" and "no PUT" in result.keys[0].explanation


def test_read_of_a_failed_write_is_a_violation():
    assert verdict(op(0, "put", 0, 1, "fail", "a"), op(1, "get", 2, 3, "ok", "a")) == "violation"


def test_not_found_before_any_write_is_ok():
    assert verdict(op(0, "get", 0, 1, "not_found"), op(1, "delete", 2, 3, "not_found")) == "ok"


def test_delete_not_found_after_an_acknowledged_put_is_a_violation():
    assert verdict(op(0, "put", 0, 1, "ok", "a"), op(1, "delete", 2, 3, "not_found")) == "violation"
    assert verdict(op(0, "put", 0, 1, "ok", "a"), op(1, "get", 2, 3, "not_found")) == "violation"


def test_delete_then_reads_of_absence():
    history = [op(0, "put", 0, 1, "ok", "a"), op(1, "delete", 2, 3, "ok"), op(2, "get", 4, 5, "not_found"), op(3, "delete", 6, 7, "not_found")]
    assert verdict(*history) == "ok"


def test_two_overlapping_deletes_of_one_live_value_is_a_violation():
    history = [op(0, "put", 0, 1, "ok", "a"), op(1, "delete", 2, 5, "ok"), op(2, "delete", 3, 6, "ok", client=1)]
    assert verdict(*history) == "violation"
    # With a write between them it is fine.
    assert verdict(*history, op(3, "put", 2, 6, "ok", "b", client=2)) == "ok"


def test_delete_ok_on_an_absent_key_is_a_violation():
    assert verdict(op(0, "delete", 0, 1, "ok")) == "violation"
    assert verdict(op(0, "put", 0, 1, "ok", "a"), op(1, "delete", 2, 3, "ok"), op(2, "delete", 4, 5, "ok")) == "violation"


def test_unknown_delete_may_explain_an_absence():
    history = [op(0, "put", 0, 1, "ok", "a"), op(1, "delete", 2, None, "unknown"), op(2, "get", 5, 6, "not_found")]
    assert verdict(*history) == "ok"
    # ... but not one observed before the delete started.
    assert verdict(op(0, "put", 0, 1, "ok", "a"), op(1, "get", 2, 3, "not_found"), op(2, "delete", 4, None, "unknown")) == "violation"


def test_unknown_delete_of_an_absent_key_is_allowed():
    assert verdict(op(0, "delete", 0, None, "unknown"), op(1, "get", 2, 3, "not_found")) == "ok"


def test_failed_operations_are_ignored():
    history = [
        op(0, "put", 0, 1, "ok", "a"),
        op(1, "put", 2, 3, "fail", "b"),
        op(2, "delete", 4, 5, "fail"),
        op(3, "get", 6, 7, "fail"),
        op(4, "get", 6, None, "unknown"),
        op(5, "get", 8, 9, "ok", "a"),
    ]
    assert verdict(*history) == "ok"


def test_values_compare_by_equality_whatever_their_type():
    history = [op(0, "put", 0, 1, "ok", {"tags": ["a", "b"], "n": 1}), op(1, "get", 2, 3, "ok", {"n": 1, "tags": ["a", "b"]})]
    assert verdict(*history) == "ok"
    assert verdict(op(0, "put", 0, 1, "ok", b"\x00"), op(1, "get", 2, 3, "ok", [None])) == "violation"


def test_keys_are_checked_independently():
    history = [
        op(0, "put", 0, 1, "ok", "a", key="x"),
        op(1, "get", 2, 3, "ok", "a", key="y"),  # y was never written
        op(2, "get", 2, 3, "ok", "a", key="x"),
    ]
    result = check_linearizable(history)
    assert result.verdict == "violation" and result.checked_keys == 2 and result.checked_operations == 3
    assert [key_result.key for key_result in result.keys] == ["y"]
    assert [o.index for o in result.keys[0].operations] == [1]


def test_meaningless_operations_are_rejected():
    with pytest.raises(ValueError, match="put cannot have outcome 'not_found'"):
        check_linearizable([op(0, "put", 0, 1, "not_found", "a")])
    with pytest.raises(ValueError, match="max_steps"):
        check_linearizable([], max_steps=0)


# --- agreement with a brute-force checker ------------------------------------


def brute_force_verdict(operations):
    """Try every subset of the unknown operations (each included one must take
    effect, with no deadline) and every order of the chosen ones consistent with
    real time, on a plain model of the register."""
    kept = [o for o in operations if o.outcome != "fail" and not (o.kind == "get" and o.outcome == "unknown")]
    required = [o for o in kept if o.outcome != "unknown"]
    optional = [o for o in kept if o.outcome == "unknown"]
    for size in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, size):
            if any_legal_order(required + list(chosen)):
                return "ok"
    return "violation"


def any_legal_order(operations):
    for order in itertools.permutations(operations):
        if respects_real_time(order) and legal(order):
            return True
    return False


def respects_real_time(order):
    return not any(later.end is not None and later.end < earlier.start for i, earlier in enumerate(order) for later in order[i + 1 :])


def legal(order):
    state = ABSENT
    for o in order:
        if o.kind == "put":
            state = o.value
        elif o.kind == "get" and o.outcome == "ok":
            if state is ABSENT or not state == o.value:
                return False
        elif o.outcome == "not_found":
            if state is not ABSENT:
                return False
        elif o.outcome == "ok":  # delete ok
            if state is ABSENT:
                return False
            state = ABSENT
        else:  # delete unknown
            state = ABSENT
    return True


VALUES = [1, 2, "a", [1], {"x": 1}]
OUTCOMES = {
    "put": ["ok", "ok", "unknown", "fail"],
    "get": ["ok", "ok", "not_found", "unknown", "fail"],
    "delete": ["ok", "not_found", "unknown", "fail"],
}


def random_history(rng):
    """Half simulate a real register (then perturb one answer), half are pure noise."""
    count = rng.randint(1, 7)
    intervals = []
    for _ in range(count):
        start = rng.randint(0, 8)
        intervals.append((start, start + rng.randint(0, 3)))
    if rng.random() < 0.5:
        return [random_op(rng, index, start, end) for index, (start, end) in enumerate(intervals)]
    return simulated_history(rng, intervals)


def random_op(rng, index, start, end):
    kind = rng.choice(["put", "get", "delete"])
    outcome = rng.choice(OUTCOMES[kind])
    value = rng.choice(VALUES) if kind == "put" or (kind == "get" and outcome == "ok") else None
    return op(index, kind, start, None if outcome == "unknown" else end, outcome, value, client=index)


def simulated_history(rng, intervals):
    points = sorted((rng.uniform(start, end), index) for index, (start, end) in enumerate(intervals))
    state, answers = ABSENT, {}
    for _, index in points:
        kind = rng.choice(["put", "put", "get", "delete"])
        start, end = intervals[index]
        if rng.random() < 0.2:  # the client never heard back: applied or not
            value = rng.choice(VALUES) if kind == "put" else None
            if kind != "get" and rng.random() < 0.5:
                state = value if kind == "put" else ABSENT
            answers[index] = op(index, kind, start, None, "unknown", value, client=index)
            continue
        if kind == "put":
            state = rng.choice(VALUES)
            answers[index] = op(index, kind, start, end, "ok", state, client=index)
        elif state is ABSENT:
            answers[index] = op(index, kind, start, end, "not_found", client=index)
        else:
            answers[index] = op(index, kind, start, end, "ok", state if kind == "get" else None, client=index)
            state = ABSENT if kind == "delete" else state
    history = [answers[index] for index in range(len(intervals))]
    if rng.random() < 0.5:
        index = rng.randrange(len(history))
        history[index] = random_op(rng, index, *intervals[index])
    return history


def test_agrees_with_brute_force_on_random_small_histories():
    rng = random.Random(20261130)
    tally = {"ok": 0, "violation": 0}
    for case in range(1500):
        history = random_history(rng)
        expected = brute_force_verdict(history)
        assert check_linearizable(history).verdict == expected, f"case {case}:\n" + "\n".join(o.describe() for o in history)
        tally[expected] += 1
    assert min(tally.values()) > 300, tally  # both verdicts well represented


# --- budget and scale --------------------------------------------------------


def test_search_budget_gives_unknown_rather_than_hanging():
    # 40 concurrent writes, then two reads no order can satisfy: refuting it means
    # visiting ~2^40 (set, state) pairs.
    writes = [op(n, "put", 0, 100, "ok", n, client=n) for n in range(40)]
    reads = [op(40, "get", 101, 102, "ok", 0), op(41, "get", 103, 104, "ok", 1)]
    began = time.monotonic()
    result = check_linearizable(writes + reads, max_steps=2_000)
    assert time.monotonic() - began < 2
    assert result.verdict == "unknown"
    (key_result,) = result.keys
    assert key_result.verdict == "unknown" and key_result.steps == 2_000 and "2000" in key_result.explanation


def sequential_register_history(rng, keys, per_key):
    """Each key's operations take effect one after another at increasing points;
    each interval stretches randomly around its point, overlapping its neighbours."""
    history = []
    for key_number in range(keys):
        key, state, point = f"key-{key_number}", ABSENT, 0.0
        for _ in range(per_key):
            point += rng.uniform(0.5, 1.5)
            start, end = point - rng.uniform(0, 3), point + rng.uniform(0, 3)
            kind = rng.choice(["put", "put", "get", "get", "delete"])
            index = len(history)
            if kind == "put":
                state = rng.randrange(5)
                history.append(op(index, "put", start, end, "ok", state, key=key, client=index % 50))
            elif kind == "get":
                outcome, value = ("not_found", None) if state is ABSENT else ("ok", state)
                history.append(op(index, "get", start, end, outcome, value, key=key, client=index % 50))
            else:
                history.append(op(index, "delete", start, end, "not_found" if state is ABSENT else "ok", key=key, client=index % 50))
                state = ABSENT
    return history


def test_two_thousand_keys_of_twenty_operations_check_quickly():
    history = sequential_register_history(random.Random(7), keys=2000, per_key=20)
    began = time.monotonic()
    result = check_linearizable(history)
    elapsed = time.monotonic() - began
    assert (result.verdict, result.checked_keys, result.checked_operations) == ("ok", 2000, 40_000)
    assert elapsed < 10, f"took {elapsed:.1f} s"


# --- shrinking ---------------------------------------------------------------


def test_shrink_returns_a_one_minimal_failing_history():
    rng = random.Random(3)
    history = sequential_register_history(rng, keys=1, per_key=30)
    stale = op(len(history), "get", history[-1].end + 1, history[-1].end + 2, "ok", "never written")
    history.append(stale)

    def still_fails(candidate):
        return check_linearizable(candidate).verdict == "violation"

    smaller = shrink(history, still_fails)
    assert [o.index for o in smaller] == [stale.index]
    for position in range(len(smaller)):  # 1-minimal: no single removal still fails
        assert not still_fails(smaller[:position] + smaller[position + 1 :])


def test_shrink_keeps_the_operations_that_make_a_stale_read():
    writes = [op(n, "put", 3 * n, 3 * n + 1, "ok", f"v{n}") for n in range(8)]
    noise = [op(8 + n, "get", 3 * n + 1.5, 3 * n + 2, "ok", f"v{n}") for n in range(8)]
    stale = op(16, "get", 30, 31, "ok", "v2")
    history = sorted(writes + noise + [stale], key=lambda o: o.start)

    def still_fails(candidate):
        # Keep a writer for every value read, or a lone unexplained read would be "minimal".
        written = [o.value for o in candidate if o.kind == "put"]
        every_read_written = all(o.value in written for o in candidate if o.kind == "get")
        return every_read_written and check_linearizable(candidate).verdict == "violation"

    write_v2, overwrite, stale_read = shrink(history, still_fails)
    assert (write_v2.index, stale_read.index) == (2, 16)
    assert overwrite.kind == "put" and overwrite.index in range(3, 8)


def test_shrink_needs_a_failing_history():
    with pytest.raises(ValueError, match="fails"):
        shrink([op(0, "put", 0, 1, "ok", 1)], lambda candidate: False)
