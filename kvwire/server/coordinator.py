"""Quorum writes and reads, coordinated by whichever node the client reached.

Writes (see ../shared/GUIDE.md section 2):
1. LOOKUP the key's version tag on a majority (this node included; answered
   from memory, no fsync);
2. tag = (highest counter + 1, this node);
3. commit locally, then REPLICATE to every peer at once;
4. acknowledge once a majority that includes this node has committed durably.
Peers known DOWN are not waited on: they get a durable hint instead. A live
peer that fails or is slow gets one too, delivered in the background.

Quorum reads FETCH a majority and take the highest tag; members of that
majority that were behind get it written back before the reply (ABD), which
with the write rule makes reads and writes linearizable. When all answers
agree, there is nothing to write back and the read is one round trip.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, NamedTuple

import msgpack

from ..protocol.errors import KeyNotFoundError, KvwireError, NoQuorumError
from ..protocol.messages import NO_VERSION, Fetch, Lookup, Replicate, Version
from .cache import MISSING
from .config import ServerConfig
from .futures import then
from .peers import Peers
from .storage import Storage

log = logging.getLogger("kvwire.coordinator")

WRITE_NO_QUORUM = "Failed to replicate to quorum of nodes"


class Copy(NamedTuple):
    """One replica's answer: its version tag, tombstone flag, and value."""

    version: Version
    deleted: bool
    value: Any


class Written(NamedTuple):
    """A write's new version tag, and whether it found no live value (never written, or deleted)."""

    version: Version
    created: bool


def _is_absent(copy: Copy) -> bool:
    return copy.deleted or copy.version == NO_VERSION


class Coordinator:
    def __init__(self, config: ServerConfig, storage: Storage, peers: Peers) -> None:
        self._loop = asyncio.get_running_loop()
        self.config = config
        self.storage = storage
        self.peers = peers
        self.quorum = config.quorum
        self.cluster_size = config.cluster_size
        # Rotates which peers a majority round asks first, spreading the load.
        self._rotation = itertools.count()
        self.no_quorum_writes = 0
        self.write_backs = 0
        self.hedged_requests = 0

    # --- writes --------------------------------------------------------------------------

    def start_write(self, key: str, value: Any, packed: bytes | None, *, must_exist: bool = False) -> asyncio.Future:
        """The future of :meth:`write`'s result.

        A lone node is its own majority: it needs no round and no task, only
        its own commit, chained with :func:`then`.
        """
        if self.quorum > 1:
            return asyncio.ensure_future(self.write(key, value, packed, must_exist=must_exist))
        local = self._local_tag(key)
        if must_exist and _is_absent(local):
            raise KeyNotFoundError(f"key {key!r} not found")
        written = Written(Version(local.version.counter + 1, self.config.node_id), _is_absent(local))
        return then(self.storage.write(key, written.version, value, packed), lambda _: written)

    async def write(self, key: str, value: Any, packed: bytes | None, *, must_exist: bool = False) -> Written:
        """Store ``value`` (a tombstone when ``packed`` is None) on a majority; its new tag,
        and whether the majority's newest copy (or this node's own, if newer) was absent.

        With ``must_exist``, raise KeyNotFoundError when the majority's newest
        copy is missing or deleted (a DELETE of nothing).
        """
        loop = self._loop
        deadline = loop.time() + self.config.write_timeout
        answers = await self._ask_majority(Lookup, key, deadline, self._local_tag(key), what="write")
        # The local tag again, read now: a write of this key that this node
        # started while the round was out is pending here, and the new tag must
        # pass it too. Two writes in flight on one coordinator would otherwise
        # take the same tag, and replicas holding different values under one
        # tag are never reconciled. No await from here to storage.write.
        copies = [copy for _, copy in answers]
        copies.append(self._local_tag(key))
        newest = max(copies, key=lambda copy: copy.version)
        if must_exist and _is_absent(newest):
            raise KeyNotFoundError(f"key {key!r} not found")
        version = Version(newest.version.counter + 1, self.config.node_id)
        local = self.storage.write(key, version, value, packed)
        # No peer sees the tag before this node holds it durably. Otherwise a
        # crash between the two could leave a peer with (c, self) = A while
        # the restarted node, not knowing c, mints (c, self) again for B; B
        # acknowledged by a majority without that peer, and a later quorum
        # read meeting A under the same tag could return A.
        if not await _successes(loop, [local], 1, deadline):
            if local.done() and local.exception() is not None:
                raise local.exception()  # the disk refused it: say so, not "no quorum"
            majority = False
        else:
            replicas = [local]
            for peer in self.peers.links:
                replicas.append(self._replicate(peer, key, version, value, packed is None, deadline))
            majority = await _successes(loop, replicas, self.quorum, deadline)
        if not majority:
            self.no_quorum_writes += 1
            raise NoQuorumError(
                f"{WRITE_NO_QUORUM}: {key!r} may or may not have been written "
                f"({len(self.peers.usable_peers()) + 1} of {self.cluster_size} nodes reachable)"
            )
        return Written(version, _is_absent(newest))

    def _local_tag(self, key: str) -> Copy:
        entry = self.storage.latest(key)
        return Copy(entry.version, entry.deleted, None) if entry is not None else Copy(NO_VERSION, False, None)

    def _replicate(self, peer: str, key: str, version: Version, value: Any, deleted: bool, deadline: float) -> asyncio.Future | None:
        """Send the write to ``peer``, or hint it when the peer can't take it now.

        Returns the future of the reply, or None when the write went to a hint.
        """
        if not self.peers.usable(peer):
            self.peers.hint(peer, key, version)
            return None
        try:
            future = self.peers.links[peer].submit(Replicate, key, version, value, deleted)
        except KvwireError:
            self.peers.hint(peer, key, version)
            return None
        # A reply later than the write timeout is a miss: hint it, let it go.
        timer = self._loop.call_at(deadline, future.cancel)

        def settle(done: asyncio.Future) -> None:
            timer.cancel()
            if done.cancelled() or done.exception() is not None:
                self.peers.hint(peer, key, version)

        future.add_done_callback(settle)
        return future

    # --- reads ---------------------------------------------------------------------------

    async def read(self, key: str) -> tuple[Any, Version]:
        """The newest value on a majority, written back to those behind; KeyNotFoundError if none."""
        deadline = self._loop.time() + self.config.write_timeout
        local = await self._local_copy(key)
        answers = await self._ask_majority(Fetch, key, deadline, local, what="read")
        newest = max((copy for _, copy in answers), key=lambda copy: copy.version)
        behind = [source for source, copy in answers if copy.version < newest.version]
        if behind:
            await self._write_back(key, newest, behind, deadline)
        if _is_absent(newest):
            raise KeyNotFoundError(f"key {key!r} not found")
        return newest.value, newest.version

    async def _local_copy(self, key: str) -> Copy:
        entry = self.storage.index.get(key)
        if entry is None:
            return Copy(NO_VERSION, False, None)
        if entry.deleted:
            return Copy(entry.version, True, None)
        value = self.storage.cached(key)
        if value is MISSING:
            found = await self.storage.read(key)
            if found is None:  # deleted since: read the index again
                return await self._local_copy(key)
            value, version = found
            return Copy(version, False, value)
        return Copy(entry.version, False, value)

    async def _write_back(self, key: str, newest: Copy, behind: list[str | None], deadline: float) -> None:
        """ABD's second phase: the majority that answered must hold ``newest`` before we reply."""
        self.write_backs += 1
        packed = None if newest.deleted else msgpack.packb(newest.value)
        futures = []
        for source in behind:
            if source is None:
                futures.append(self.storage.write(key, newest.version, newest.value, packed))
            else:
                futures.append(self.peers.links[source].submit(Replicate, key, newest.version, newest.value, newest.deleted))
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.gather(*futures)
        except (KvwireError, TimeoutError) as exc:
            raise NoQuorumError(
                f"quorum read of {key!r} could not bring a majority up to date ({exc}); "
                "use consistency 'one' for this node's copy, which may be stale"
            ) from None

    # --- majority rounds -----------------------------------------------------------------

    async def _ask_majority(self, message_type: type, key: str, deadline: float, local: Copy, *, what: str) -> list[tuple[str | None, Copy]]:
        """(source, copy) from this node (source None) and ``quorum - 1`` peers.

        Asks just the number of usable peers needed, rotating which, and asks
        another in place of each one that fails. A peer that hangs (SIGSTOP)
        neither fails nor answers, and looks UP until the failure timeout; so
        when the answers are not all in after half a heartbeat interval, the
        remaining peers are asked too (a hedged request) and the first
        answers win. Raises NoQuorumError when a majority can't answer before
        ``deadline``.
        """
        answers: list[tuple[str | None, Copy]] = [(None, local)]
        needed = self.quorum - 1
        candidates = self.peers.usable_peers() if needed else []
        if len(candidates) < needed:
            raise self._no_quorum(what, len(candidates) + 1)
        if candidates:
            start = next(self._rotation) % len(candidates)
            candidates = candidates[start:] + candidates[:start]
        loop = self._loop
        hedge_at = loop.time() + self.config.heartbeat_interval / 2
        asked: dict[str, asyncio.Future] = {}

        def ask(peer: str) -> None:
            try:
                asked[peer] = self.peers.links[peer].submit(message_type, key)
            except KvwireError:
                pass

        try:
            while needed:
                while candidates and len(asked) < needed:
                    ask(candidates.pop(0))
                if not asked or loop.time() >= deadline:
                    break
                wait_until = min(deadline, hedge_at) if candidates else deadline
                await _successes(loop, list(asked.values()), needed, wait_until, stop_on_failure=True)
                for peer, future in list(asked.items()):
                    if not future.done():
                        continue
                    del asked[peer]
                    if not future.cancelled() and future.exception() is None:
                        reply = future.result()
                        answers.append((peer, Copy(reply.version, reply.deleted, getattr(reply, "value", None))))
                        needed -= 1
                if needed and candidates and loop.time() >= hedge_at:
                    self.hedged_requests += 1
                    while candidates:
                        ask(candidates.pop(0))
        finally:
            for future in asked.values():
                future.cancel()
        if needed:
            raise self._no_quorum(what, self.quorum - needed)
        return answers

    def _no_quorum(self, what: str, reachable: int) -> NoQuorumError:
        if what == "write":
            self.no_quorum_writes += 1
            return NoQuorumError(
                f"{WRITE_NO_QUORUM}: {reachable} of {self.cluster_size} nodes answered, "
                f"{self.quorum} needed; nothing was written"
            )
        return NoQuorumError(
            f"quorum read needs {self.quorum} of {self.cluster_size} nodes but {reachable} answered; "
            "use consistency 'one' (kvwire-cli get --consistency one) to read this node's copy, "
            "which may be stale"
        )


async def _successes(
    loop: asyncio.AbstractEventLoop,
    futures: list[asyncio.Future | None],
    needed: int,
    deadline: float,
    *,
    stop_on_failure: bool = False,
) -> bool:
    """Wait until ``needed`` of ``futures`` (None counts as failed) have succeeded.

    False as soon as too many have failed (or, with ``stop_on_failure``, as
    soon as any has, so its caller can ask someone else), or at ``deadline``
    (loop time). Every write waits twice, so this avoids asyncio.wait's and
    asyncio.timeout's extra tasks and objects.
    """
    live = [future for future in futures if future is not None]
    if len(live) < needed:
        return False
    outcome = loop.create_future()
    ok = failed = 0

    def count(done: asyncio.Future) -> None:
        nonlocal ok, failed
        if outcome.done():
            return
        if done.cancelled() or done.exception() is not None:
            failed += 1
            if stop_on_failure or len(live) - failed < needed:
                outcome.set_result(False)
        else:
            ok += 1
            if ok >= needed:
                outcome.set_result(True)

    for future in live:
        future.add_done_callback(count)
    timer = loop.call_at(deadline, lambda: outcome.done() or outcome.set_result(False))
    try:
        return await outcome
    finally:
        timer.cancel()
        for future in live:
            future.remove_done_callback(count)
