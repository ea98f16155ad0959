"""The request log's pages (kvwire/server/core/applied.py): what a joining node copies.

A joining node pages through a peer's records with REQUESTS (docs/protocol.md
6.13). Paging must give every record the log holds, each at its newest tag,
whatever was remembered, replaced or forgotten before; and the index that lets
a page start at its cursor must stay bounded.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvwire.protocol import Version
from kvwire.server.core.applied import MAX_AGE, AppliedRequests

REQUESTS = st.sampled_from([f"r{n}" for n in range(6)])
KEYS = st.sampled_from(["a", "b"])
STEPS = st.lists(st.one_of(
    st.tuples(st.just("remember"), REQUESTS, KEYS, st.integers(1, 9), st.booleans()),
    st.tuples(st.just("forget"), REQUESTS, KEYS, st.integers(1, 9), st.just(False)),
), max_size=60)


def all_pages(log, limit, now=0.0, max_bytes=1 << 20):
    records, cursor, pages = [], 0, 0
    while True:
        page, cursor, last = log.page(cursor, limit, now, max_bytes)
        assert len(page) <= limit
        records += page
        pages += 1
        if last:
            return records, pages


@settings(max_examples=300, deadline=None)
@given(STEPS, st.integers(1, 4), st.sampled_from([1, 60, 1 << 20]))
def test_paging_gives_every_record_once_at_its_newest_tag(steps, limit, max_bytes):
    log = AppliedRequests()
    model: dict[tuple[str, str], tuple[Version, bool]] = {}
    for kind, request, key, counter, tentative in steps:
        version = Version(counter, "n1")
        if kind == "remember":
            log.remember(request, key, version, 0.0, tentative=tentative)
            held = model.get((request, key))
            if held is None or held[0] < version or (held[0] == version and held[1] and not tentative):
                model[(request, key)] = (version, tentative)
        else:
            log.forget(request, key, version)
            if model.get((request, key), (None,))[0] == version:
                del model[(request, key)]
    records, _pages = all_pages(log, limit, max_bytes=max_bytes)
    assert len(records) == len(model)
    assert {(r, k): (Version(c, n), t) for r, k, c, n, t in records} == model


def test_request_records_page_in_the_order_remembered_and_a_record_updated_meanwhile_comes_again():
    log = AppliedRequests()
    for number in range(5):
        log.remember(f"r{number}", "k", Version(number + 1, "n1"), 0.0)
    records, cursor, last = log.page(0, 2, 0.0, 1 << 20)
    assert [r[0] for r in records] == ["r0", "r1"] and not last
    log.remember("r0", "k", Version(9, "n2"), 0.0)  # newer: moves past the cursor
    records, cursor, last = log.page(cursor, 2, 0.0, 1 << 20)
    assert [r[0] for r in records] == ["r2", "r3"] and not last
    records, cursor, last = log.page(cursor, 2, 0.0, 1 << 20)
    assert records == [["r4", "k", 5, "n1", False], ["r0", "k", 9, "n2", False]] and last
    assert log.page(cursor, 2, 0.0, 1 << 20) == ([], cursor, True)


def test_a_page_after_the_last_is_empty_and_says_so():
    log = AppliedRequests()
    log.remember("r", "k", Version(1, "n1"), 0.0)
    records, cursor, last = log.page(0, 500, 0.0, 1 << 20)
    assert records == [["r", "k", 1, "n1", False]] and last
    assert log.page(cursor, 500, 0.0, 1 << 20) == ([], cursor, True)


def test_records_remembered_again_and_again_keep_the_index_bounded():
    log = AppliedRequests()
    log.remember("old", "k", Version(1, "n1"), 0.0)  # the oldest record, never replaced
    for counter in range(2, 20_002):
        log.remember("busy", "k", Version(counter, "n1"), 0.0)
    assert len(log) == 2
    assert len(log._names) <= 2 * len(log) + 1024
    assert all_pages(log, 1) == ([["old", "k", 1, "n1", False], ["busy", "k", 20_001, "n1", False]], 2)


def test_expired_records_are_not_given():
    log = AppliedRequests()
    log.remember("r", "k", Version(1, "n1"), 0.0)
    assert log.page(0, 500, MAX_AGE + 1, 1 << 20) == ([], 0, True)


def test_a_page_ends_before_its_byte_budget_but_always_holds_a_record():
    log = AppliedRequests()
    for number in range(5):
        log.remember(f"r{number}", "k" * 1000, Version(1, "n1"), 0.0)
    # About 1,030 bytes a record: two fit in 2,100, and one is given even in 10.
    assert all_pages(log, 500, max_bytes=2100)[1] == 3
    records, pages = all_pages(log, 500, max_bytes=10)
    assert len(records) == 5 and pages == 5
