"""After the faults: each replica's copy of every key, then a quorum read of every key through each node.

The replicas are read first (``consistency=one``), because a quorum read
writes the newest version back to the replicas it asked and would hide a
replica that hints never reached; again while they differ, up to a deadline,
as anti-entropy settles what no hint carries (``settled_replica_states``). A key a node answers "not found" for is left
out of its state: a tombstone and a key never written read alike.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Mapping, Sequence

from kvwire.check.history import OpKind, Outcome
from kvwire.check.invariants import check_converged
from kvwire.protocol import Consistency

from .workload import ChaosClient, History

# A replica read that fails after the cluster converged is retried a little
# before it is reported: the node may be busy writing back.
REPLICA_READ_ATTEMPTS = 3
# Between reads of replicas that still differ: about half an anti-entropy round.
SETTLE_POLL_S = 1.0

ReplicaStates = dict[str, dict[str, tuple[tuple[int, str], bool, Any]]]


async def read_replica_states(
    nodes: Mapping[str, tuple[str, int]], keys: Sequence[str], history: History, *, first_client: int, op_timeout: float
) -> tuple[ReplicaStates, list[str]]:
    """node -> key -> (version, deleted, value) for every live key, and the keys a node would not give."""
    states: ReplicaStates = {node: {} for node in nodes}
    problems: list[str] = []

    async def read_node(number: int, node: str) -> None:
        client = ChaosClient(number, {node: nodes[node]}, history, op_timeout=op_timeout)
        try:
            for key in keys:
                for _ in range(REPLICA_READ_ATTEMPTS):
                    op = await client.execute(node, OpKind.GET, key, Consistency.ONE)
                    if op.outcome in (Outcome.OK, Outcome.NOT_FOUND):
                        break
                else:
                    problems.append(f"{node} did not answer a consistency=one GET of {key!r} in {REPLICA_READ_ATTEMPTS} tries")
                    continue
                if op.outcome is Outcome.OK:
                    states[node][key] = (op.version, False, op.value)
        finally:
            client.close()

    await asyncio.gather(*(read_node(first_client + number, node) for number, node in enumerate(nodes)))
    return states, problems


async def settled_replica_states(read: Callable[[], Awaitable[tuple[ReplicaStates, list[str]]]], *,
                                 deadline: float, clock: Callable[[], float],
                                 pause: float = SETTLE_POLL_S) -> tuple[ReplicaStates, list[str]]:
    """The replicas' states once they agree, or as they are at ``deadline``. Hints settle
    what a decided write left behind; a write that stayed undecided (a DELETE whose
    client heard nothing, its tombstone on one node) is not hinted, and anti-entropy
    settles its copies a round or two later: read at once, the replicas could still
    differ on it, as one chaos run in five of a heavy mix found."""
    while True:
        states, problems = await read()
        if not check_converged(states) or clock() >= deadline:
            return states, problems
        await asyncio.sleep(pause)


async def final_quorum_reads(
    nodes: Mapping[str, tuple[str, int]], keys: Sequence[str], history: History, *, first_client: int, op_timeout: float
) -> None:
    """A quorum GET of every key through every node, recorded in ``history`` like any client's."""

    async def read_node(number: int, node: str) -> None:
        client = ChaosClient(number, {node: nodes[node]}, history, op_timeout=op_timeout)
        try:
            for key in keys:
                await client.execute(node, OpKind.GET, key, Consistency.QUORUM)
        finally:
            client.close()

    await asyncio.gather(*(read_node(first_client + number, node) for number, node in enumerate(nodes)))
