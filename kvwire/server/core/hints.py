"""Hinted handoff: what each peer missed, kept durably, replayed when it is back.

A hint says "peer needs key at this version at least" and holds no value:
replay sends the key's current committed row, which is that version or newer.
A live peer whose replays keep failing is tried again after each failed replay,
up to ``retry_attempts`` of them in a row (one per key, so several keys lost together
count several), the delay doubling from ``retry_delay`` up to ``SWEEP_INTERVAL``; its hints then wait for the next time it comes
UP, the next write it misses, or the next sweep (every ``SWEEP_INTERVAL``). A hinted key whose
newest version is still committing here waits for that commit to settle, which starts replay
to the peers it waited for.

Hints are bounded per peer: more than ``hint_limit`` keys, or hints pending
for ``hint_max_age`` without the peer once having none, and this node drops that peer's hints and stops
hinting it until it is UP again; anti-entropy (``repair.py``) then brings it up
to date. Hints for a node that is no longer a member are dropped at start.
"""

from __future__ import annotations

from collections import deque

from ...backoff import backoff_delay
from ...protocol.messages import NO_VERSION, Version
from .effects import DropHint, DropPeerHints, StoreHint
from .fanout import OK, Fanout
from .services import CoreServices


# Hinted keys in flight to one peer at a time during replay.
REPLAY_WINDOW = 256
# How often replay is started again for peers whose hints are waiting: long
# enough that a peer refusing them costs little, short enough that a peer which
# failed a few replays and never went DOWN is caught up within seconds.
SWEEP_INTERVAL = 2.0


class HintBook:
    def __init__(self, core: CoreServices, loaded: dict[str, dict[str, Version]] | None = None) -> None:
        self._core = core
        self.by_peer: dict[str, dict[str, Version]] = loaded or {}
        self._in_flight: dict[str, set[str]] = {}
        # Per peer, hinted keys to send next, in the book's order (``replay``): a key
        # leaves it when it is sent, and goes back to its front when it comes back
        # undelivered; the book is read again only once it is empty.
        self._todo: dict[str, deque[str]] = {}
        self._failures: dict[str, int] = {}
        self._retry_timer: dict[str, object] = {}
        # Per peer, for the metrics: hints stored (the hinting rate) and
        # delivered (catch-up progress).
        self.stored: dict[str, int] = {}
        self.delivered: dict[str, int] = {}
        # Hinted keys whose hinted version is newer than this node's committed
        # row (its own commit is still on the way, as it overlaps the REPLICATEs):
        # not resent until that commit settles (``_settled``) or the next trigger,
        # so replay never spins on them.
        self._stalled: dict[str, set[str]] = {}
        # Since when each peer has had hints pending without a break (at start,
        # for loaded ones): a peer that never catches up is stopped after
        # hint_max_age even if its oldest hints were delivered.
        self._oldest: dict[str, float] = {peer: core.now for peer, hinted in self.by_peer.items() if hinted}
        # Peers this node stopped hinting, and why; cleared when the peer is UP again.
        self.stopped: dict[str, str] = {}
        for peer in sorted(self.by_peer):
            if peer not in core.peer_ids:
                self._stop(peer, "it is not a member of this cluster")

    def count(self, peer: str) -> int:
        return len(self.by_peer.get(peer, ()))

    def add(self, peer: str, key: str, version: Version) -> None:
        if peer in self.stopped:
            return  # anti-entropy catches this peer up
        hinted = self.by_peer.setdefault(peer, {})
        held = hinted.get(key)
        if held is None and len(hinted) >= self._core.config.hint_limit:
            self._stop(peer, f"it has {len(hinted)} hints, the hint_limit")
            return
        if not hinted:
            self._oldest[peer] = self._core.now
        if held is None or version > held:
            hinted[key] = version
            self.stored[peer] = self.stored.get(peer, 0) + 1
            self._core.effects.append(StoreHint(peer, key, version))
        self._stalled.get(peer, set()).discard(key)
        self.replay(peer)

    def _drop(self, peer: str, key: str, version: Version) -> None:
        hinted = self.by_peer.get(peer, {})
        held = hinted.get(key)
        if held is not None and held <= version:
            del hinted[key]
            self.delivered[peer] = self.delivered.get(peer, 0) + 1
            self._core.effects.append(DropHint(peer, key, version))

    def replay(self, peer: str) -> None:
        """Send hinted keys to ``peer`` while it is usable, up to the window."""
        core = self._core
        if peer in self._retry_timer or not core.usable(peer) or core.mutant == "no-hint-replay":
            return
        # A peer that said its disk refuses writes gets one key at a time: every replay
        # fails there, and a stalled disk fails it at once, so each write it missed sent
        # the whole window again (a review). Not none: what it said stands until a PONG
        # says otherwise, and one lost on the way must not hold its hints for good.
        window = 1 if peer in core.peers_refusing_writes else REPLAY_WINDOW
        in_flight = self._in_flight.setdefault(peer, set())
        hinted = self.by_peer.get(peer)
        if len(in_flight) >= window or not hinted:
            return
        stalled = self._stalled.setdefault(peer, set())
        todo = self._todo.get(peer)
        # Keys come off the to-do list; the book is not walked from its start: this
        # runs after every delivered hint, and a copy of a book of 100,000 keys (the
        # hint_limit) costs 0.9 ms (timeit), so a replay of them all spent some 90 s of
        # the event loop on copies. Each key is taken once a call and the book read
        # once a call, so a key back at once (the peer no longer usable) ends the call.
        read_the_book, taken = False, set()
        while len(in_flight) < window and peer not in self._retry_timer:
            if not todo:
                # Not while every hinted key is on its way or waits for its commit here,
                # or the last window's deliveries would each read the whole book: each
                # of those comes back through _back_undelivered or _settled.
                if read_the_book or len(hinted) <= len(in_flight) + len(stalled):
                    return
                read_the_book = True
                todo = self._todo[peer] = deque(key for key in hinted if key not in in_flight and key not in stalled)
                continue
            key = todo.popleft()
            if key in hinted and key not in in_flight and key not in stalled:
                if key in taken:
                    todo.appendleft(key)
                    return
                taken.add(key)
                in_flight.add(key)
                core.committed_copy(key, lambda copy, key=key: self._send(peer, key, copy))

    def _back_undelivered(self, peer: str, key: str) -> None:
        """``key`` is no longer on its way to ``peer``: if it is still hinted, it is
        sent before the rest of the to-do list (a failed one is the retry's first)."""
        self._in_flight[peer].discard(key)
        if key in self.by_peer.get(peer, ()):
            self._todo.setdefault(peer, deque()).appendleft(key)

    def _settled(self, peer: str, key: str) -> None:
        """The local commit ``key``'s replay to ``peer`` waited on landed or failed:
        replay it now rather than at the next sweep (up to ``SWEEP_INTERVAL`` later,
        which a restarted peer's catch-up waited on)."""
        stalled = self._stalled.get(peer)
        if stalled is not None and key in stalled:
            stalled.discard(key)
            self._todo.setdefault(peer, deque()).appendleft(key)
            self.replay(peer)

    def _send(self, peer: str, key: str, copy) -> None:
        core = self._core
        if isinstance(copy, Exception):  # this node could not read the row: try again later
            self._sent(peer, key, NO_VERSION, False)
            return
        hinted = self.by_peer.get(peer, {}).get(key)
        if hinted is None or not core.usable(peer):
            self._back_undelivered(peer, key)
            return
        if copy.version < hinted:
            self._in_flight[peer].discard(key)
            if core.keydir.latest_version(key) < hinted:
                # Neither committed nor on its way here: the write it came from
                # failed on this disk, so it was never acknowledged through this
                # node; nothing to deliver.
                self._drop(peer, key, hinted)
            else:
                self._stalled.setdefault(peer, set()).add(key)
                pending = core.keydir.newest_pending(key)
                if pending is not None:
                    core.after_write(pending.write_id, lambda _error: self._settled(peer, key))
            return
        Fanout(core, key, copy.version, copy.deleted, copy.value, [peer], core.now + core.config.write_timeout,
               lambda _peer, outcome: self._sent(peer, key, copy.version, outcome == OK), hint=False,
               request=core.applied.request_of(key, copy.version))

    def _sent(self, peer: str, key: str, version: Version, ok: bool) -> None:
        if ok:
            self._failures[peer] = 0
            self._drop(peer, key, version)
            self._back_undelivered(peer, key)  # hinted again, newer, while on its way
            self.replay(peer)
            return
        self._back_undelivered(peer, key)
        failures = self._failures.get(peer, 0) + 1
        self._failures[peer] = failures
        core = self._core
        if failures > core.config.retry_attempts:
            return  # wait for the peer's next UP, or the next write it misses
        # Capped at the sweep interval: past it, the next sweep replays anyway.
        delay = backoff_delay(failures, base=core.config.retry_delay, cap=max(SWEEP_INTERVAL, core.config.retry_delay))
        self._retry_timer[peer] = core.timers.schedule(core.now + delay, lambda: self._retry(peer))

    def _retry(self, peer: str) -> None:
        self._retry_timer.pop(peer, None)
        self.replay(peer)

    def _stop(self, peer: str, reason: str) -> None:
        self.stopped[peer] = reason
        self.by_peer.pop(peer, None)
        self._oldest.pop(peer, None)
        self._stalled.pop(peer, None)
        self._todo.pop(peer, None)
        self._core.effects.append(DropPeerHints(peer, reason))

    def sweep(self) -> None:
        """Start replay again for every usable peer that still has hints and nothing
        under way: one that gave up after ``retry_attempts`` failures, or whose
        stalled keys have since committed, is not left waiting for its next UP."""
        max_age = self._core.config.hint_max_age
        for peer in [peer for peer, hinted in self.by_peer.items() if hinted]:
            if self._core.now - self._oldest.get(peer, self._core.now) > max_age:
                self._stop(peer, f"it has had hints pending for longer than the hint_max_age of {max_age:g} s")
        for peer, hinted in self.by_peer.items():
            if hinted and peer not in self._retry_timer and not self._in_flight.get(peer):
                self._failures[peer] = 0
                self._stalled.pop(peer, None)
                self._todo.pop(peer, None)  # read the book again: the stalled keys are back in it
                self.replay(peer)

    def peer_up(self, peer: str) -> None:
        self.stopped.pop(peer, None)
        self._failures[peer] = 0
        self._stalled.pop(peer, None)
        self._todo.pop(peer, None)
        timer = self._retry_timer.pop(peer, None)
        if timer is not None:
            timer.cancel()
        self.replay(peer)
