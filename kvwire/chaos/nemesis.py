"""The nemesis: one fault at a time (kill -9, SIGSTOP, partition, SIGTERM), healed, and timed.

It runs in a thread of its own, because killing, restarting and polling nodes
block, and the clients' event loop must not stall while it does. Fault kinds
take turns in a shuffled order each round, so a run of a few rounds injects
every kind; partitions rotate through their variants the same way. Every
choice comes from one seeded PRNG.

After each heal it measures how long until every pair of nodes the fault
separated sees each other UP again: from the restart after a kill or a stop,
from SIGCONT after a pause, from the removal of the DROP rules after a partition.
"""

from __future__ import annotations

import itertools
import random
import subprocess
import threading
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

from .firewall import Firewall
from .nodes import ChaosCluster
from .partitions import PARTITION_KINDS, make_partition


@dataclass
class Fault:
    kind: str  # kill | pause | partition | stop
    variant: str  # the partition's kind, else ""
    target: str
    label: str
    start: float  # run clock, when injected
    healed: float | None = None
    recovered_s: float | None = None  # heal -> every separated pair UP again; None: not within the timeout

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class NodeExit:
    """A node that exited although the nemesis had not killed it, or that a clean stop
    (SIGTERM) left with a status other than 0: a crash worth reporting."""

    node: str
    status: int | None
    at: float
    log_tail: str
    on_sigterm: bool = False

    def describe(self) -> str:
        if self.on_sigterm and self.status is None:
            return f"node {self.node} did not exit within the wait after SIGTERM at {self.at:.2f} s (killed)"
        if self.on_sigterm:
            return f"node {self.node} exited with status {self.status} on SIGTERM at {self.at:.2f} s (a clean stop exits 0)"
        return f"node {self.node} exited on its own (status {self.status}) at {self.at:.2f} s"


class Nemesis:
    def __init__(
        self,
        cluster: ChaosCluster,
        firewall: Firewall | None,
        kinds: Sequence[str],
        *,
        rng: random.Random,
        clock: Callable[[], float],
        hold: tuple[float, float],
        gap: tuple[float, float],
        recovery_timeout: float,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        if "partition" in kinds and firewall is None:
            raise ValueError("partitions need a Firewall")
        self.cluster = cluster
        self.firewall = firewall
        self.kinds = list(kinds)
        self.rng = rng
        self.clock = clock
        self.hold = hold
        self.gap = gap
        self.recovery_timeout = recovery_timeout
        self.log = log
        self.faults: list[Fault] = []
        self.node_exits: list[NodeExit] = []
        self.error: BaseException | None = None
        # Set by the runner: abort stops waiting at once (SIGTERM, an error elsewhere).
        self.abort = threading.Event()
        self._active: tuple[Fault, Callable[[], None]] | None = None
        self._lock = threading.Lock()

    @property
    def last_heal(self) -> float | None:
        healed = [fault.healed for fault in self.faults if fault.healed is not None]
        return max(healed) if healed else None

    # --- the loop -------------------------------------------------------------------------

    def run(self, until: float) -> None:
        """Inject faults until ``until`` (run clock); the last one is healed by then. The thread's target."""
        try:
            choices = self._choices()
            while not self.abort.is_set() and self.kinds:
                gap = self.rng.uniform(*self.gap)
                hold = min(self.rng.uniform(*self.hold), until - self.clock() - gap)
                if hold < self.hold[0] / 2:
                    break  # too little time left for a fault worth the name
                if self.abort.wait(gap):
                    break
                self._restart_crashed()
                fault, pairs = self._inject(*next(choices))
                self.abort.wait(hold)
                self.heal()
                if self.abort.is_set():
                    break
                waited = self.cluster.wait_until(
                    lambda: self.cluster.see_each_other(pairs), timeout=self.recovery_timeout, abort=self.abort
                )
                # From the heal, so a kill's figure includes the restarted process starting up.
                fault.recovered_s = None if waited is None else self.clock() - fault.healed
                recovered = f"not within {self.recovery_timeout:g} s" if fault.recovered_s is None else f"{fault.recovered_s:.2f} s"
                self.log(f"{self.clock():7.2f}s  healed {fault.label}; peers UP again after {recovered}")
        except BaseException as exc:  # reported by the runner, after cleaning up
            self.error = exc
        finally:
            self.heal()

    def _choices(self) -> Iterator[tuple[str, str, str]]:
        """(kind, variant, target) forever: kinds in a fresh shuffled order each round."""
        variants = itertools.cycle(self.rng.sample(PARTITION_KINDS, len(PARTITION_KINDS)))
        while True:
            for kind in self.rng.sample(self.kinds, len(self.kinds)):
                yield kind, next(variants) if kind == "partition" else "", self.rng.choice(self.cluster.node_ids)

    # --- one fault ------------------------------------------------------------------------

    def _inject(self, kind: str, variant: str, target: str) -> tuple[Fault, list[tuple[str, str]]]:
        cluster = self.cluster
        others = [node for node in cluster.node_ids if node != target]
        pairs = [(target, other) for other in others]
        with self._lock:
            if kind == "kill":
                label = f"kill -9 {target}"
                cluster.kill(target)
                undo = lambda: cluster.restart(target)  # noqa: E731
            elif kind == "pause":
                label = f"SIGSTOP {target}"
                cluster.pause(target)
                undo = lambda: cluster.resume(target)  # noqa: E731
            elif kind == "stop":
                # A clean stop waits for the requests the node had started (its
                # shutdown_timeout at most), as `kvwire up ctl stop` would.
                label = f"SIGTERM {target}"
                struck = self.clock()
                self._stop(target)
                undo = lambda: cluster.restart(target)  # noqa: E731
            else:
                partition = make_partition(variant, cluster.node_ids, target)
                label = f"partition {variant} ({partition.label})"
                pairs = partition.pairs()
                self.firewall.drop(partition.rules(cluster.groups, cluster.addresses))
                undo = self.firewall.heal
            fault = Fault(kind, variant, target, label, start=struck if kind == "stop" else self.clock())
            self.faults.append(fault)
            self._active = (fault, undo)
        self.log(f"{fault.start:7.2f}s  {label}")
        return fault, pairs

    def _stop(self, target: str) -> None:
        """SIGTERM ``target`` and wait for it to exit; an exit other than 0, or none
        within the wait (then kill -9), is a finding."""
        node = self.cluster.cluster[target]
        try:
            status = self.cluster.terminate(target)
        except subprocess.TimeoutExpired:
            status = None
            node.kill()
        if status != 0:
            tail = "\n".join(node.log().splitlines()[-20:])
            self.node_exits.append(NodeExit(target, status, self.clock(), tail, on_sigterm=True))

    def heal(self) -> None:
        """End the active fault, if any; safe from any thread, and twice."""
        with self._lock:
            if self._active is None:
                return
            fault, undo = self._active
            self._active = None
            fault.healed = self.clock()
            undo()

    def _restart_crashed(self) -> None:
        """A node that exited on its own is a finding: note it, then bring it back so the run goes on."""
        for node in self.cluster.cluster:
            if not node.running:
                tail = "\n".join(node.log().splitlines()[-20:])
                self.node_exits.append(NodeExit(node.node_id, node.returncode, self.clock(), tail))
                self.log(f"{self.clock():7.2f}s  {node.node_id} exited on its own (status {node.returncode}); restarting it")
                self.cluster.restart(node.node_id)
