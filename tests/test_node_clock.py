"""The node's clock counts the time its machine was suspended.

CLOCK_MONOTONIC stands still while a machine is suspended (and commonly while its
VM is paused): a node suspended for minutes then saw no gap, read the PUTs its
clients had given up on and sent elsewhere as new, and wrote one over a newer
acknowledged write (a probe, 2026-12-07, which faked the monotonic clock standing
still with libfaketime). libfaketime moves CLOCK_BOOTTIME with the monotonic
clock, and no test can suspend this machine, so what is tested here is that the
node and its stall warning take their time from CLOCK_BOOTTIME, and that the
warning follows whatever clock it is given; the core's refusal of writes read
after a long stall is tested in tests/test_core.py.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

from kvwire.server.clock import node_clock
from kvwire.server.node import Node
from kvwire.server.stall import StallWatch


def test_the_node_and_its_stall_warning_run_on_the_clock_that_counts_suspended_time():
    assert node_clock.func is time.clock_gettime and node_clock.args == (time.CLOCK_BOOTTIME,)
    assert inspect.signature(Node.__init__).parameters["clock"].default is node_clock
    assert inspect.signature(StallWatch.__init__).parameters["clock"].default is node_clock
    assert abs(node_clock() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0


def test_a_stall_the_loop_did_not_see_is_warned_of_by_the_clock_that_saw_it(caplog):
    """The loop's own clock (monotonic) runs on as if nothing happened; the node's
    clock jumped by 65 s, as CLOCK_BOOTTIME does across a suspend."""
    jumped = 0.0
    reads = 0

    def stalls() -> list:
        return [r for r in caplog.records if getattr(r, "event", None) == "loop_stalled"]

    def clock() -> float:
        nonlocal reads
        reads += 1
        return time.monotonic() + jumped

    async def until(condition) -> None:
        """Yield to the loop (the watch's checks run) until ``condition`` holds, for 5 s at most."""
        deadline = time.monotonic() + 5
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def run() -> None:
        nonlocal jumped
        loop = asyncio.get_running_loop()
        watch = StallWatch(loop, 0.25, interval=0.01, clock=clock)
        try:
            await until(lambda: reads >= 4)  # a few checks, on time
            assert reads >= 4 and not stalls()
            jumped = 65.0
            await until(stalls)
        finally:
            watch.stop()

    with caplog.at_level(logging.WARNING, logger="kvwire.node"):
        asyncio.run(run())
    (record,) = stalls()
    assert 64_900 <= record.late_ms <= 66_000, record.late_ms
