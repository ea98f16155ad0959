"""Which peers are UP, decided from when each was last heard. No I/O, no clock of its own.

A peer is DOWN once nothing has arrived from it for ``failure_timeout``
seconds, whatever the reason: a dead process (its connection refuses), a
hung one (SIGSTOP: the connection stays open and silent) or a partition. Any
frame counts as hearing from it, and a peer is UP again the moment it is
heard. Time comes in as an argument, like PySyncObj's tick, so tests drive it
deterministically.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Iterable


class PeerState(str, enum.Enum):
    UP = "UP"
    DOWN = "DOWN"


@dataclass(frozen=True, slots=True)
class Transition:
    """A peer changed state; ``silent_for`` is how long it had not been heard."""

    peer: str
    state: PeerState
    silent_for: float

    def describe(self) -> str:
        if self.state is PeerState.DOWN:
            return f"peer {self.peer} DOWN (no reply for {self.silent_for * 1000:.0f} ms)"
        return f"peer {self.peer} UP (heard after {self.silent_for * 1000:.0f} ms of silence)"


class FailureDetector:
    def __init__(self, peers: Iterable[str], failure_timeout: float, now: float) -> None:
        if not (math.isfinite(failure_timeout) and failure_timeout > 0):
            raise ValueError(f"failure_timeout must be a positive, finite number of seconds, got {failure_timeout!r}")
        self.failure_timeout = failure_timeout
        # Peers start DOWN: nothing proves them alive until they answer.
        self._last_heard: dict[str, float] = {peer: now for peer in peers}
        self._state: dict[str, PeerState] = {peer: PeerState.DOWN for peer in self._last_heard}
        self.transitions: dict[tuple[str, PeerState], int] = {}

    @property
    def peers(self) -> list[str]:
        return list(self._state)

    def mark_heard(self, peer: str, now: float) -> Transition | None:
        """Something arrived from ``peer``; returns the UP transition if this was one."""
        silent_for = now - self._last_heard[peer]
        self._last_heard[peer] = now
        if self._state[peer] is PeerState.UP:
            return None
        return self._move(peer, PeerState.UP, silent_for)

    def check(self, now: float) -> list[Transition]:
        """Mark DOWN every UP peer silent for longer than the timeout."""
        changed = []
        for peer, state in self._state.items():
            silent_for = now - self._last_heard[peer]
            if state is PeerState.UP and silent_for > self.failure_timeout:
                changed.append(self._move(peer, PeerState.DOWN, silent_for))
        return changed

    def excuse(self, paused_from: float, now: float) -> None:
        """This process did not run from ``paused_from`` to ``now`` (a stalled loop,
        SIGSTOP, a suspended VM): that time is nobody's silence. Without this, the
        first check after the pause would mark every peer DOWN before the frames
        they sent meanwhile, already waiting in the sockets, are read."""
        paused_for = now - paused_from
        if paused_for > 0:
            for peer, heard in self._last_heard.items():
                self._last_heard[peer] = min(now, heard + paused_for)

    def is_up(self, peer: str) -> bool:
        return self._state[peer] is PeerState.UP

    def state(self, peer: str) -> PeerState:
        return self._state[peer]

    def up_peers(self) -> list[str]:
        return [peer for peer, state in self._state.items() if state is PeerState.UP]

    def silent_for(self, peer: str, now: float) -> float:
        return now - self._last_heard[peer]

    def _move(self, peer: str, state: PeerState, silent_for: float) -> Transition:
        self._state[peer] = state
        self.transitions[(peer, state)] = self.transitions.get((peer, state), 0) + 1
        return Transition(peer, state, silent_for)
