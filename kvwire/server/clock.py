"""The node's clock: seconds that go on while the machine is suspended.

CLOCK_MONOTONIC stands still while the machine is suspended, and commonly while
its VM is paused or migrated (the hypervisor restores the guest's clock), so a
node that was not running for minutes saw no gap: it read the PUTs its clients
had long given up on and sent elsewhere as if they were new, and wrote one over
a newer acknowledged write (a probe under libfaketime, 2026-12-07;
``NodeCore._clock`` refuses writes read after a stall longer than request ids
are kept). CLOCK_BOOTTIME is the same clock counting suspended time too. It is
Linux's; elsewhere the node keeps the monotonic clock.
"""

from __future__ import annotations

import functools
import time

if hasattr(time, "CLOCK_BOOTTIME"):
    node_clock = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
    COUNTS_SUSPENDED_TIME = True
else:  # pragma: no cover - not Linux
    node_clock = time.monotonic
    COUNTS_SUSPENDED_TIME = False
