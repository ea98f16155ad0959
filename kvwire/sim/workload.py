"""Simulated clients: concurrent GET, PUT and DELETE with timeouts and retries, recorded as a history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..check.history import OpKind, Operation, Outcome
from ..check.outcomes import outcome_of_error
from ..protocol.messages import Consistency, Delete, DeleteReply, Get, GetReply, Put, PutReply

if TYPE_CHECKING:
    from .world import World

# A client gives up on a request after this long and records it as unknown;
# above a write's own timeout plus a DELETE's retries, so most failures are
# answered by the node rather than timed out. ``--client-timeout`` shortens it,
# as a real client's attempt timeout does (1 s by default): its PUTs are then
# sent again while the first attempt still waits on a stopped node.
CLIENT_TIMEOUT = 3.0
# Operations per key before it is retired: keeps each key's history short
# enough for the linearizability search (Lowe's and Porcupine's advice).
OPS_PER_KEY = 24
KEYS_AT_ONCE = 4
# A client's pause between operations: spreads 200 operations over a few
# virtual seconds, so several faults strike while they run.
THINK_TIME = 0.08


@dataclass
class StaleRead:
    """A consistency=one GET; checked only to read something some PUT wrote."""

    key: str
    value: Any
    found: bool


class Workload:
    """``idless_puts``: the share of PUTs sent without a request id, as a node's own HTTP
    bridge sends a PUT whose caller gave none (kvwire.server.in_process). Such a PUT is
    never sent again: with no id, a second attempt would be a second write. At 0, the
    default, no random number is drawn for it, so every seed runs as it always has."""

    def __init__(self, world: World, operations: int, clients: int, client_timeout: float = CLIENT_TIMEOUT,
                 idless_puts: float = 0.0) -> None:
        self.world = world
        self.idless_puts = idless_puts
        self.idless_sent = 0
        self.budget = operations
        self.clients = clients
        self.client_timeout = client_timeout
        self.history: list[Operation] = []
        self.one_reads: list[StaleRead] = []
        self.running = 0
        self._issued_on: dict[str, int] = {}
        self._live_keys = [f"k{i}" for i in range(KEYS_AT_ONCE)]
        self._next_key = KEYS_AT_ONCE
        self._values = 0

    def start(self) -> None:
        for client in range(self.clients):
            self.world.scheduler.after(self.world.rng.uniform(0, 0.01), lambda client=client: self._next(client, None))

    @property
    def done(self) -> bool:
        return self.budget <= 0 and self.running == 0

    def _pick_key(self) -> str:
        rng = self.world.rng
        index = rng.randrange(len(self._live_keys))
        key = self._live_keys[index]
        count = self._issued_on.get(key, 0) + 1
        self._issued_on[key] = count
        if count >= OPS_PER_KEY:
            self._live_keys[index] = f"k{self._next_key}"
            self._next_key += 1
        return key

    def _next(self, client: int, retry: tuple | None) -> None:
        if self.budget <= 0:
            return
        self.budget -= 1
        rng = self.world.rng
        origin = None
        with_id = True
        if retry is not None:
            kind, key, value, consistency, origin = retry
        else:
            key = self._pick_key()
            roll = rng.random()
            if roll < 0.4:
                kind, consistency = OpKind.GET, (Consistency.ONE if rng.random() < 0.15 else None)
            elif roll < 0.8:
                kind, consistency = OpKind.PUT, None
            else:
                kind, consistency = OpKind.DELETE, None
            self._values += 1
            value = f"v{self._values}" if kind is OpKind.PUT else None
            if kind is OpKind.PUT and self.idless_puts and rng.random() < self.idless_puts:
                with_id = False
                self.idless_sent += 1
        node = self.world.nodes[rng.choice(sorted(self.world.nodes))]
        self._issue(client, node, kind, key, value, consistency, origin, with_id)

    def _issue(self, client: int, node, kind: OpKind, key: str, value: Any, consistency,
               origin: int | None = None, with_id: bool = True) -> None:
        """``origin``: for a PUT sent again with its request id, the history index of
        its first attempt. Both are one operation to the checker, as they are to
        the client: from the first attempt's start to the last one's answer."""
        world = self.world
        start = world.scheduler.now if origin is None else self.history[origin].start
        self.running += 1
        finished = False

        def finish(outcome: Outcome, read: Any = None, version=None) -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            self.running -= 1
            end = None if outcome is Outcome.UNKNOWN else world.scheduler.now
            if consistency is Consistency.ONE:
                if outcome in (Outcome.OK, Outcome.NOT_FOUND):
                    self.one_reads.append(StaleRead(key, read, outcome is Outcome.OK))
            else:
                recorded = value if kind is OpKind.PUT else read
                index = len(self.history) if origin is None else origin
                if origin is not None and outcome is not Outcome.OK:
                    # One attempt may have taken effect: certain only if both did not.
                    first = self.history[origin].outcome
                    outcome = Outcome.FAIL if first is Outcome.FAIL and outcome is Outcome.FAIL else Outcome.UNKNOWN
                    end = None if outcome is Outcome.UNKNOWN else end
                op = Operation(client, kind, key, start, end, outcome, recorded,
                               tuple(version) if version is not None else None, node.node_id, index)
                if origin is None:
                    self.history.append(op)
                else:
                    self.history[origin] = op
            # What the client saw, so that a failing run's trace shows the operations the
            # checker names (it held only faults and peer states: a probe's finding).
            tag = f" at ({version[0]}, {version[1]!r})" if version is not None else ""
            world.trace(f"client {client}: {kind.value} {key!r} via {node.node_id} -> {outcome.value}{tag}")
            # After an uncertain write, sometimes try it again elsewhere, as a client library would.
            # A PUT is sent again with its request id: the same operation, applied once.
            again = None
            if (kind is not OpKind.GET and with_id and outcome in (Outcome.UNKNOWN, Outcome.FAIL)
                    and world.rng.random() < 0.5):
                same = kind is OpKind.PUT and consistency is not Consistency.ONE
                again = (kind, key, value, consistency, (index if origin is None else origin) if same else None)
            world.scheduler.after(world.rng.uniform(0, THINK_TIME), lambda: self._next(client, again))

        def on_reply(reply: Any) -> None:
            if isinstance(reply, GetReply):
                finish(Outcome.OK, reply.value, reply.version)
            elif isinstance(reply, PutReply):
                finish(Outcome.OK, None, reply.version)
            elif isinstance(reply, DeleteReply):
                finish(Outcome.OK, None, reply.version)
            else:
                finish(outcome_of_error(reply))

        if not node.alive:
            world.scheduler.after(0.0005, lambda: finish(Outcome.FAIL))  # connection refused: never sent
            return
        request_id = len(self.history) + 1
        if kind is OpKind.GET:
            request = Get(request_id, key, consistency)
        elif kind is OpKind.PUT:
            # The value names the write (each is new), so a retry of it sends the
            # same request id, as the client library does: applied at most once.
            request = Put(request_id, key, value, f"put-{value}" if with_id else None, origin is not None or None)
        else:
            request = Delete(request_id, key)
        incarnation = node.incarnation

        def deliver() -> None:
            if node.alive and node.incarnation == incarnation:
                node.client_request(on_reply, request)
            else:
                finish(Outcome.UNKNOWN)

        shown = f" {value!r}" if kind is OpKind.PUT else ""
        world.trace(f"client {client}: {kind.value} {key!r}{shown} via {node.node_id}"
                    f"{' (consistency one)' if consistency is Consistency.ONE else ''}"
                    f"{' again, same request id' if origin is not None else ''}")
        world.scheduler.after(world.latency(), lambda: node.run(deliver) if node.alive else finish(Outcome.UNKNOWN))
        world.scheduler.after(self.client_timeout, lambda: finish(Outcome.UNKNOWN))
