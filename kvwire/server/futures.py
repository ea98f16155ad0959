"""Chaining futures without a Task: the node's answer to most requests is one."""

from __future__ import annotations

import asyncio
from typing import Any, Callable


def then(future: asyncio.Future, transform: Callable[[Any], Any]) -> asyncio.Future:
    """A future of ``transform(result)`` that fails or is cancelled as ``future`` is.

    Cheaper than a Task: a lone node's PUT spent about 16 µs more CPU when it
    went through a coroutine task (measured with bench/load.py).
    """
    chained = future.get_loop().create_future()

    def finish(done: asyncio.Future) -> None:
        if chained.done():
            return
        if done.cancelled():
            chained.cancel()
        elif (exc := done.exception()) is not None:
            chained.set_exception(exc)
        else:
            chained.set_result(transform(done.result()))

    if future.done():
        finish(future)
    else:
        future.add_done_callback(finish)
    return chained
