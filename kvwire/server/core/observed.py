"""Which version each recent conditional tombstone here was conditioned on.

A DELETE first reads the key on a majority, then writes a tombstone that a
replica applies only if it holds nothing newer than the version read (its
``expect``, operations.py). So a replica holding such a tombstone knows that a
reader was given exactly that version: the PUT that wrote it took effect, and
was deleted after.

A one-round-trip PUT whose tag a majority refused treats the tag as dead (no
read can return it) and tries a higher one (one_trip.py). A DELETE may have
read the tag before the refusals came, while the tag sat only on its
coordinator and one replica that then took the tombstone: the higher tag would
bring the value back after the DELETE was acknowledged. A replica whose
tombstone was conditioned on exactly the proposed tag says so in its reply
(``observed``), and the PUT counts it as a replica that took the tag.

A replica that remembers the PUT's request id firmly at exactly that tag
(applied.py: it applied the tag once, or a quorum read's write-back brought
it) answers the same way (``NodeCore._replicate``).

Kept in memory, for the newest tombstone of each key and at most
``MAX_OBSERVED`` keys: after a restart, or past the bound, a replica only
refuses, as it did before this was known.
"""

from __future__ import annotations

from collections import OrderedDict

from ...protocol.messages import Version

MAX_OBSERVED = 100_000


class ObservedVersions:
    def __init__(self, *, remember: bool = True) -> None:
        # key -> (the tombstone's version, the version its DELETE read)
        self._conditions: OrderedDict[str, tuple[Version, Version]] = OrderedDict()
        self._remember = remember  # False: the simulator's mutant that never knows

    def note(self, key: str, tombstone: Version, expect: Version) -> None:
        """A tombstone of ``key`` at ``tombstone``, conditioned on ``expect``, was applied here."""
        if not self._remember:
            return
        conditions = self._conditions
        conditions[key] = (tombstone, expect)
        conditions.move_to_end(key)
        if len(conditions) > MAX_OBSERVED:
            conditions.popitem(last=False)

    def deleted_after_reading(self, key: str, held: Version, version: Version) -> bool:
        """Whether ``held``, this node's newest version of ``key``, is a tombstone
        whose DELETE read exactly ``version``."""
        return self._conditions.get(key) == (held, version)
