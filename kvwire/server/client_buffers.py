"""The bytes all client connections together hold read but not yet handled.

Each connection's own limits bound what it holds (a frame no longer than the
largest request, requests held back no more than one read's worth), not what
all of them hold together: 1,024 connections each sending all but the last
bytes of a 1 MB PUT, with no token needed, made a node hold 1 GB (a probe,
2026-12-07: 300 such connections, 323 MiB of RSS). Past the node's budget the
connection holding the most is closed, as Redis's ``maxmemory-clients``
evicts its biggest client: one sending a large value slowly loses its
connection, the many sending small requests do not.

Peer links are not counted: their frames (DIGESTS, SYNC pages) are larger, and
only a node that proved the cluster secret has one.
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
