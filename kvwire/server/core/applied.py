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
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from ...protocol.messages import Version

# Retries arrive within seconds (a client's failover, HAProxy's retry); a
# minute covers them with room. 100,000 ids cost about 15 MB at most.
MAX_AGE = 60.0
LIMIT = 100_000


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
        self._log: OrderedDict[tuple[str, str], Applied] = OrderedDict()
        # (key, version) -> request id, for the same entries: a version copied on
        # (a quorum read's write-back, anti-entropy) takes its id along, so every
        # node that comes to hold it remembers the request too.
        self._by_version: dict[tuple[str, Version], str] = {}

    def remember(self, request: str, key: str, version: Version, now: float, *, tentative: bool = False) -> None:
        log = self._log
        name = (request, key)
        held = log.get(name)
        if held is not None and (held.version > version or (held.version == version and tentative >= held.tentative)):
            return
        if held is not None:
            self._by_version.pop((key, held.version), None)
        log[name] = Applied(version, now, tentative)
        log.move_to_end(name)
        self._by_version[(key, version)] = request
        while len(log) > LIMIT or (log and now - next(iter(log.values())).at > MAX_AGE):
            (old_request, old_key), old = log.popitem(last=False)
            if self._by_version.get((old_key, old.version)) == old_request:
                del self._by_version[(old_key, old.version)]

    def forget(self, request: str, key: str, version: Version) -> None:
        """Forget that ``request`` was applied at ``version``: a one-round-trip PUT's
        tag that a majority refused, which no read can return (one_trip.py)."""
        held = self._log.get((request, key))
        if held is not None and held.version == version:
            del self._log[(request, key)]
            if self._by_version.get((key, version)) == request:
                del self._by_version[(key, version)]

    def find(self, request: str, key: str, now: float) -> Applied | None:
        """Where ``request`` was applied to ``key`` (version, when, tentative), if remembered."""
        held = self._log.get((request, key))
        if held is None or now - held.at > MAX_AGE:
            return None
        return held

    def request_of(self, key: str, version: Version) -> str | None:
        """The request id that wrote ``version`` of ``key``, if remembered."""
        return self._by_version.get((key, version))

    def __len__(self) -> int:
        return len(self._log)
