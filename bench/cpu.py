"""CPU time read from /proc: the server's, for CPU per operation, and the whole machine's.

Server CPU per operation does not depend on how fast the client is, so it is
the fairest comparison between servers on a shared machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# /proc counts CPU time in clock ticks (10 ms), per thread and per core: over a
# shorter sampling time than this, the rounding alone could show more cores busy
# than the machine has, so the servers' and the machine's figures are left out.
MIN_SAMPLED_S = 0.25


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


def cpu_figures(ops: int, window_s: float | None, server_cpu_s: float | None, client_cpu_s: float,
                machine_cpu_s: float, *, sampled_s: float | None = None) -> dict[str, float | int | None]:
    """A load run's CPU fields: the servers' time per operation, and cores busy for the
    servers, the generator and the whole machine; None where not measured.

    ``window_s`` is the measured window (None or 0: there was none), over which the
    generator's own CPU time (exact, from getrusage) was taken; ``sampled_s`` the time
    over which the servers' and the machine's (/proc's ticks) were, ``window_s`` if not given.
    """
    sampled_s = window_s if sampled_s is None else sampled_s
    ticked = bool(window_s) and sampled_s is not None and sampled_s >= MIN_SAMPLED_S

    def cores(seconds: float | None, over: float | None) -> float | None:
        return None if seconds is None or not over else round(seconds / over, 2)

    return {
        "server_cpu_us_per_op": round(server_cpu_s * 1e6 / ops, 2) if ticked and server_cpu_s is not None and ops else None,
        "server_cpu_cores": cores(server_cpu_s, sampled_s) if ticked else None,
        "client_cpu_cores": cores(client_cpu_s, window_s),
        "machine_cpu_cores": cores(machine_cpu_s, sampled_s) if ticked else None,
        "cpu_count": os.cpu_count(),
    }


def machine_busy_seconds() -> float:
    """CPU time of all cores outside idle and iowait: shows whether anything else shared the machine."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:9]]  # user .. steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
