"""Clients that record every operation they issue, with what they learnt from it.

Each raw client holds one connection per node and sends each operation to one
node it picks, with its own timeout; it never retries on another node, so a
failover can never turn an indeterminate outcome into a clean one. A timed-out
or broken connection is dropped and reopened on the next use.

A library client (``LibraryClient``) goes through kvwire's own AsyncClient
instead, so what the library does with a failure is checked too: its failover,
its retries and its request ids. Each call is one operation, from its start to
the library's answer, which must not be cleaner than what happened: a retry
that turned a DELETE's indeterminate first attempt into an acknowledged one
lost a write (2026-12-06), which the raw clients could not show.

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
from kvwire.client.aio import AsyncClient
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
        value = self._value_for(kind)
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
            if not connection.is_open or (isinstance(exc, TimeoutError) and not isinstance(exc, ServerError)):
                self._drop(node)  # a hung node's connection would only make the next operation wait too
            return self._record_failure(exc, local, kind, key, start, value, node)
        end = clock()
        if kind is OpKind.GET:
            value = reply.value
        return self.history.record(local, client=self.number, kind=kind, key=key, start=start, end=end,
                                   outcome=Outcome.OK, value=value, version=tuple(reply.version), node=node)

    def _value_for(self, kind: OpKind) -> str | None:
        """A PUT's value: a new one for every PUT, naming its client."""
        if kind is not OpKind.PUT:
            return None
        self._sequence += 1
        return f"c{self.number}-{self._sequence}"

    def _record_failure(self, exc: BaseException, local: bool, kind: OpKind, key: str, start: float, value: Any,
                        node: str) -> Operation:
        outcome = outcome_of_error(exc)
        if outcome is not Outcome.NOT_FOUND:
            self.history.count_error(exc)
        return self.history.record(local, client=self.number, kind=kind, key=key, start=start,
                                   end=None if outcome is Outcome.UNKNOWN else self.history.clock(), outcome=outcome,
                                   value=value, node=node)

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


class LibraryClient(ChaosClient):
    """A client through AsyncClient, as an application uses kvwire: one AsyncClient for
    each node it may prefer, that node first and the others after it, so its
    operations spread over the nodes as a raw client's do and fail over from there."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[str, AsyncClient] = {}

    async def run(self, keys: KeySpace, budget: Budget, *, until: float, interval: float) -> None:
        try:
            await super().run(keys, budget, until=until, interval=interval)
        finally:
            await asyncio.gather(*(client.close() for client in self._clients.values()), return_exceptions=True)

    async def execute(self, node: str, kind: OpKind, key: str, consistency: Consistency | None = None) -> Operation:
        """One call preferring ``node``, and its record; never raises for the call's outcome."""
        local = consistency is Consistency.ONE
        value = self._value_for(kind)
        client = self._client(node)
        clock = self.history.clock
        start = clock()
        try:
            if kind is OpKind.GET:
                value, version = await client.get_with_version(key, consistency=consistency)
            elif kind is OpKind.PUT:
                version = await client.put(key, value)
            else:
                version = await client.delete(key)
        except asyncio.CancelledError:
            self.history.record(local, client=self.number, kind=kind, key=key, start=start, end=None,
                                outcome=Outcome.UNKNOWN, value=value, node=node)
            raise
        except (KvwireError, TimeoutError, OSError) as exc:
            return self._record_failure(exc, local, kind, key, start, value, node)
        return self.history.record(local, client=self.number, kind=kind, key=key, start=start, end=clock(),
                                   outcome=Outcome.OK, value=value, version=tuple(version), node=node)

    def _client(self, node: str) -> AsyncClient:
        client = self._clients.get(node)
        if client is None:
            order = sorted(self.nodes)
            first = order.index(node)
            endpoints = [f"{self.nodes[name][0]}:{self.nodes[name][1]}" for name in order[first:] + order[:first]]
            client = self._clients[node] = AsyncClient(endpoints, timeout=self.op_timeout, cluster=self.cluster_id)
        return client

    def close(self) -> None:
        pass  # its AsyncClients are closed at the end of run, which may await


def _request(kind: OpKind, key: str, value: Any, consistency: Consistency | None) -> tuple:
    if kind is OpKind.PUT:
        return Put, key, value
    if kind is OpKind.DELETE:
        return Delete, key
    return Get, key, consistency


def make_clients(
    count: int, nodes: Mapping[str, tuple[str, int]], history: History, *, seed: int, op_timeout: float,
    library: int = 0,
) -> list[ChaosClient]:
    """``count`` clients, each with a PRNG derived from ``seed``; the last ``library`` of them LibraryClients."""
    return [
        (LibraryClient if number >= count - library else ChaosClient)(
            number, nodes, history, op_timeout=op_timeout, rng=random.Random(f"{seed}/client/{number}"))
        for number in range(count)
    ]


def monotonic_clock() -> Callable[[], float]:
    """Seconds since now, on ``time.monotonic``."""
    origin = time.monotonic()
    return lambda: time.monotonic() - origin
