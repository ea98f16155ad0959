"""Faults, injected at random moments of a simulated run and always healed before the end."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .world import World

# The default faults. Their order and number fix what every seed does: a new
# kind goes in OPT_IN_FAULT_KINDS, so that pinned seeds (tests/test_sim.py) keep
# their runs.
FAULT_KINDS = ("crash", "pause", "partition", "one-way", "disk", "network")
# ``restore``: a crash whose node comes back on a backup of its disk taken
# earlier in the run (``kvwire backup``: marked joining). ``stop``: a clean stop
# (SIGTERM, ``kvwire up ctl stop``), the node back later without the catching
# up an unclean one needs when its core said it could stop cleanly. ``stall``: a
# disk that stops completing writes for a while: its commits are held until it
# ends, and its node refuses its peers' REPLICATEs meanwhile, as a real node does
# once a commit has run past --disk-stall-timeout (kvwire.server.storage).
OPT_IN_FAULT_KINDS = ("restore", "stop", "stall")
ALL_FAULT_KINDS = FAULT_KINDS + OPT_IN_FAULT_KINDS
# The share of crashes that also lose the node's disk, at most one a run (a
# restore from a backup counts as one): a second lost disk before
# anti-entropy has refilled the first could lose a write that only those two
# held, which no replication factor of 3 survives.
WIPE_SHARE = 0.2
# With ``restore``: the share of strikes that first back up the victim's disk.
BACKUP_SHARE = 0.3


class Nemesis:
    def __init__(self, world: World, kinds: tuple[str, ...]) -> None:
        unknown = [kind for kind in kinds if kind not in ALL_FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind {', '.join(unknown)}; choose from {', '.join(ALL_FAULT_KINDS)}")
        self.world = world
        self.kinds = kinds
        self.injected: dict[str, int] = {}
        self.stopped = False
        # node id -> (when it was taken, a copy of its disk: SimDisk), for ``restore``
        self.backups: dict = {}

    def start(self) -> None:
        if self.kinds:
            self._schedule_next()

    def stop(self) -> None:
        self.stopped = True

    def _schedule_next(self) -> None:
        self.world.scheduler.after(self.world.rng.uniform(0.1, 0.8), self._strike)

    def _strike(self) -> None:
        if self.stopped:
            return
        world, rng = self.world, self.world.rng
        kind = rng.choice(self.kinds)
        ids = sorted(world.nodes)
        victim = world.nodes[rng.choice(ids)]
        duration = rng.uniform(0.05, 2.5)
        if "restore" in self.kinds and rng.random() < BACKUP_SHARE:
            # What survives a crash is what a backup copies: committed rows, hints,
            # the floor and the request records.
            self.backups[victim.node_id] = (world.scheduler.now, copy.deepcopy(victim.disk))
            world.trace(f"nemesis: backup of {victim.node_id}'s disk")
        if kind == "crash" and rng.random() < 0.5:
            # Half the crashes wait for a node to hand a write to its disk and
            # strike before the commit: the window where acknowledging or
            # replicating too early would lose a write or mint a tag twice.
            world.crash_at_next_persist = lambda node: self._crash_mid_commit(node, duration)
            self._schedule_next()
            return
        world.trace(f"nemesis: {kind} {victim.node_id} for {duration:.3f}s")
        if kind == "crash" and victim.alive:
            self._count(kind)
            victim.crash()
            # (A lone node's lost disk loses everything: nothing to test there.)
            if rng.random() < WIPE_SHARE and not self._lost_a_disk() and len(ids) >= 3:
                # The disk is lost too: the node comes back empty under its id.
                world.trace(f"nemesis: {victim.node_id}'s disk is lost")
                self._count("wipe")
                from .world import SimDisk

                victim.disk = SimDisk()
                victim.disk.joining = True  # started with --join, as an operator replacing a disk would
            self._heal_after(duration, victim.start)
        elif kind == "restore" and victim.alive:
            self._count(kind)
            victim.crash()
            taken, backup = self.backups.get(victim.node_id, (None, None))
            # Only a backup younger than the tombstone grace, as docs/operations.md tells
            # operators: an older one may hold a key deleted since, whose tombstone every
            # replica has collected, and nothing is left to refuse it (README, Limits). The
            # node logs event=old_backup for that one; an older backup is a plain crash here.
            if (backup is not None and world.scheduler.now - taken < victim.config.tombstone_grace
                    and not self._lost_a_disk() and len(ids) >= 3):
                world.trace(f"nemesis: {victim.node_id} restored from its backup")
                self._count("restored")
                victim.disk = copy.deepcopy(backup)
                victim.disk.failing_until = victim.disk.slow_until = -1.0  # a new disk
                # The backup's mark (kvwire.server.backup). A restore follows a crash, an
                # unclean stop, which joins anyway: tests/test_backup.py tests the mark.
                victim.disk.joining = True
            self._heal_after(duration, victim.start)
        elif kind == "stop" and victim.alive and not victim.stopping:
            self._count(kind)

            def stopped() -> None:
                # Counted apart, to show both kinds of exit happen.
                exit_kind = "clean_stop" if victim.disk.stopped_cleanly else "unclean_stop"
                self._count(exit_kind)
                if self.stopped:  # the run's final heal came first: back at once
                    world.scheduler.after(0.0, lambda: victim.alive or victim.start())
                else:
                    self._heal_after(duration, victim.start)

            victim.stop_cleanly(stopped)
        elif kind == "stall":
            self._count(kind)
            victim.disk.stalled_until = max(victim.disk.stalled_until, world.scheduler.now + duration)
        elif kind == "pause" and victim.alive and not victim.paused:
            self._count(kind)
            victim.pause()
            self._heal_after(duration, victim.resume)
        elif kind in ("partition", "one-way") and len(ids) > 1:
            others = [node_id for node_id in ids if node_id != victim.node_id]
            if kind == "one-way":
                others = [rng.choice(others)]
                pairs = [(victim.node_id, other) for other in others]
            else:
                pairs = [(a, b) for other in others for a, b in ((victim.node_id, other), (other, victim.node_id))]
            pairs = [pair for pair in pairs if pair not in world.blocked]
            if pairs:
                self._count(kind)
            world.blocked.update(pairs)
            self._heal_after(duration, lambda: world.blocked.difference_update(pairs))
        elif kind == "disk":
            self._count(kind)
            if rng.random() < 0.5:  # commits and reads fail
                victim.disk.failing_until = world.scheduler.now + min(duration, 0.3)
            else:  # reads crawl: a Load can outlive several commits
                victim.disk.slow_until = world.scheduler.now + duration
        elif kind == "network":
            self._count(kind)
            world.faults.drop, world.faults.duplicate = 0.05, 0.05
            world.faults.max_delay = 0.02

            def calm() -> None:
                world.faults.drop = world.faults.duplicate = 0.0
                world.faults.max_delay = 0.002

            self._heal_after(duration, calm)
        self._schedule_next()

    def _count(self, kind: str) -> None:
        """Only what took effect: a crash of a node already down, or a partition with
        no peer to cut off, injected nothing."""
        self.injected[kind] = self.injected.get(kind, 0) + 1

    def _lost_a_disk(self) -> bool:
        return bool(self.injected.get("wipe") or self.injected.get("restored"))

    def _crash_mid_commit(self, node, duration: float) -> None:
        world = self.world

        def strike() -> None:
            if node.alive and not self.stopped:
                self._count("crash")
                world.trace(f"nemesis: crash {node.node_id} mid-commit for {duration:.3f}s")
                node.crash()
                self._heal_after(duration, node.start)

        world.scheduler.after(world.rng.uniform(0.0, 0.002), strike)

    def _heal_after(self, delay: float, heal) -> None:
        def done() -> None:
            # After stop() the run's final heal has undone every fault; a late
            # heal would restart a node that is already back, a crash in effect.
            if not self.stopped:
                heal()

        self.world.scheduler.after(delay, done)
