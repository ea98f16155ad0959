"""The outbox writes a loop turn's replies once, after every callback of that turn."""

import asyncio

from kvwire.server.outbox import Outbox


async def turns_until(condition, turns: int = 10) -> None:
    """Let the loop run turn by turn until ``condition()`` holds, for at most ``turns``."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)  # one loop turn, not a wait for time to pass
    raise AssertionError(f"not within {turns} loop turns")


class Failing:
    def flush(self) -> None:
        raise OSError("the transport is gone")


class Recorder:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events

    def flush(self) -> None:
        self.events.append(f"flush {self.name}")


async def test_each_connection_is_flushed_once_after_the_turns_reads():
    loop = asyncio.get_running_loop()
    events: list[str] = []
    outbox = Outbox(loop)
    first, second = Recorder("a", events), Recorder("b", events)

    def read(name: str, connection: Recorder) -> None:
        events.append(f"read {name}")
        outbox.add(connection)

    # Reads made ready in the same turn, as uvloop runs a poll's callbacks.
    loop.call_soon(read, "a", first)
    loop.call_soon(read, "b", second)
    await turns_until(lambda: len(events) >= 4)
    assert events == ["read a", "read b", "flush a", "flush b"]

    # The next turn starts a new round: one more flush, nothing repeated.
    events.clear()
    outbox.add(second)
    await turns_until(lambda: events)
    assert events == ["flush b"]


async def test_a_connection_whose_flush_fails_does_not_hold_up_the_others(caplog):
    events: list[str] = []
    outbox = Outbox(asyncio.get_running_loop())
    outbox.add(Failing())
    outbox.add(Recorder("b", events))
    await turns_until(lambda: events)
    assert events == ["flush b"]
    assert "writing the replies of a connection failed" in caplog.text
