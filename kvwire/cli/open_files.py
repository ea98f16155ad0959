"""Room for the connections a server is told to accept: the open-files limit raised at start.

A shell's soft limit is often 1,024 open files, below a node's default
``--max-connections`` (1,024) plus its peers, database files and the
bridge's own connections: past it, accepting fails (EMFILE) long before the
cap that was meant to apply. Like Go's runtime and nginx's
``worker_rlimit_nofile``, the program raises its soft limit, up to the hard
limit, which only root can raise; it says so when even that is too low. A
limit is the program's business, not a library's: ``kvwire serve`` and
``kvwire bridge`` call this, ``kvwire.server.serve`` does not.
"""

from __future__ import annotations

import logging
import resource

# Beyond the connections: the database and its WAL and shared memory, the
# data directory's lock, listening sockets, peer links, the loop's own
# descriptors, and a margin for whatever a library opens.
OTHER_FILES = 64


def ensure_open_files(connections: int, log: logging.Logger) -> int:
    """Raise the soft RLIMIT_NOFILE to hold ``connections`` and OTHER_FILES more, up to the
    hard limit; the soft limit in force afterwards."""
    needed = connections + OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
            target = soft
    if target >= needed:
        log.info("raised the open-files limit from %d to %d, for %d connections", soft, target, connections,
                 extra={"event": "open_files_raised"})
    else:
        log.warning("the open-files limit is %d (the hard limit allows no more), so only about %d connections can "
                    "be accepted, not the %d configured: raise the hard limit (LimitNOFILE= in a systemd unit, "
                    "ulimit -Hn as root, nofile in limits.conf)", target, max(0, target - OTHER_FILES), connections,
                    extra={"event": "open_files_low"})
    return target
