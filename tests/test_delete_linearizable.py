"""DELETE must be linearizable: concurrent DELETEs of one live value, on a fault-free 3-node cluster.

Rules a linearizable register with delete obeys, checked on every round (each
round uses a fresh key, written once by an acknowledged PUT before any
DELETE starts, and never written again):

- At most one DELETE of that one live value answers DELETE_REPLY ("deleted"):
  each DELETE_REPLY claims it found the value live and removed it, and
  nothing made it live again in between. The others must answer NOT_FOUND, or
  an error that leaves the outcome open (CONFLICT, code 10, added for
  exactly this; or NO_QUORUM / TIMEOUT / UNAVAILABLE).
- A DELETE that answers NOT_FOUND (or DELETE_REPLY) says the key was absent at
  some point before its reply; so a quorum GET that starts after that reply
  must answer NOT_FOUND too. Returning the old value means NOT_FOUND claimed
  absence while the value was still live.
- Absence needs a cause: if anyone saw the key absent, some DELETE must have
  answered DELETE_REPLY or be of unknown outcome.
- After every reply of the round, a quorum GET sees the key absent. When some
  DELETE answered DELETE_REPLY or NOT_FOUND, linearizability alone demands
  it. When every DELETE answered CONFLICT ("may or may not have taken
  effect"), linearizability would let the value survive, but on a cluster
  with no faults and no other writer, DELETEs of a live value that all leave
  it live would be deletes lost for nothing, so the round fails then too
  (reported as its own kind of violation, apart from the safety ones).

Each round's operations form a small history, which ``kvwire.check`` (the
Wing–Gong–Lowe checker) checks as well: a violation it finds fails the round
with its report, beside the direct checks above.

The DELETEs go out on separate raw connections (``RawConnection``), one
already-encoded frame per node written back to back, so they really overlap;
replies are read as they come (``selectors``), and a follow-up GET is sent the
moment its connection's DELETE reply is decoded, so its start is after that
reply. Reply times are taken when the reply is decoded, so intervals are if
anything wider than the truth, which can only hide a violation, never make one up.
"""

from __future__ import annotations

import itertools
import selectors
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from kvwire.protocol import (
    CLOSED,
    NEED_DATA,
    Delete,
    DeleteReply,
    ErrorCode,
    ErrorReply,
    Get,
    GetReply,
    Put,
    PutReply,
    encode,
)
from kvwire.testing import LocalCluster, RawConnection

from kvwire.check import Operation, check_history, format_report

NODES = ("n1", "n2", "n3")
CONFLICT = ErrorCode.CONFLICT  # the DELETE may or may not have taken effect
# Errors that leave a write's outcome open (docs/protocol.md 6.4, 7.1).
INDETERMINATE = {CONFLICT, ErrorCode.NO_QUORUM, ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE}
# Bounds of each race test. The rarest of these bugs was expected about once in
# 100-200 rounds; on the code of 2026-12-01 (62659cd) two DELETE_REPLYs showed in
# nearly every round, the stale GET in about half of the three-DELETE rounds.
MAX_ROUNDS = 400
MAX_SECONDS = 40.0
# Fewer rounds than this within MAX_SECONDS would make a pass meaningless.
MIN_ROUNDS = 150
REPLY_TIMEOUT = 10.0  # fault-free cluster, write timeout 1 s: a reply always comes well before


@dataclass
class Op:
    client: int  # one per connection, which carries one request at a time
    node: str
    kind: str  # "put" | "delete" | "get"
    key: str
    start: float
    value: Any = None  # a PUT's value
    end: float | None = None
    reply: Any = None

    @property
    def outcome(self) -> str:
        """ok | not_found | fail | unknown | unexpected, as kvwire.check's history format means them."""
        reply = self.reply
        if isinstance(reply, (PutReply, DeleteReply, GetReply)):
            return "ok"
        if isinstance(reply, ErrorReply):
            if reply.code == ErrorCode.NOT_FOUND and self.kind != "put":
                return "not_found"
            if reply.code in INDETERMINATE:
                if self.kind == "get" or getattr(reply, "maybe_applied", None) is False:
                    return "fail"  # a failed read changed nothing; a write that says it wrote nothing
                return "unknown"
        return "unexpected"

    @property
    def definite_absence(self) -> bool:
        """This operation's reply says the key was absent at some point before its end."""
        return (self.kind == "delete" and self.outcome in ("ok", "not_found")) or (
            self.kind == "get" and self.outcome == "not_found"
        )

    def describe(self) -> str:
        shown = self.reply
        if isinstance(shown, ErrorReply):
            shown = f"ERROR code {shown.code}: {shown.message}"
        elif isinstance(shown, GetReply):
            shown = f"GET_REPLY {shown.value!r} {tuple(shown.version)}"
        elif isinstance(shown, (PutReply, DeleteReply)):
            shown = f"{type(shown).__name__} {tuple(shown.version)}"
        value = f" {self.value!r}" if self.kind == "put" else ""
        end = "…" if self.end is None else f"{self.end:.6f}"
        return f"{self.kind.upper()}{value} via {self.node} [{self.start:.6f}, {end}] -> {shown}"

    def to_check(self, index: int) -> Any:
        outcome = self.outcome
        reply = self.reply
        version = tuple(reply.version) if isinstance(reply, (PutReply, DeleteReply, GetReply)) else None
        value = self.value if self.kind == "put" else reply.value if isinstance(reply, GetReply) else None
        return Operation(
            client=self.client, kind=self.kind, key=self.key, start=self.start,
            end=None if outcome == "unknown" else self.end, outcome=outcome,
            value=value, version=version, node=self.node, index=index,
        )


class Wires:
    """One raw connection per node; requests started back to back, replies read as they arrive."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.conns = {node_id: RawConnection(cluster[node_id].address, timeout=REPLY_TIMEOUT) for node_id in NODES}
        self.clients = {node_id: number for number, node_id in enumerate(NODES, start=1)}
        self.ids = itertools.count(1)
        self.selector = selectors.DefaultSelector()
        for node_id, conn in self.conns.items():
            self.selector.register(conn.sock, selectors.EVENT_READ, node_id)

    def close(self) -> None:
        self.selector.close()
        for conn in self.conns.values():
            conn.close()

    def call(self, node_id: str, kind: str, key: str, value: Any = None) -> Op:
        return self.race([(node_id, kind, value)], key)[0]

    def race(
        self,
        starts: list[tuple[str, str, Any]],
        key: str,
        then: Callable[[Op], tuple[str, Any] | None] | None = None,
    ) -> list[Op]:
        """Send each ``(node, kind, value)`` at once, each on its node's connection; whenever a
        reply arrives, ``then(op)`` may name the next ``(kind, value)`` for that connection.
        Returns every operation, in the order their replies arrived."""
        frames = []
        for node_id, kind, value in starts:
            request_id = next(self.ids)
            frames.append((node_id, kind, value, request_id, encode(_request(kind, request_id, key, value))))
        waiting: dict[str, tuple[int, Op]] = {}
        for node_id, kind, value, request_id, frame in frames:
            assert node_id not in waiting, "one request at a time per connection"
            op = Op(self.clients[node_id], node_id, kind, key, time.monotonic(), value)
            self.conns[node_id].send_bytes(frame)
            waiting[node_id] = (request_id, op)
        done: list[Op] = []
        deadline = time.monotonic() + REPLY_TIMEOUT
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pending = "; ".join(op.describe() for _, op in waiting.values())
                raise AssertionError(f"no reply within {REPLY_TIMEOUT} s in a fault-free cluster: {pending}")
            for selected, _ in self.selector.select(remaining):
                node_id = selected.data
                conn = self.conns[node_id]
                data = conn.sock.recv(1 << 20)
                if not data:
                    raise AssertionError(f"{node_id} closed the connection")
                conn.codec.receive_data(data)
                while (event := conn.codec.next_event()) is not NEED_DATA:
                    if event is CLOSED:
                        raise AssertionError(f"{node_id} closed the connection")
                    now = time.monotonic()
                    request_id, op = waiting.pop(node_id)
                    assert event.id == request_id, (event, request_id)
                    op.end, op.reply = now, event
                    done.append(op)
                    follow = then(op) if then is not None else None
                    if follow is not None:
                        kind, value = follow
                        request_id = next(self.ids)
                        frame = encode(_request(kind, request_id, key, value))
                        nxt = Op(self.clients[node_id], node_id, kind, key, time.monotonic(), value)
                        conn.send_bytes(frame)
                        waiting[node_id] = (request_id, nxt)
        return done


def _request(kind: str, request_id: int, key: str, value: Any):
    if kind == "put":
        return Put(request_id, key, value)
    if kind == "delete":
        return Delete(request_id, key)
    return Get(request_id, key)  # quorum: consistency absent


# Kinds of violation, each reported with its count and first example.
TWO_DELETED = "two DELETE_REPLYs for one live value"
STALE_AFTER_ABSENT = "a quorum GET returned the old value after a reply said the key was absent"
ABSENT_WITHOUT_CAUSE = "the key was seen absent, yet no DELETE deleted it"
STILL_LIVE = "every DELETE answered CONFLICT and a quorum GET after them all still read the value"
CHECKER = "kvwire.check found the round's history not linearizable"
OTHER = "unexpected reply or value"


def violations(history: list[Op]) -> list[tuple[str, str]]:
    """``(kind, detail)`` for everything this round's history breaks; its first operation is
    the PUT that made the value live."""
    put, rest = history[0], history[1:]
    problems = [(OTHER, f"unexpected reply: {op.describe()}") for op in history if op.outcome == "unexpected"]
    if put.outcome != "ok":
        return problems + [(OTHER, f"the round's PUT failed: {put.describe()}")]
    deletes = [op for op in rest if op.kind == "delete"]
    deleted = [op for op in deletes if op.outcome == "ok"]
    if len(deleted) > 1:
        problems.append((TWO_DELETED, " | ".join(op.describe() for op in deleted)))
    for get in (op for op in rest if op.kind == "get" and op.outcome == "ok"):
        if get.reply.value != put.value:
            problems.append((OTHER, f"GET read a value never written: {get.describe()}"))
        for earlier in rest:
            if earlier.definite_absence and earlier.end < get.start:
                problems.append((STALE_AFTER_ABSENT, f"{earlier.describe()}, then {get.describe()}"))
    final = history[-1]  # the quorum GET after every other reply
    if final.kind != "get" or final.outcome not in ("ok", "not_found"):
        problems.append((OTHER, f"the round's last quorum GET failed: {final.describe()}"))
    elif final.outcome == "ok" and not any(op.definite_absence for op in rest[:-1]):
        problems.append((STILL_LIVE, final.describe()))
    if any(op.definite_absence for op in rest) and not any(op.outcome in ("ok", "unknown") for op in deletes):
        problems.append((ABSENT_WITHOUT_CAUSE, "no DELETE answered DELETE_REPLY or is of unknown outcome"))
    report = check_history([op.to_check(index) for index, op in enumerate(history)])
    if report.verdict == "violation":
        problems.append((CHECKER, format_report(report)))
    return problems


def run_rounds(cluster: LocalCluster, play_round: Callable[[Wires, int], list[Op]], label: str) -> None:
    """Play rounds until MAX_ROUNDS or MAX_SECONDS; fail with each kind of violation seen,
    how often, and the first round that showed it."""
    wires = Wires(cluster)
    started = time.monotonic()
    outcomes: Counter = Counter()
    open_rounds = rounds = 0
    seen: Counter = Counter()
    first: dict[str, tuple[int, list[Op], list[str]]] = {}
    try:
        for number in range(MAX_ROUNDS):
            if time.monotonic() - started > MAX_SECONDS:
                break
            history = play_round(wires, number)
            rounds += 1
            deletes = [op for op in history if op.kind == "delete"]
            outcomes[" + ".join(sorted(op.outcome for op in deletes))] += 1
            if not any(op.definite_absence for op in deletes):
                open_rounds += 1
            problems = violations(history)
            for kind in dict.fromkeys(kind for kind, _ in problems):
                seen[kind] += 1
                first.setdefault(kind, (number, history, [detail for k, detail in problems if k == kind]))
    finally:
        wires.close()
    elapsed = time.monotonic() - started
    summary = (f"{label}: {rounds} rounds in {elapsed:.1f} s; DELETE outcomes per round: {dict(outcomes)}; "
               f"rounds where every DELETE was of open outcome (CONFLICT...): {open_rounds}")
    print(summary)
    if first:
        lines = [summary, "violations (rounds showing each kind):"]
        for kind, count in seen.most_common():
            number, history, details = first[kind]
            lines.append(f"- {kind}: {count} of {rounds} rounds; first in round {number}:")
            lines += [f"    {line}" for detail in details for line in detail.rstrip().splitlines()]
            lines.append("    that round's history:")
            lines += [f"      {op.describe()}" for op in history]
        pytest.fail("\n".join(lines), pytrace=False)
    assert rounds >= MIN_ROUNDS, f"only {rounds} rounds in {elapsed:.1f} s: too few to have caught anything"


def _final_get(wires: Wires, number: int, key: str) -> Op:
    """A quorum GET, after every reply of the round, through a node chosen by the round number."""
    return wires.call(NODES[(number + 1) % len(NODES)], "get", key)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # --sync normal: not a durability test; a shared disk's fsync stall must not fail a write.
    with LocalCluster(3, data_dir=tmp_path_factory.mktemp("delete-linearizable"), sync="normal") as started:
        yield started
    for node in started:
        assert "Traceback" not in node.log(), node.log()


def _put(wires: Wires, number: int, key: str) -> Op:
    put = wires.call(NODES[number % len(NODES)], "put", key, f"value-{number}")
    assert put.outcome == "ok", put.describe()
    return put


def test_delete_then_quorum_get_racing_another_delete(cluster):
    """Rounds of: PUT k (acknowledged); then at once DELETE k via n2, and via n1 DELETE k
    followed, the moment its reply arrives, by a quorum GET k via n1."""

    def play(wires: Wires, number: int) -> list[Op]:
        key = f"delete-then-get/{number}"
        put = _put(wires, number, key)
        starts = [("n2", "delete", None), ("n1", "delete", None)]
        if number % 2:
            starts.reverse()
        ops = wires.race(starts, key, lambda op: ("get", None) if op.node == "n1" and op.kind == "delete" else None)
        return [put, *ops, _final_get(wires, number, key)]

    run_rounds(cluster, play, "DELETE via n2 racing DELETE-then-GET via n1")


def test_three_concurrent_deletes_of_one_live_value(cluster):
    """Rounds of: PUT k (acknowledged); then DELETE k through all three nodes at once, each
    followed on its connection by a quorum GET k; at most one DELETE may say it deleted."""

    def play(wires: Wires, number: int) -> list[Op]:
        key = f"three-deletes/{number}"
        put = _put(wires, number, key)
        order = NODES[number % 3:] + NODES[:number % 3]
        ops = wires.race([(node_id, "delete", None) for node_id in order], key,
                         lambda op: ("get", None) if op.kind == "delete" else None)
        return [put, *ops, _final_get(wires, number, key)]

    run_rounds(cluster, play, "three concurrent DELETEs")
