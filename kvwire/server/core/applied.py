"""PUT requests this node has applied recently, by the client's request id.

A client (or HAProxy, through the bridge) that lost a PUT's reply sends it
again with the same request id. Without this, the retry would be a second
write of the same value under a new tag, and a concurrent writer's value could
be overwritten by what is really an older write. With it, the node that
coordinates the retry asks its LOOKUP majority whether any holds the request
applied; if one does, it completes that write (same tag) instead of making a
new one. Ids are kept for ``MAX_AGE`` seconds and at most ``LIMIT`` of them:
retries come within seconds, and a retry the log no longer covers is applied
like a new PUT, which is what a PUT without an id always was.

A node that starts joining (an empty disk, or an unclean stop: node.py) copies
its peers' records too, a page at a time (``page``, repair.py): a record of a
write whose majority included this node's lost disk may now be on one peer
only, and a retry's majority with this node must still find it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from typing import NamedTuple

from ...protocol.errors import UnavailableError
from ...protocol.messages import Version

# Retries arrive within seconds (a client's failover, HAProxy's retry); a
# minute covers them with room. A record costs about 600 bytes, its id and tag
# included (607 measured with tracemalloc on 2026-12-05), so 100,000 of them
# about 60 MB: the most a node holds, reached at 1,700 PUTs/s with ids.
MAX_AGE = 60.0
LIMIT = 100_000
# A record's msgpack framing beside its strings: the array and string headers,
# a counter of up to 9 bytes and the flag.
RECORD_OVERHEAD_BYTES = 24


class StaleWriteRefused(UnavailableError):
    """A PUT or DELETE read just after this node could not run for longer than
    ``MAX_AGE`` (NodeCore.request): sent before that, it may have been applied
    elsewhere since. On the wire an UNAVAILABLE, nothing written; a client still
    waiting may send it elsewhere. Not so this node's own REST bridge, which could
    not run either: the request it read then was sent by a client long gone, and
    its peers have forgotten the request id by now (InProcessClient).
    """


class Applied(NamedTuple):
    version: Version
    at: float
    # Only a one-round-trip PUT's coordinator holds the tag, as far as this node
    # knows: it may be a tag a majority refused, which no read can return, so a
    # retry finishes it only where it is the newest (one_trip.py).
    tentative: bool = False


class AppliedRequests:
    """Keyed by (request id, key): an id names a write of one key, and the same id
    sent with another key (a client's mistake) is simply another write."""

    def __init__(self) -> None:
        # Each record with its sequence number: the log is in that order (a
        # record remembered again moves to the end), so a page's cursor is one.
        self._log: OrderedDict[tuple[str, str], tuple[Applied, int]] = OrderedDict()
        self._sequence = 0
        # Every sequence number given, ascending, and the name it was given to:
        # a page starts at its cursor's place (bisect), not by walking the whole
        # log (a joining node pages through all of it, 500 records a page). An
        # entry whose record moved on or went is skipped, and the lists are
        # rebuilt from the log once most of their entries are such.
        self._sequences: list[int] = []
        self._names: list[tuple[str, str]] = []
        # (key, version) -> request id, for the same entries: a version copied on
        # (a quorum read's write-back, anti-entropy) takes its id along, so every
        # node that comes to hold it remembers the request too.
        self._by_version: dict[tuple[str, Version], str] = {}

    def remember(self, request: str, key: str, version: Version, now: float, *, tentative: bool = False) -> bool:
        """Keep the record, unless one as new (and as firm) is kept: whether it was."""
        log = self._log
        name = (request, key)
        held = log.get(name)
        if held is not None:
            held = held[0]
            if held.version > version or (held.version == version and tentative >= held.tentative):
                return False
            self._by_version.pop((key, held.version), None)
        self._sequence += 1
        log[name] = (Applied(version, now, tentative), self._sequence)
        log.move_to_end(name)
        self._sequences.append(self._sequence)
        self._names.append(name)
        self._by_version[(key, version)] = request
        while len(log) > LIMIT or (log and now - next(iter(log.values()))[0].at > MAX_AGE):
            (old_request, old_key), (old, _sequence) = log.popitem(last=False)
            if self._by_version.get((old_key, old.version)) == old_request:
                del self._by_version[(old_key, old.version)]
        if len(self._names) > 2 * len(log) + 1024:
            # Amortised: at least half of the entries are stale whenever this runs.
            self._names = list(log)
            self._sequences = [sequence for _applied, sequence in log.values()]
        return True

    def forget(self, request: str, key: str, version: Version) -> None:
        """Forget that ``request`` was applied at ``version``: a one-round-trip PUT's
        tag that a majority refused, which no read can return (one_trip.py)."""
        held = self._log.get((request, key))
        if held is not None and held[0].version == version:
            del self._log[(request, key)]
            if self._by_version.get((key, version)) == request:
                del self._by_version[(key, version)]

    def find(self, request: str, key: str, now: float) -> Applied | None:
        """Where ``request`` was applied to ``key`` (version, when, tentative), if remembered."""
        held = self._log.get((request, key))
        if held is None or now - held[0].at > MAX_AGE:
            return None
        return held[0]

    def request_of(self, key: str, version: Version) -> str | None:
        """The request id that wrote ``version`` of ``key``, if remembered."""
        return self._by_version.get((key, version))

    def page(self, cursor: int, limit: int, now: float, max_bytes: int) -> tuple[list[list], int, bool]:
        """The records remembered after ``cursor`` (0: all), at most ``limit``, as
        ``[request, key, counter, node, tentative]``; then the cursor of the next
        page, and whether none is left. A record remembered again while a peer
        pages through moves past its cursor, so the peer gets its newest tag.
        The page also ends before its records' encoding would pass ``max_bytes``
        (about: ids' and keys' UTF-8 bytes and ``RECORD_OVERHEAD_BYTES`` each),
        but always holds one record, if one is left."""
        records: list[list] = []
        size = 0
        log, names, sequences = self._log, self._names, self._sequences
        for index in range(bisect_right(sequences, cursor), len(names)):
            held = log.get(names[index])
            sequence = sequences[index]
            if held is None or held[1] != sequence or now - held[0].at > MAX_AGE:
                continue  # moved on (later in the log), forgotten, or too old
            request, key = names[index]
            applied = held[0]
            size += len(request.encode()) + len(key.encode()) + len(applied.version.node.encode()) + RECORD_OVERHEAD_BYTES
            if len(records) == limit or (records and size > max_bytes):
                return records, cursor, False
            records.append([request, key, applied.version.counter, applied.version.node, applied.tentative])
            cursor = sequence
        return records, cursor, True

    def __len__(self) -> int:
        return len(self._log)
