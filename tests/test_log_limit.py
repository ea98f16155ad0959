"""Refusals anyone who can connect can cause are logged a few at a time (kvwire/log_limit.py):
the rule on a virtual clock, then a real node sent twenty thousand refused HELLOs in one write."""

from __future__ import annotations

import logging

from kvwire import Client
from kvwire.protocol import ErrorCode, ErrorReply, Hello
from kvwire.protocol.codec import encode
from kvwire.http_bridge.bounds import Bounds
from kvwire.log_limit import LogLimit
from kvwire.testing import NodeProcess, RawConnection, wait_for, write_auth_file


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_kind_logs_its_burst_per_window_and_then_how_many_it_held_back(caplog):
    clock = Clock()
    limit = LogLimit(logging.getLogger("kvwire.test"), burst=3, window=10.0, clock=clock)
    with caplog.at_level("INFO", logger="kvwire.test"):
        for number in range(50):
            limit.log(logging.WARNING, "refusals", "refused %d", number)
        limit.log(logging.INFO, "closes", "closed %d", 0)  # another kind has its own burst
        clock.now += 9.9
        limit.flush()  # the window is not over: nothing said yet of the 47
        assert [record.getMessage() for record in caplog.records] == ["refused 0", "refused 1", "refused 2", "closed 0"]
        clock.now += 0.9  # the node flushes once a second: here 10.8 s after the window began
        limit.flush()
        assert caplog.records[-1].getMessage() == "and 47 more refusals in 10 s, not logged one by one"
        assert caplog.records[-1].lines == 47 and caplog.records[-1].event == "log_lines_held_back"
        assert len(caplog.records) == 5  # "closes" held nothing back: no count for it
        caplog.clear()
        limit.log(logging.WARNING, "refusals", "refused %d", 50)  # a new window
        clock.now += 30
        limit.log(logging.WARNING, "refusals", "refused %d", 51)
    assert [record.getMessage() for record in caplog.records] == ["refused 50", "refused 51"]


async def test_a_bridges_sweep_logs_the_count_of_the_lines_its_listener_held_back(caplog):
    """A node flushes its limiter each second; a bridge's HTTPS listener logs through
    its bounds' limiter, which each sweep flushes: a flood that stops is still counted
    (a review found the count never logged once the flood stopped)."""
    clock = Clock()
    limit = LogLimit(logging.getLogger("kvwire.test"), burst=2, window=10.0, clock=clock)
    bounds = Bounds(8, 60.0, 10.0, connections=list, time_out=lambda watch, what: None, log_limit=limit)
    with caplog.at_level("INFO", logger="kvwire.test"):
        for number in range(5):
            limit.log(logging.WARNING, "plaintext on the TLS port", "plaintext %d", number)
        clock.now += 11
        try:
            bounds._sweep()
        finally:
            bounds.stop()
    assert [record.getMessage() for record in caplog.records] == [
        "plaintext 0", "plaintext 1", "and 3 more plaintext on the TLS port in 10 s, not logged one by one"]


def test_a_flood_of_refused_hellos_is_answered_each_and_logged_a_few_times(tmp_path):
    auth_file = write_auth_file(tmp_path, "writer write writer-token-0123456789abcdef\n")
    flood = b"".join(encode(Hello(number, token=f"bad-token-{number:08d}-xxxxxxxx")) for number in range(20_000))
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--auth-file", auth_file]) as node, \
            RawConnection(node.address, timeout=30) as attacker:
        attacker.send_bytes(flood)
        replies = []
        while len(replies) < 20_000:
            replies.extend(attacker.receive(1))
        assert all(isinstance(reply, ErrorReply) and reply.code == ErrorCode.UNAUTHENTICATED for reply in replies)
        with Client(node.address, token="writer-token-0123456789abcdef") as client:
            assert client.put("k", "served").counter == 1  # the node, and its log, still serve
        assert node.log().count("refused a HELLO from") == 10
        wait_for(lambda: "and 19990 more refused HELLOs (token not in the auth file)" in node.log(), timeout=15,
                 what="the node saying how many it did not log")
