"""Version-tag uniqueness, replica convergence, and the combined report."""

import pytest

from kvwire.check import CheckReport, Operation, check_converged, check_history, check_tag_order, check_tags, format_report


def op(index, kind, start, end, outcome, value=None, version=None, *, key="k"):
    return Operation(index, kind, key, start, end, outcome, value, version, "n1", index)


# --- check_tags --------------------------------------------------------------


def test_clean_tags_pass():
    history = [
        op(0, "put", 0, 1, "ok", "a", (1, "n1")),
        op(1, "get", 2, 3, "ok", "a", (1, "n1")),
        op(2, "put", 4, 5, "ok", "b", (2, "n2")),
        op(3, "put", 4, 5, "ok", "c", (2, "n2"), key="other"),  # same tag, other key: fine
        op(4, "delete", 6, 7, "ok", None, (3, "n1")),
        op(5, "put", 8, 9, "fail", "z", (3, "n1")),  # only ok operations vouch for a tag
        op(6, "get", 8, 9, "ok", "b"),  # no tag carried
    ]
    assert check_tags(history) == []


# --- check_tag_order ---------------------------------------------------------


def test_tags_that_grow_with_real_time_pass_and_concurrent_ones_may_go_either_way():
    history = [
        op(0, "put", 0, 1, "ok", "a", (1, "n1")),
        op(1, "get", 2, 3, "ok", "a", (1, "n1")),  # a read may see the same tag
        op(2, "put", 4, 6, "ok", "b", (3, "n2")),
        op(3, "put", 5, 7, "ok", "c", (2, "n3")),  # concurrent with #2: lower is fine
        op(4, "delete", 8, 9, "ok", None, (4, "n1")),
        op(5, "put", 10, None, "unknown", "z"),  # no tag: nothing to order
        op(6, "put", 12, 13, "ok", "d", [5, "n1"]),  # a tag from JSON is a list
        op(7, "put", 0.5, 0.9, "ok", "x", (1, "n1"), key="other"),  # other keys have their own order
    ]
    assert check_tag_order(history) == []


@pytest.mark.parametrize("later", [
    op(1, "put", 2, 3, "ok", "b", (3, "n1")),  # acknowledged below an acknowledged write: lost once replicas agree
    op(1, "put", 2, 3, "ok", "b", (5, "n1")),  # a write never takes a tag already taken
    op(1, "get", 2, 3, "ok", "a", (4, "n9")),  # a read went back in time
    op(1, "delete", 2, 3, "ok", None, (5, "n0")),  # the node id breaks the tie: (5, 'n0') < (5, 'n1')
])
def test_a_tag_below_one_that_ended_before_is_reported(later):
    # The checker probe's history: PUT a at (5, n1), then PUT b at (3, n1), then GET b;
    # linearizable by values, yet the replicas keep (5, n1) and b is gone.
    history = [op(0, "put", 0, 1, "ok", "a", (5, "n1")), later]
    (problem,) = check_tag_order(history)
    assert "went backwards" in problem and "(5, 'n1')" in problem and "#0" in problem and "#1" in problem
    assert not check_history(history).ok


def test_two_values_under_one_tag_are_reported_naming_both_operations():
    history = [op(0, "put", 0, 1, "ok", "a", (1, "n1")), op(1, "get", 2, 3, "ok", "b", [1, "n1"])]
    (problem,) = check_tags(history)
    assert "(1, 'n1')" in problem and "#0" in problem and "#1" in problem and "two values" in problem


def test_equal_values_under_one_tag_compare_by_equality():
    history = [op(0, "put", 0, 1, "ok", {"a": [1]}, (1, "n1")), op(1, "get", 2, 3, "ok", {"a": [1]}, (1, "n1"))]
    assert check_tags(history) == []


def test_a_tombstone_tag_that_also_carried_a_value_is_reported():
    history = [op(0, "put", 0, 1, "ok", "a", (1, "n1")), op(1, "delete", 2, 3, "ok", None, (1, "n1"))]
    (problem,) = check_tags(history)
    assert "tombstone" in problem and "#0" in problem and "#1" in problem


# --- check_converged ---------------------------------------------------------


def test_converged_replicas_pass():
    entry = ((2, "n1"), False, {"x": [1, 2]})
    states = {
        "n1": {"a": entry, "b": ((3, "n2"), True, None)},
        "n2": {"a": ([2, "n1"], False, {"x": [1, 2]}), "b": ([3, "n2"], True, "leftover")},  # a tombstone's value is not state
        "n3": {"a": entry, "b": ((3, "n2"), True, None)},
    }
    assert check_converged(states) == []


def test_disagreeing_replicas_are_reported_per_key():
    states = {
        "n1": {"a": ((2, "n1"), False, "new"), "b": ((1, "n1"), False, "same")},
        "n2": {"a": ((1, "n1"), False, "old"), "b": ((1, "n1"), False, "same")},
        "n3": {"a": ((2, "n1"), False, "new"), "b": ((1, "n1"), False, "same"), "c": ((1, "n3"), False, "live")},
    }
    problems = check_converged(states)
    assert len(problems) == 2
    about_a, about_c = problems
    assert "'a'" in about_a and "n1, n3: 'new' at tag (2, 'n1')" in about_a and "n2: 'old' at tag (1, 'n1')" in about_a
    assert "'c'" in about_c and "n1, n2: no entry" in about_c and "n3: 'live'" in about_c


def test_a_replica_holding_a_tombstone_against_a_live_value_is_described_as_holding_it():
    # It said "n2: no entry", of a node holding a tombstone (a checker probe's finding).
    states = {"n1": {"k": ((1, "n1"), False, "live")}, "n2": {"k": ((2, "n1"), True, None)}, "n3": {}}
    (problem,) = check_converged(states)
    assert "n2: tombstone at tag (2, 'n1'); n3: no entry" in problem and "n1: 'live' at tag (1, 'n1')" in problem


def test_reports_cut_long_values_and_say_how_long_they_were():
    huge = "x" * 2_000_000
    history = [op(0, "put", 0, 1, "ok", huge, (1, "n1")), op(1, "get", 2, 3, "ok", "other", (1, "n1"))]
    (problem,) = check_tags(history)
    assert len(problem) < 1_000 and "2,000,002 characters in all" in problem
    (converged,) = check_converged({"n1": {"k": ((1, "n1"), False, huge)}, "n2": {}})
    assert len(converged) < 1_000
    # And the linearizability report's "why", which names the value the key was left holding.
    stale = [op(0, "put", 0, 1, "ok", "a"), op(1, "put", 2, 3, "ok", huge), op(2, "get", 4, 5, "ok", "a")]
    report = format_report(check_history(stale))
    assert "leaving the key holding 'xxx" in report and max(map(len, report.splitlines())) < 1_000


def test_an_acknowledged_operation_without_an_end_is_refused_saying_so():
    with pytest.raises(ValueError, match="outcome 'ok' needs an end \\(only 'unknown' has none\\)"):
        op(0, "put", 0, None, "ok", "a")


def test_a_tombstone_agrees_with_no_entry_and_with_another_tombstone():
    # Garbage collection removes a tombstone from one replica before another; all read as absent.
    states = {
        "n1": {"gone": ((4, "n1"), True, None)},
        "n2": {},
        "n3": {"gone": ((5, "n2"), True, None)},
    }
    assert check_converged(states) == []
    states["n2"]["gone"] = ((3, "n1"), False, "old")  # but a live value against them is not
    assert len(check_converged(states)) == 1


def test_same_tag_different_values_on_replicas_is_a_disagreement():
    states = {"n1": {"a": ((1, "n1"), False, "x")}, "n2": {"a": ((1, "n1"), False, "y")}}
    assert len(check_converged(states)) == 1


def test_malformed_replica_state_is_a_value_error():
    with pytest.raises(ValueError, match="node 'n1' key 'a'"):
        check_converged({"n1": {"a": "not a triple"}})


# --- check_history and format_report -------------------------------------------


def test_clean_history_reports_ok():
    history = [op(0, "put", 0, 1, "ok", "a", (1, "n1")), op(1, "get", 2, 3, "ok", "a", (1, "n1"))]
    states = {"n1": {"k": ((1, "n1"), False, "a")}, "n2": {"k": ((1, "n1"), False, "a")}}
    report = check_history(history, replica_states=states)
    assert isinstance(report, CheckReport)
    assert (report.ok, report.verdict, report.problems) == (True, "ok", [])
    assert format_report(report).startswith("verdict: ok")


def test_tag_and_convergence_problems_make_a_violation_even_when_linearizable():
    # Concurrent, so that the repeated tag is the one tag problem (not also one going backwards).
    history = [op(0, "put", 0, 1, "ok", "a", (1, "n1")), op(1, "put", 0.5, 3, "ok", "b", (1, "n1"))]
    states = {"n1": {"k": ((1, "n1"), False, "a")}, "n2": {"k": ((1, "n1"), False, "b")}}
    report = check_history(history, replica_states=states)
    assert report.linearizability.verdict == "ok"
    assert (report.ok, report.verdict, len(report.problems)) == (False, "violation", 2)
    assert check_history(history).problems == report.problems[:1]  # convergence only with states


def test_report_shows_the_shrunk_violation_one_operation_per_line():
    writes = [op(n, "put", 3 * n, 3 * n + 1, "ok", f"v{n}") for n in range(6)]
    reads = [op(6 + n, "get", 3 * n + 1.5, 3 * n + 2, "ok", f"v{n}") for n in range(6)]
    stale = op(12, "get", 20, 21, "ok", "v1")
    elsewhere = [op(13, "put", 0, 1, "ok", "x", key="fine"), op(14, "get", 2, 3, "ok", "x", key="fine")]
    report = check_history(writes + reads + [stale] + elsewhere)
    assert (report.ok, report.verdict) == (False, "violation")
    assert report.problems[0] == "key 'k' is not linearizable" and len(report.problems) == 2
    assert "acknowledged write lost: #5" in report.problems[1]  # v5 was the last write; the read saw v1
    text = format_report(report)
    shown = [line.split()[0] for line in text.splitlines() if line.startswith("  #")]
    # write v1, one later overwrite, the stale read; the reads that merely confirm writes are gone.
    assert len(shown) == 3 and shown[0] == "#1" and shown[2] == "#12" and shown[1] in {"#2", "#3", "#4", "#5"}
    assert "minimal failing history (3 of 13 operations)" in text and "'fine'" not in text
    assert "why:" in text and "holding" in text
    unshrunk = format_report(report, shrink_violations=False)
    assert "its history (13 operations)" in unshrunk


def test_report_lists_undecided_keys():
    writes = [op(n, "put", 0, 100, "ok", n) for n in range(30)]
    reads = [op(30, "get", 101, 102, "ok", 0), op(31, "get", 103, 104, "ok", 1)]
    report = check_history(writes + reads, max_steps=500)
    assert (report.ok, report.verdict, report.problems) == (False, "unknown", [])
    assert "undecided (search budget of 500 steps exhausted; --max-steps raises it) on 1 key(s)" in format_report(report)


# --- check_no_lost_writes ------------------------------------------------------


def test_a_later_read_missing_the_last_acknowledged_write_is_a_lost_write():
    from kvwire.check import check_no_lost_writes

    history = [
        op(0, "put", 0, 1, "ok", "a"),
        op(1, "put", 2, 3, "ok", "b"),
        op(2, "get", 4, 5, "ok", "a"),  # b was acknowledged, then lost
    ]
    (problem,) = check_no_lost_writes(history)
    assert "acknowledged write lost" in problem and "'b'" in problem
    assert not check_history(history).ok


def test_a_read_showing_the_last_write_or_an_undecided_one_is_fine():
    from kvwire.check import check_no_lost_writes

    history = [
        op(0, "put", 0, 1, "ok", "a"),
        op(1, "delete", 2, 3, "ok"),
        op(2, "put", 2.5, None, "unknown", "late"),
        op(3, "get", 4, 5, "not_found"),
        op(4, "get", 6, 7, "ok", "late"),  # the undecided PUT took effect after all
    ]
    assert check_no_lost_writes(history) == []


def test_overlapping_acknowledged_writes_are_left_to_the_linearizability_check():
    from kvwire.check import check_no_lost_writes

    history = [op(0, "put", 0, 2, "ok", "a"), op(1, "put", 1, 3, "ok", "b"), op(2, "get", 4, 5, "ok", "a")]
    assert check_no_lost_writes(history) == []
    assert check_history(history).ok  # either order is linearizable
