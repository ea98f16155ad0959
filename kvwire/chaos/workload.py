"""Clients that record every operation they issue, with what they learnt from it.

Each client holds one connection per node and sends each operation to one node
it picks, with its own timeout; it never retries on another node, so a failover
can never turn an indeterminate outcome into a clean one. A timed-out or broken
connection is dropped and reopened on the next use.

Quorum GETs, PUTs and DELETEs go into the history the linearizability check
reads. ``consistency=one`` GETs are allowed to be stale, so they are kept
apart (``History.local_reads``) and checked only for values nobody wrote.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from kvwire.check.history import Operation, OpKind, Outcome
from kvwire.client.connection import ClientConnection
from kvwire.protocol import Consistency, Delete, Get, KvwireError, Put, ServerError

from ..check.outcomes import outcome_of_error

# After a connection could not be opened, this client leaves that node alone
# for a moment rather than spinning on refused connections to a dead node.
CONNECT_BACKOFF = 0.05

# Operation mix: (kind, consistency of a GET, weight).
MIX = (
    (OpKind.PUT, None, 40),
    (OpKind.GET, Consistency.QUORUM, 30),
    (OpKind.GET, Consistency.ONE, 15),
    (OpKind.DELETE, None, 15),
)


class KeySpace:
    """``active`` keys in use at a time; a key is retired after ``ops_per_key`` operations
    and a fresh one takes its slot, so each key's history stays short."""

    def __init__(self, active: int, ops_per_key: int) -> None:
        self.ops_per_key = ops_per_key
        self.used: list[str] = []
        self._slots = [self._fresh() for _ in range(active)]
        self._counts = [0] * active

    def _fresh(self) -> str:
        key = f"k{len(self.used):05d}"
        self.used.append(key)
        return key

    def pick(self, rng: random.Random) -> str:
        slot = rng.randrange(len(self._slots))
        key = self._slots[slot]
        self._counts[slot] += 1
        if self._counts[slot] >= self.ops_per_key:
            self._slots[slot] = self._fresh()
            self._counts[slot] = 0
        return key


@dataclass
class History:
    """Every operation of a run, on one clock (seconds since the run started)."""

    clock: Callable[[], float]
    operations: list[Operation] = field(default_factory=list)
    local_reads: list[Operation] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, local: bool, **fields: Any) -> Operation:
        into = self.local_reads if local else self.operations
        op = Operation(index=len(into), **fields)
        into.append(op)
        return op

    def count_error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


class Budget:
    """At most ``total`` operations across all clients (every load loop is bounded in count)."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class ChaosClient:
    """One client: its own connection to every node, its own seeded choices."""

    def __init__(
        self,
        number: int,
        nodes: Mapping[str, tuple[str, int]],
        history: History,
        *,
        op_timeout: float,
        cluster_id: str = "kvwire",
        rng: random.Random | None = None,
    ) -> None:
        self.number = number
        self.nodes = dict(nodes)
        self.history = history
        self.op_timeout = op_timeout
        self.cluster_id = cluster_id
        self.rng = rng or random.Random(number)
        self._connections: dict[str, ClientConnection] = {}
        self._sequence = 0

    async def run(self, keys: KeySpace, budget: Budget, *, until: float, interval: float) -> None:
        """Issue operations until ``until`` (run clock) or the budget is spent, at most one per ``interval``."""
        clock = self.history.clock
        kinds = [(kind, consistency) for kind, consistency, _ in MIX]
        weights = [weight for *_, weight in MIX]
        next_at = clock()
        try:
            while clock() < until and budget.take():
                kind, consistency = self.rng.choices(kinds, weights)[0]
                node = self.rng.choice(sorted(self.nodes))
                await self.execute(node, kind, keys.pick(self.rng), consistency)
                next_at = max(next_at + interval, clock())
                await asyncio.sleep(max(0.0, min(next_at, until) - clock()))
        finally:
            self.close()

    async def execute(self, node: str, kind: OpKind, key: str, consistency: Consistency | None = None) -> Operation:
        """Send one operation to ``node`` and record it; never raises for the node's answer."""
        local = consistency is Consistency.ONE
        value = None
        if kind is OpKind.PUT:
            self._sequence += 1
            value = f"c{self.number}-{self._sequence}"
        clock = self.history.clock
        start = clock()
        try:
            connection = await self._connection(node)
        except (KvwireError, OSError) as exc:
            # Nothing was sent: the operation certainly took no effect.
            self.history.count_error(exc)
            await asyncio.sleep(CONNECT_BACKOFF)
            return self.history.record(local, client=self.number, kind=kind, key=key, start=start, end=clock(),
                                       outcome=Outcome.FAIL, value=value, node=node)
        start = clock()
        try:
            async with asyncio.timeout(self.op_timeout):
                reply = await connection.request(*_request(kind, key, value, consistency))
        except asyncio.CancelledError:
            self._drop(node)
            self.history.record(local, client=self.number, kind=kind, key=key, start=start, end=None,
                                outcome=Outcome.UNKNOWN, value=value, node=node)
            raise
        except (KvwireError, TimeoutError, OSError) as exc:
            outcome = outcome_of_error(exc)
            if outcome is not Outcome.NOT_FOUND:
                self.history.count_error(exc)
            if not connection.is_open or (isinstance(exc, TimeoutError) and not isinstance(exc, ServerError)):
                self._drop(node)  # a hung node's connection would only make the next operation wait too
            return self.history.record(local, client=self.number, kind=kind, key=key, start=start,
                                       end=None if outcome is Outcome.UNKNOWN else clock(), outcome=outcome,
                                       value=value, node=node)
        end = clock()
        if kind is OpKind.GET:
            value = reply.value
        return self.history.record(local, client=self.number, kind=kind, key=key, start=start, end=end,
                                   outcome=Outcome.OK, value=value, version=tuple(reply.version), node=node)

    async def _connection(self, node: str) -> ClientConnection:
        connection = self._connections.get(node)
        if connection is not None and connection.is_open:
            return connection
        host, port = self.nodes[node]
        connection = await ClientConnection.open(host, port, connect_timeout=self.op_timeout, cluster=self.cluster_id)
        self._connections[node] = connection
        return connection

    def _drop(self, node: str) -> None:
        connection = self._connections.pop(node, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        for node in list(self._connections):
            self._drop(node)


def _request(kind: OpKind, key: str, value: Any, consistency: Consistency | None) -> tuple:
    if kind is OpKind.PUT:
        return Put, key, value
    if kind is OpKind.DELETE:
        return Delete, key
    return Get, key, consistency


def make_clients(
    count: int, nodes: Mapping[str, tuple[str, int]], history: History, *, seed: int, op_timeout: float
) -> list[ChaosClient]:
    """``count`` clients, each with a PRNG derived from ``seed``."""
    return [
        ChaosClient(number, nodes, history, op_timeout=op_timeout, rng=random.Random(f"{seed}/client/{number}"))
        for number in range(count)
    ]


def monotonic_clock() -> Callable[[], float]:
    """Seconds since now, on ``time.monotonic``."""
    origin = time.monotonic()
    return lambda: time.monotonic() - origin
