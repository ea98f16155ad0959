"""One simulated run: a seeded world, a workload, a nemesis, then heal, read back and check."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..check import DEFAULT_MAX_STEPS, check_history
from ..check.history import OpKind, Operation, Outcome
from ..protocol.messages import Get
from ..server.core.hints import SWEEP_INTERVAL
from .nemesis import Nemesis
from .workload import CLIENT_TIMEOUT, Workload
from .world import World

# Virtual seconds allowed for the workload, and for the cluster to settle
# once every fault is healed; both far above what a clean run needs.
WORKLOAD_LIMIT = 600.0
# Time for restarted nodes to relink (reconnect backoff is at most 1 s, the
# failure detector needs a heartbeat) and for replicas to agree, before any read.
SETTLE_TIME = 3.0
# Beyond a write timeout and the hint sweep (below), for a replay to be delivered:
# a round trip, the peer's commit, a restarted peer's relink.
HINT_DELIVERY_TIME = 1.0
# Virtual seconds within which a running node answers every request it took, a
# client's or a peer's, once every fault is healed (or after it took it, if later):
# a client's has a deadline of a write timeout (1 s), which bounds a DELETE's
# retries too; a peer's waits at most on a disk the heal set going again.
ANSWER_BOUND = SETTLE_TIME


@dataclass
class RunResult:
    seed: int
    ok: bool
    problems: list[str]
    operations: list[Operation]
    faults: dict[str, int]
    virtual_seconds: float
    steps: int
    report: object = None
    trace: list[str] = field(default_factory=list)


def run_seed(seed: int, *, operations: int = 200, nodes: int = 3, faults: tuple[str, ...] = (),
             mutant: str | None = None, clients: int = 5, client_timeout: float = CLIENT_TIMEOUT,
             max_steps: int = DEFAULT_MAX_STEPS, idless_puts: float = 0.0) -> RunResult:
    world = World(seed, nodes, mutant=mutant)
    for node in world.nodes.values():
        node.start()
    workload = Workload(world, operations, clients, client_timeout, idless_puts)
    nemesis = Nemesis(world, faults)
    # Let the links come up before the first request.
    world.scheduler.run_until(0.3)
    workload.start()
    nemesis.start()
    world.scheduler.run_until(WORKLOAD_LIMIT, lambda: workload.done)
    problems: list[str] = []
    if not workload.done:
        problems.append(f"the workload did not finish within {WORKLOAD_LIMIT} virtual seconds")
    nemesis.stop()
    _heal(world)
    healed_at = world.scheduler.now
    hints_left = _watch_hints(world)
    world.scheduler.run_until(world.scheduler.now + SETTLE_TIME)
    problems.extend(_check_converged(world))
    problems.extend(_read_back(world, workload))
    states = {
        node_id: {key: row for key, row in node.disk.rows.items()}
        for node_id, node in world.nodes.items()
    }
    report = check_history(workload.history, replica_states=states, max_steps=max_steps)
    world.scheduler.run_until(hints_left.deadline, lambda: hints_left.taken)
    problems.extend(hints_left.problems)
    problems.extend(_check_every_request_answered(world, healed_at))
    problems.extend(report.problems)
    verdict = report.linearizability.verdict
    if verdict != "ok" and not any("not linearizable" in problem for problem in problems):
        problems.append(f"linearizability: {verdict}")
    problems.extend(_check_one_reads(workload))
    injected = dict(nemesis.injected)
    if workload.idless_sent:
        injected["idless_puts"] = workload.idless_sent  # counted with the faults, to show they ran
    return RunResult(seed, not problems, problems, workload.history, injected,
                     world.scheduler.now, world.scheduler.steps, report, world.log)


@dataclass
class _HintWatch:
    deadline: float
    taken: bool = False
    problems: list[str] = field(default_factory=list)


def _watch_hints(world: World) -> _HintWatch:
    """Hints must drain once everything is healed. (The read-back repairs replicas
    by itself, so without this check replay would go untested.)

    The bound is the design's: a replay in flight when the faults healed may still
    fail, a write timeout later, and wait out its backoff, which is capped at the
    sweep interval, before it is sent again. The check only looks, at that time, so
    that it changes nothing the run does before it, the read-back included."""
    write_timeout = max(node.config.write_timeout for node in world.nodes.values())
    bound = write_timeout + SWEEP_INTERVAL + HINT_DELIVERY_TIME
    watch = _HintWatch(world.scheduler.now + bound)

    def look() -> None:
        watch.taken = True
        for node_id, node in world.nodes.items():
            for peer, keys in (node.core.hints.by_peer.items() if node.core else ()):
                if keys:
                    watch.problems.append(f"{node_id} still holds {len(keys)} hint(s) for {peer} "
                                          f"{bound:g} s after every fault healed")

    world.scheduler.at(watch.deadline, look)
    return watch


def _check_every_request_answered(world: World, healed_at: float) -> list[str]:
    """Every request a node took, a client's or a peer's, is answered: by its deadline,
    or once the fault that held it is healed. The history cannot tell: a client that
    gives up records its request as unknown, and the checker passes those, so a core
    that forgot to answer one (and in a real node kept its connection's slot and bytes
    for good, kvwire.server.flow) ran clean. Looked at once the hints have drained, at
    least SETTLE_TIME after the heal: a request the node's present incarnation still
    holds ANSWER_BOUND after the heal, or after it took it if later, is overdue."""
    now = world.scheduler.now
    problems = []
    for node_id, node in sorted(world.nodes.items()):
        overdue = sorted((taken_at, type(request).__name__, getattr(request, "key", None))
                         for _token, request, taken_at in node.unanswered.values()
                         if now - max(taken_at, healed_at) >= ANSWER_BOUND)
        if overdue:
            taken_at, kind, key = overdue[0]
            problems.append(f"{node_id} never answered {len(overdue)} request(s) it took (first: {kind} of {key!r} "
                            f"at {taken_at:.3f} s) {now - max(taken_at, healed_at):.1f} s after every fault "
                            "healed, or after it took them")
    return problems


def _heal(world: World) -> None:
    world.trace("heal: every fault ends; the read-back follows")
    world.crash_at_next_persist = None
    world.blocked.clear()
    world.faults.drop = world.faults.duplicate = 0.0
    world.faults.max_delay = 0.002
    for node in world.nodes.values():
        node.disk.failing_until = node.disk.slow_until = -1.0
        if node.disk.stalled_until > world.scheduler.now:
            node.disk.stalled_until = -1.0
            node.unstalled()
        if not node.alive:
            node.start()
        elif node.paused:
            node.resume()


def _check_converged(world: World) -> list[str]:
    """Every replica holds the same live keys at the same tags, before any read:
    hints and anti-entropy alone must have brought them together."""
    def live(node) -> dict:
        return {key: row[0] for key, row in node.disk.rows.items() if not row[1]}

    states = {node_id: live(node) for node_id, node in sorted(world.nodes.items())}
    first_id, first = next(iter(states.items()))
    problems = []
    for node_id, state in states.items():
        differing = sorted(key for key in first.keys() | state.keys() if first.get(key) != state.get(key))
        if differing:
            problems.append(f"{node_id} and {first_id} still differ on {len(differing)} live key(s) "
                            f"({', '.join(differing[:3])}{', …' if len(differing) > 3 else ''}) {SETTLE_TIME} s after every fault "
                            "healed, before any read")
    return problems


# Far below any latency the simulated network has (its least, Faults.min_delay, is 0.2 ms).
READ_BACK_NUDGE = 1e-9


# Virtual seconds a read-back pass through one node may take: five write timeouts.
READ_BACK_PASS_TIME = 5.0


def _read_back(world: World, workload: Workload) -> list[str]:
    """Two passes of quorum GETs of every key through every node, recorded in the history.

    Each node's read includes itself, so after two passes every replica holds
    the newest version: convergence through read repair, checked below. Every
    fault is healed by then, so every read must be answered, found or not: a
    failed or unanswered one is a problem. (A failed read was only recorded, and
    the checker passes failed reads: a probe's core that answered nothing at all
    ran clean.)
    """
    keys = sorted({op.key for op in workload.history})
    failed: list[str] = []
    unanswered = 0
    for round_number in range(2):
        for node_id in sorted(world.nodes):
            node = world.nodes[node_id]
            # This pass's own answers: a late one of the pass before ended it early,
            # and its unanswered reads went uncounted (a reviewer's finding).
            answered = [0]
            for key in keys:
                _final_read(world, workload, node, key, failed, answered)
            world.scheduler.run_until(world.scheduler.now + READ_BACK_PASS_TIME,
                                      lambda: answered[0] >= len(keys))
            unanswered += len(keys) - answered[0]
    # Let the last write-backs' commits land before the disks are compared.
    world.scheduler.run_until(world.scheduler.now + 0.1)
    problems = []
    sent = 2 * len(world.nodes) * len(keys)
    if failed:
        problems.append(f"{len(failed)} of {sent} quorum reads after every fault healed failed "
                        f"(first: {failed[0]})")
    if unanswered:
        problems.append(f"{unanswered} of {sent} quorum reads after every fault healed had no answer "
                        f"within {READ_BACK_PASS_TIME:g} s of their pass")
    return problems


def _final_read(world: World, workload: Workload, node, key: str, failed: list[str], answered: list[int]) -> None:
    # Sent once every read before it has its reply, at that reply's virtual time: the
    # checker takes intervals that only touch for concurrent, as a real clock's must
    # be, so a read-back pass was left unordered after the one before it (a checker
    # probe's finding). A nudge, recorded only: no event moves.
    start = world.scheduler.now + READ_BACK_NUDGE
    index = len(workload.history)

    def on_reply(reply) -> None:
        from ..protocol.errors import KeyNotFoundError
        from ..protocol.messages import GetReply

        now = max(world.scheduler.now, start)
        if isinstance(reply, GetReply):
            op = Operation(-1, OpKind.GET, key, start, now, Outcome.OK, reply.value, tuple(reply.version), node.node_id, index)
        elif isinstance(reply, KeyNotFoundError):
            op = Operation(-1, OpKind.GET, key, start, now, Outcome.NOT_FOUND, None, None, node.node_id, index)
        else:
            op = Operation(-1, OpKind.GET, key, start, now, Outcome.FAIL, None, None, node.node_id, index)
            failed.append(f"GET {key!r} through {node.node_id}: {reply!r}")
        workload.history.append(op)
        answered[0] += 1

    node.run(lambda: node.client_request(on_reply, Get(0, key)))


def _check_one_reads(workload: Workload) -> list[str]:
    """A consistency=one GET may be stale, but never shows a value no PUT wrote: a PUT
    that failed (certainly took no effect) wrote none (a checker probe's finding)."""
    written = {(op.key, op.value) for op in workload.history if op.kind is OpKind.PUT and op.outcome is not Outcome.FAIL}
    return [
        f"a consistency=one GET of {read.key!r} returned {read.value!r}, which no PUT wrote"
        for read in workload.one_reads
        if read.found and (read.key, read.value) not in written
    ]
