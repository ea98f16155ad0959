"""The one backoff rule of every retry loop in kvwire: doubling from a base, capped.

Pure and synchronous, so the client, the peer links and the node's core (which
the simulator drives with virtual time) all share it.
"""

from __future__ import annotations

from typing import Callable

# 2**64 times any sane base is far beyond every cap; a bound keeps a long run
# of failures from overflowing the float conversion.
_MAX_DOUBLINGS = 64


def backoff_delay(
    attempt: int, *, base: float, cap: float, jitter: Callable[[float, float], float] | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 is the first retry; 0 or less waits 0).

    ``base * 2 ** (attempt - 1)``, capped at ``cap``. Given ``jitter`` (say
    ``random.uniform``), the wait is drawn from ``[delay / 2, delay]``: "equal
    jitter", so callers failing together spread out without any of them
    retrying at once.
    """
    if attempt <= 0:
        return 0.0
    delay = min(cap, base * 2 ** min(attempt - 1, _MAX_DOUBLINGS))
    return jitter(delay / 2, delay) if jitter is not None else delay
