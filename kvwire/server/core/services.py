"""What the node core offers its operations, as an interface.

The operations (``operations.py``, ``rounds.py``, ``fanout.py``, ``hints.py``)
are driven by ``NodeCore`` and call back into it. Typing them against this
protocol rather than against ``NodeCore`` keeps the imports one-way: ``node``
imports the operations, and the operations import only this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ...protocol.errors import KvwireError
from ...protocol.messages import Version
from ..config import ServerConfig
from .effects import Effect
from .keydir import Copy, Keydir
from .observed import ObservedVersions
from .timers import Timers


@dataclass
class CoreStats:
    quorum_rounds: int = 0
    no_quorum_writes: int = 0
    write_backs: int = 0
    hedged_requests: int = 0
    delete_conflicts: int = 0
    one_trip_retries: int = 0


class HintSink(Protocol):
    def add(self, peer: str, key: str, version: Version) -> None:
        """Remember durably that ``peer`` needs ``key`` at ``version`` or newer."""


class CoreServices(Protocol):
    config: ServerConfig
    node_id: str
    quorum: int
    cluster_size: int
    peer_ids: list[str]
    peers_refusing_writes: set[str]
    mutant: str | None
    now: float
    stalled_until: float
    effects: list[Effect]
    keydir: Keydir
    timers: Timers
    stats: CoreStats
    hints: HintSink
    tombstones: Any
    applied: Any
    observed: ObservedVersions
    stranded: set[str]
    one_trips: set[str]
    repairing_tags: dict[str, bool]

    @property
    def pending_writes(self) -> int: ...

    joining: bool
    join_generation: int
    commits_first: bool  # a mutant's: commit, then replicate, as before the overlap

    def repair_round_completed(self, peer: str, generation: int) -> None: ...

    def copy_request_records(self, records: list) -> None: ...

    def lost_a_sent_tag(self, key: str, version: Version) -> None: ...

    def strand(self, key: str, version: Version | None) -> None: ...

    def lost_tag(self, key: str) -> Version: ...

    def one_trip_started(self, key: str) -> None: ...

    writes_in_progress: dict[str, int]

    def after_writes_of(self, key: str, callback: Callable[[], bool], *, first: bool = False) -> None: ...

    def woken_put_done(self, key: str) -> None: ...

    def write_started(self, key: str) -> None: ...

    def write_decided(self, key: str) -> None: ...

    def one_trip_ended(self, key: str) -> None: ...

    def usable(self, peer: str) -> bool: ...

    def usable_peers(self) -> list[str]: ...

    def voters_up(self) -> int: ...

    def next_rotation(self) -> int: ...

    def ask(self, peer: str, message_type: type, fields: tuple, handler: Callable[[Any], None]) -> int | None: ...

    def forget(self, request_id: int) -> None: ...

    def respond(self, token: Any, reply: Any) -> None: ...

    def mint(self, key: str, above: Version, *, proposed: bool = False) -> Version: ...

    def adopt_floor(self, floor: int | None) -> None: ...

    def forget_value(self, key: str) -> None: ...

    def store(self, key: str, version: Version, deleted: bool, value: Any, packed: bytes | None,
              on_done: Callable[[Exception | None], None], *, request: str | None = None,
              tentative: bool = False) -> None: ...

    def after_write(self, write_id: int, callback: Callable[[Exception | None], None]) -> None: ...

    def committed_copy(self, key: str, callback: Callable[[Copy | KvwireError], None]) -> None: ...
