"""One chaos run: real nodes, clients, the nemesis, convergence, and the checked history.

Whatever ends the run (its end, an error, SIGTERM or SIGINT), the nodes are
stopped and the iptables chain removed before it returns; ``atexit`` repeats
both for paths no ``finally`` covers.
"""

from __future__ import annotations

import asyncio
import atexit
import random
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kvwire.check import CheckReport, check_history
from kvwire.check.history import Operation

from .config import ChaosConfig
from .final import ReplicaStates, final_quorum_reads, read_replica_states, settled_replica_states
from .firewall import Firewall, remove_stale_chains_if_root
from .local_reads import check_local_reads
from .nemesis import Fault, Nemesis, NodeExit
from .nodes import ChaosCluster
from .workdir import fresh_nodes_directory
from .workload import Budget, History, KeySpace, make_clients, monotonic_clock

# The nemesis thread gets this long to notice an abort and heal (a restart in
# progress may need a few seconds) before cleanup goes on without it.
NEMESIS_JOIN_TIMEOUT = 30.0


class ChaosInterrupted(Exception):
    """The run was stopped by a signal; everything was cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; the nodes were stopped and the iptables rules removed")
        self.signum = signum


@dataclass
class ChaosResult:
    config: ChaosConfig
    operations: list[Operation]
    local_reads: list[Operation]
    replica_states: ReplicaStates
    faults: list[Fault]
    node_exits: list[NodeExit]
    errors: dict[str, int]
    converged_s: float | None  # from the last heal to every peer UP and no hint pending
    not_converged: str  # what was still missing at the deadline
    report: CheckReport
    local_read_problems: list[str]
    replica_read_problems: list[str]
    seconds: float
    keys: int = 0

    @property
    def problems(self) -> list[str]:
        problems = list(self.report.problems)
        if self.report.verdict == "unknown":
            problems.append("the linearizability search ran out of budget on some keys (undecided)")
        problems += self.local_read_problems
        problems += self.replica_read_problems
        problems += [exit.describe() for exit in self.node_exits]
        if self.converged_s is None:
            problems.append(f"the cluster did not converge within {self.config.converge_timeout:g} s of the last heal: {self.not_converged}")
        return problems

    @property
    def ok(self) -> bool:
        return not self.problems


def run_chaos(config: ChaosConfig, *, log: Callable[[str], None] = lambda line: None) -> ChaosResult:
    """Run, clean up, check. Raises FirewallUnavailable or RuntimeError when the run cannot be made,
    and ChaosInterrupted after SIGTERM or SIGINT."""
    return asyncio.run(_interruptible(config, log))


async def _interruptible(config: ChaosConfig, log: Callable[[str], None]) -> ChaosResult:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await _run(config, log)
    except asyncio.CancelledError:
        if received:
            raise ChaosInterrupted(received[0]) from None
        raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _run(config: ChaosConfig, log: Callable[[str], None]) -> ChaosResult:
    clock = monotonic_clock()
    if config.out is not None:
        workdir, temporary = fresh_nodes_directory(Path(config.out)), False
    else:
        workdir, temporary = Path(tempfile.mkdtemp(prefix="kvwire-chaos-")), True
    firewall = Firewall() if "partition" in config.faults else None
    cluster: ChaosCluster | None = None
    nemesis: Nemesis | None = None
    thread: threading.Thread | None = None
    load: asyncio.Future | None = None

    def clean_up() -> None:
        # Synchronous on purpose: a second signal cannot interrupt it half-way.
        if nemesis is not None:
            nemesis.abort.set()
        if thread is not None:
            thread.join(NEMESIS_JOIN_TIMEOUT)
        if nemesis is not None:
            nemesis.heal()
        if cluster is not None:
            cluster.stop()
        if firewall is not None:
            firewall.remove()
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(clean_up)
    try:
        if firewall is not None:
            firewall.install()  # removes stale chains itself
        else:
            await asyncio.to_thread(remove_stale_chains_if_root)
        cluster = ChaosCluster(workdir, own_groups=firewall is not None)
        await asyncio.to_thread(cluster.start)
        pids = cluster.pids()
        log("nodes " + ", ".join(
            f"{node}={host}:{port} (pid {pids.get(node)}" + (f", gid {cluster.groups[node]})" if cluster.groups else ")")
            for node, (host, port) in cluster.addresses.items()
        ) + (f"; iptables chain {firewall.chain}" if firewall else ""))

        history = History(clock)
        keys = KeySpace(config.keys, config.ops_per_key)
        clients = make_clients(config.clients, cluster.addresses, history, seed=config.seed, op_timeout=config.op_timeout,
                               library=config.library)
        nemesis = Nemesis(
            cluster, firewall, config.faults, rng=random.Random(f"{config.seed}/nemesis"), clock=clock,
            hold=config.fault_hold, gap=config.fault_gap, recovery_timeout=config.recovery_timeout, log=log,
        )
        until = clock() + config.duration
        thread = threading.Thread(target=nemesis.run, args=(until,), name="kvwire-chaos-nemesis", daemon=True)
        thread.start()
        budget = Budget(config.max_ops)
        load = asyncio.gather(*(client.run(keys, budget, until=until, interval=config.clients / config.rate) for client in clients))
        await asyncio.to_thread(thread.join)
        if nemesis.error is not None:
            raise RuntimeError(f"the nemesis failed: {nemesis.error}") from nemesis.error
        # Convergence is timed from the last heal, while the clients finish
        # their last operations (one may wait out its timeout on a node that was paused).
        last_heal = nemesis.last_heal
        if last_heal is None:
            await load
            last_heal = clock()
        converged_s, not_converged = await _wait_converged(cluster, config.converge_timeout, nemesis.abort, since=last_heal, clock=clock)
        await load
        log(f"{clock():7.2f}s  clients done: {len(history.operations) + len(history.local_reads)} operations")
        if converged_s is not None:
            # The clients' last writes may have left hints; the replicas are read once they are delivered.
            _, not_converged = await _wait_converged(cluster, config.converge_timeout, nemesis.abort, since=clock(), clock=clock)
            if not_converged:
                converged_s = None
        log(f"{clock():7.2f}s  " + (f"converged {converged_s:.2f} s after the last heal" if converged_s is not None else f"not converged: {not_converged}"))

        first_client = config.clients
        replica_states, replica_read_problems = await settled_replica_states(
            lambda: read_replica_states(cluster.addresses, keys.used, History(clock), first_client=first_client,
                                        op_timeout=config.op_timeout),
            deadline=clock() + config.converge_timeout, clock=clock,
        )
        await final_quorum_reads(
            cluster.addresses, keys.used, history, first_client=first_client + len(cluster.addresses), op_timeout=config.op_timeout
        )
        seconds = clock()
    finally:
        if load is not None and not load.done():
            load.cancel()  # after a signal or an error: the clients' last operations are recorded as unknown
            load.add_done_callback(_retrieve)
        clean_up()
        atexit.unregister(clean_up)

    report = check_history(history.operations, replica_states=replica_states, max_steps=config.max_steps)
    return ChaosResult(
        config=config,
        operations=history.operations,
        local_reads=history.local_reads,
        replica_states=replica_states,
        faults=nemesis.faults,
        node_exits=nemesis.node_exits,
        errors=history.errors,
        converged_s=converged_s,
        not_converged=not_converged,
        report=report,
        local_read_problems=check_local_reads(history.operations, history.local_reads),
        replica_read_problems=replica_read_problems,
        seconds=seconds,
        keys=len(keys.used),
    )


async def _wait_converged(
    cluster: ChaosCluster, timeout: float, abort: threading.Event, *, since: float, clock: Callable[[], float]
) -> tuple[float | None, str]:
    """(seconds from ``since`` until every peer was UP everywhere with no hint pending, "") or (None, what was missing)."""
    waited = await asyncio.to_thread(cluster.wait_until, lambda: cluster.converged()[0], timeout=timeout, abort=abort)
    if waited is None:
        return None, cluster.converged()[1]
    return clock() - since, ""


def _retrieve(future: asyncio.Future) -> None:
    """Mark the outcome of a future nobody awaits as seen (asyncio logs it otherwise)."""
    if not future.cancelled():
        future.exception()
