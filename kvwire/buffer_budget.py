"""The bytes all client connections together hold: a node's, a bridge's.

What each holds is the requests it has read but not handled, and the replies
its client has not read (once the kernel's buffer and the transport's
high-water mark are full); the caller counts, this sums and names whom to close.

Each connection's own limits bound what it holds (a node's frame no longer
than the largest request, a bridge's body no longer than --max-body-bytes),
not what all of them hold together: 1,024 connections each sending all but
the last bytes of a 1 MB PUT, with no token needed, made a node hold 1 GB,
and of a 4 MiB REST body a bridge 4 GB (probes, 2026-12-07: 300 such
connections, 323 MiB of a node's RSS; 200, 847 MiB of a bridge's). Past the
budget the connection holding the most is closed, as Redis's
``maxmemory-clients`` evicts its biggest client: one sending a large value
slowly loses its connection, the many sending small requests do not.

The standard library only, so that the node and the bridge share it (tests/test_layering.py).
"""

from __future__ import annotations

from typing import Hashable


class ClientBuffers:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._held: dict[Hashable, int] = {}

    def hold(self, holder: Hashable, nbytes: int) -> Hashable | None:
        """Record that ``holder`` now holds ``nbytes``; if that grew the total past
        the limit, return the holder holding the most (maybe ``holder``), to close."""
        before = self._held.pop(holder, 0)
        if nbytes:
            self._held[holder] = nbytes
        self.total += nbytes - before
        if nbytes > before and self.total > self.limit:
            return max(self._held, key=self._held.__getitem__)
        return None

    def held_by(self, holder: Hashable) -> int:
        return self._held.get(holder, 0)
