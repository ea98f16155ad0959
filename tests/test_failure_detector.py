"""The failure detector, driven by explicit timestamps: no clock, no sleeps, no I/O.

Issue 3: a peer is DOWN once nothing has been heard from it for
``failure_timeout``; it is UP again as soon as it is heard; each transition is
reported once and counted. Times below are chosen to be exact in binary
floating point (10.0, 10.25, 10.5, ...) so boundaries are tested exactly.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvwire.server.failure_detector import FailureDetector, PeerState, Transition

TIMEOUT = 0.5
START = 10.0
PEERS = ("n2", "n3")


def detector(peers=PEERS, timeout=TIMEOUT, now=START) -> FailureDetector:
    return FailureDetector(peers, timeout, now)


def up_at(now: float, peers=PEERS) -> FailureDetector:
    """A detector whose peers were all heard at ``now``, so they are UP."""
    fd = detector(peers)
    for peer in peers:
        fd.mark_heard(peer, now)
    return fd


# --- the starting state ------------------------------------------------------------------


def test_peers_start_down():
    fd = detector()
    assert fd.peers == ["n2", "n3"]
    for peer in PEERS:
        assert fd.state(peer) is PeerState.DOWN
        assert not fd.is_up(peer)
    assert fd.up_peers() == []
    assert fd.transitions == {}


def test_starting_down_is_not_a_transition():
    fd = detector()
    # Nothing was UP, so nothing can go DOWN, however long the silence.
    assert fd.check(START) == []
    assert fd.check(START + 3600) == []
    assert fd.transitions == {}


def test_no_peers():
    fd = detector(peers=())
    assert fd.peers == [] and fd.up_peers() == []
    assert fd.check(START + 100) == []


def test_silence_is_counted_from_creation():
    fd = detector()
    assert fd.silent_for("n2", START) == 0
    assert fd.silent_for("n2", START + 0.25) == 0.25


# --- UP ----------------------------------------------------------------------------------


def test_first_heard_is_an_up_transition():
    fd = detector()
    transition = fd.mark_heard("n2", START + 0.25)
    assert transition == Transition("n2", PeerState.UP, 0.25)
    assert fd.is_up("n2") and fd.state("n2") is PeerState.UP
    assert fd.up_peers() == ["n2"]
    # The other peer is untouched.
    assert fd.state("n3") is PeerState.DOWN


def test_heard_again_while_up_is_not_a_transition():
    fd = detector()
    assert fd.mark_heard("n2", START) is not None
    assert fd.mark_heard("n2", START + 0.25) is None
    assert fd.mark_heard("n2", START + 0.5) is None
    assert fd.transitions == {("n2", PeerState.UP): 1}


def test_stays_up_while_heard_within_the_timeout():
    fd = up_at(START)
    now = START
    # Heard every 0.25 s for 10 s: each gap is half the timeout.
    for _ in range(40):
        now += 0.25
        assert fd.check(now) == []
        assert fd.mark_heard("n2", now) is None
        assert fd.mark_heard("n3", now) is None
    assert fd.up_peers() == ["n2", "n3"]
    assert fd.transitions == {("n2", PeerState.UP): 1, ("n3", PeerState.UP): 1}


def test_any_gap_up_to_the_timeout_keeps_a_peer_up():
    fd = up_at(START)
    now = START
    for gap in (0.5, 0.125, 0.5, 0.375, 0.5):
        now += gap
        assert fd.check(now) == []  # silent for exactly ``gap``, never more than the timeout
        fd.mark_heard("n2", now)
        fd.mark_heard("n3", now)
    assert fd.up_peers() == ["n2", "n3"]


def test_hearing_late_without_a_check_does_not_flap():
    # The peer was silent past the timeout, but no check() ran in between: it
    # was never declared DOWN, so hearing it is not a transition either.
    fd = up_at(START)
    assert fd.mark_heard("n2", START + 5) is None
    assert fd.is_up("n2")
    assert fd.check(START + 5) == [Transition("n3", PeerState.DOWN, 5.0)]


# --- DOWN --------------------------------------------------------------------------------


def test_silence_equal_to_the_timeout_is_still_up():
    fd = up_at(START)
    assert fd.check(START + TIMEOUT) == []
    assert fd.up_peers() == ["n2", "n3"]


def test_silence_longer_than_the_timeout_is_down():
    fd = up_at(START)
    later = START + 0.625
    assert fd.check(later) == [
        Transition("n2", PeerState.DOWN, 0.625),
        Transition("n3", PeerState.DOWN, 0.625),
    ]
    assert fd.up_peers() == []
    assert fd.state("n2") is PeerState.DOWN and not fd.is_up("n2")


def test_just_past_the_timeout_is_down():
    fd = up_at(START, peers=("n2",))
    just_past = math.nextafter(START + TIMEOUT, math.inf)
    (transition,) = fd.check(just_past)
    assert transition.peer == "n2" and transition.state is PeerState.DOWN
    assert transition.silent_for > TIMEOUT


def test_only_the_silent_peer_goes_down():
    fd = up_at(START)
    fd.mark_heard("n3", START + 0.375)
    assert fd.check(START + 0.75) == [Transition("n2", PeerState.DOWN, 0.75)]
    assert fd.up_peers() == ["n3"]


def test_a_down_transition_is_reported_once():
    fd = up_at(START, peers=("n2",))
    assert len(fd.check(START + 1)) == 1
    assert fd.check(START + 1) == []
    assert fd.check(START + 2) == []
    assert fd.check(START + 3600) == []
    assert fd.transitions == {("n2", PeerState.UP): 1, ("n2", PeerState.DOWN): 1}


def test_up_again_as_soon_as_heard():
    fd = up_at(START, peers=("n2",))
    fd.check(START + 1)
    transition = fd.mark_heard("n2", START + 2)
    # The silence it reports runs from the last time it was heard, not from the DOWN.
    assert transition == Transition("n2", PeerState.UP, 2.0)
    assert fd.is_up("n2")
    assert fd.mark_heard("n2", START + 2.25) is None


def test_down_again_after_coming_back():
    fd = up_at(START, peers=("n2",))
    fd.check(START + 1)
    fd.mark_heard("n2", START + 2)
    # Coming back restarts the silence: a check half a timeout later finds it UP...
    assert fd.check(START + 2.25) == []
    # ...and one past the timeout finds it DOWN again, counting from START + 2.
    assert fd.check(START + 2.75) == [Transition("n2", PeerState.DOWN, 0.75)]


# --- a pause of this process ------------------------------------------------------------


def test_time_this_process_did_not_run_is_no_peers_silence():
    # Heard at 10.0 and 10.25; the process then stopped from 10.375 to 12.375.
    fd = up_at(START)
    fd.mark_heard("n3", START + 0.25)
    fd.excuse(START + 0.375, START + 2.375)
    assert fd.check(START + 2.375) == []
    assert fd.silent_for("n2", START + 2.375) == 0.375
    assert fd.silent_for("n3", START + 2.375) == 0.125


def test_a_peer_still_silent_a_timeout_after_the_pause_goes_down():
    fd = up_at(START)
    fd.excuse(START + 0.25, START + 2.25)
    assert fd.check(START + 2.5) == []  # 0.5 s of silence while running: not past the timeout
    assert fd.check(START + 2.625) == [
        Transition("n2", PeerState.DOWN, 0.625),
        Transition("n3", PeerState.DOWN, 0.625),
    ]


def test_an_excused_pause_never_puts_hearing_in_the_future():
    # Heard during the span (the shell may deliver a frame stamped after the
    # pause before the core sees the pause): silence cannot go negative.
    fd = up_at(START)
    fd.mark_heard("n2", START + 2.0)
    fd.excuse(START, START + 2.0)
    assert fd.silent_for("n2", START + 2.0) == 0.0
    assert fd.silent_for("n3", START + 2.0) == 0.0


def test_excusing_no_time_changes_nothing():
    fd = up_at(START)
    fd.excuse(START + 0.25, START + 0.25)
    fd.excuse(START + 0.25, START)  # a clock that went back is not a pause
    assert fd.check(START + 0.625) == [
        Transition("n2", PeerState.DOWN, 0.625),
        Transition("n3", PeerState.DOWN, 0.625),
    ]


def test_transitions_are_counted_per_peer_and_state():
    fd = up_at(START)  # n2 UP, n3 UP
    now = START
    for _ in range(3):  # n2 flaps three times; n3 answers throughout
        now += 1
        fd.mark_heard("n3", now - 0.25)
        assert [t.peer for t in fd.check(now)] == ["n2"]
        assert fd.mark_heard("n2", now) is not None
    assert fd.transitions == {
        ("n2", PeerState.UP): 4,
        ("n2", PeerState.DOWN): 3,
        ("n3", PeerState.UP): 1,
    }


# --- reporting ---------------------------------------------------------------------------


def test_describe_down_gives_whole_milliseconds():
    fd = up_at(100.0, peers=("n2",))
    (transition,) = fd.check(100.512)
    assert transition.describe() == "peer n2 DOWN (no reply for 512 ms)"


def test_describe_up():
    assert Transition("n3", PeerState.UP, 1.5).describe() == "peer n3 UP (heard after 1500 ms of silence)"


def test_describe_rounds_to_the_nearest_millisecond():
    assert Transition("n2", PeerState.DOWN, 0.5004).describe() == "peer n2 DOWN (no reply for 500 ms)"
    assert Transition("n2", PeerState.DOWN, 0.5006).describe() == "peer n2 DOWN (no reply for 501 ms)"


def test_transitions_are_immutable():
    transition = Transition("n2", PeerState.DOWN, 0.75)
    with pytest.raises(dataclasses.FrozenInstanceError):
        transition.state = PeerState.UP  # type: ignore[misc]


def test_state_values_are_the_logged_words():
    assert PeerState.UP.value == "UP" and PeerState.DOWN.value == "DOWN"


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, -1, -math.inf], ids=repr)
def test_failure_timeout_must_be_positive(bad):
    with pytest.raises(ValueError, match="failure_timeout"):
        FailureDetector(PEERS, bad, START)


def test_nan_failure_timeout_is_refused():
    # NaN would pass a "<= 0" check and then no silence would ever exceed it.
    with pytest.raises(ValueError, match="failure_timeout"):
        FailureDetector(PEERS, math.nan, START)


def test_a_small_timeout_works_at_its_boundary():
    fd = FailureDetector(["n2"], 0.125, START)
    fd.mark_heard("n2", START)
    assert fd.check(START + 0.125) == []
    assert fd.check(START + 0.25) == [Transition("n2", PeerState.DOWN, 0.25)]
