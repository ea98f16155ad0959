"""A background pass over every value on this node's disk, to mend the damaged ones.

A value whose bytes changed on disk was found, and mended from a peer's copy of
its version (core/mending.py), only when something read it: a key no one read
stayed damaged here, one replica short of what the cluster believed it held,
and anti-entropy, which compares version tags, never noticed (its tag is
whole). ZFS's scrub and Cassandra's validation compactions exist for the same
reason. The scrubber reads every live row in key order, a page every
``PAGE_INTERVAL``, at most ``--scrub-rate`` keys and ``SCRUB_BYTES_PER_S`` of
values a second, checks each value as a read does, and hands the damaged ones
to the node to mend. Over and over: a pass that ends starts again after a
pause. It reads on the reader's own connection, so writes never wait on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from .core.mending import DamagedValueError
from .storage import Storage

log = logging.getLogger("kvwire.storage")

PAGE_INTERVAL = 0.1
# Values read a second at most: checking one costs about 1 ms a MiB of the
# reader's thread, which GETs of keys not in memory share.
SCRUB_BYTES_PER_S = 4 * 1024 * 1024
# Between two passes, and after a page that failed to read.
PASS_PAUSE = 10.0


class Scrubber:
    """Runs while the node does; ``found`` gets each damaged value's error (its key and version)."""

    def __init__(self, storage: Storage, keys_per_s: int, found: Callable[[DamagedValueError], None]) -> None:
        self._storage = storage
        self._found = found
        self._keys_per_s = keys_per_s
        self._max_keys = max(1, math.ceil(keys_per_s * PAGE_INTERVAL))
        self._max_bytes = max(1, round(SCRUB_BYTES_PER_S * PAGE_INTERVAL))
        self.passes = 0  # completed
        self.checked = 0  # values checked, over every pass
        self.damaged = 0  # of them found damaged
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kvwire-scrub")

    async def _run(self) -> None:
        after: str | None = None
        pass_checked = pass_damaged = last_pass_damaged = 0
        started = time.monotonic()
        told_failure = False
        wait = PAGE_INTERVAL
        while True:
            await asyncio.sleep(wait)
            try:
                page = await self._storage.scrub_page(after, self._max_keys, self._max_bytes)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a damaged page of the file, an I/O error: the reads say so too
                after, wait = await self._past_unreadable(after, exc, told_failure)
                told_failure = True
                continue
            # Paced by what the page held: a page always checks one value, of up to
            # --max-value-bytes, and a low --scrub-rate is a fraction of a page a turn.
            wait = max(PAGE_INTERVAL, page.checked / self._keys_per_s, page.size / SCRUB_BYTES_PER_S)
            self.checked += page.checked
            pass_checked += page.checked
            for damaged in page.damaged:
                self.damaged += 1
                pass_damaged += 1
                self._found(damaged)
            after = page.last_key
            if page.ended:
                self.passes += 1
                # The first pass and a pass that found more damage than the one before (each
                # damaged value is also logged by itself, once); the rest at DEBUG: a small
                # store is scrubbed every few seconds, and a value no peer can mend stays damaged.
                level = (logging.WARNING if pass_damaged > last_pass_damaged
                         else logging.INFO if self.passes == 1 else logging.DEBUG)
                log.log(level, "scrub: pass %d over %s checked %d values in %.0f s, %d damaged", self.passes,
                        self._storage.path, pass_checked, time.monotonic() - started, pass_damaged,
                        extra={"event": "scrub_pass", "checked": pass_checked, "damaged": pass_damaged})
                after, last_pass_damaged, pass_checked, pass_damaged = None, pass_damaged, 0, 0
                told_failure, wait = False, PASS_PAUSE
                started = time.monotonic() + PASS_PAUSE

    async def _past_unreadable(self, after: str | None, error: Exception, told: bool) -> tuple[str | None, float]:
        """Where to go on after a page that could not be read, and how long to wait: past its
        first row, found without its value, or, where even that fails (the file's index is
        damaged), from the same place a pause later. Logged once a pass."""
        try:
            skipped = await self._storage.key_after(after)
        except asyncio.CancelledError:
            raise
        except Exception:
            skipped = after
        if not told:
            log.warning("scrub: reading the values after %r failed (%s); %s", after, error,
                        f"going on after {skipped!r}" if skipped != after else f"trying again in {PASS_PAUSE:g} s",
                        extra={"event": "scrub_read_failed"})
        return (skipped, PAGE_INTERVAL) if skipped not in (after, None) else (after, PASS_PAUSE)

    def stop(self) -> None:
        self._task.cancel()
