"""CPU time read from /proc: the server's, for CPU per operation, and the whole machine's.

Server CPU per operation does not depend on how fast the client is, so it is
the fairest comparison between servers on a shared machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def server_cpu_seconds(pids: Iterable[int]) -> float | None:
    """User plus system CPU time of ``pids``, all their threads, from /proc/PID/stat; None without pids."""
    pids = tuple(pids)
    if not pids:
        return None
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 in proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time of all cores outside idle and iowait: shows whether anything else shared the machine."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:9]]  # user .. steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
