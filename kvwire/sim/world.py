"""A whole cluster in one process: node cores, their disks, links and a network, on virtual time.

Only the shell is simulated: each ``SimNode`` runs the production
``NodeCore`` and performs its effects against a simulated disk and network,
as ``kvwire.server.node`` does against SQLite and TCP. Every random choice
comes from the world's one seeded ``random.Random``, time is virtual, and
nothing iterates a hash-ordered set, so a seed replays exactly.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..protocol.errors import InternalServerError, UnavailableError
from ..protocol.messages import Delete, Ping, Pong
from ..server.config import Member, ServerConfig
from ..server.core.applied import MAX_AGE as REQUEST_MAX_AGE
from ..server.core import (
    CloseLink, DropConnections, DropHint, DropPeerHints, Entry, Joined, Load, Notice, Purge, SaveFloor, SaveRequests, NodeCore, PeerStateChanged, Persist,
    Respond, Send, StoreHint, Strand,
)
from ..server.core.keydir import mark_holds
from ..server.core.timers import Timers

# Peer link reconnect backoff, as kvwire.server.peers does it.
RECONNECT_BASE_DELAY = 0.05
RECONNECT_MAX_DELAY = 1.0


SIM_CLUSTER_SECRET = b"the simulated cluster's secret"
# Effects the simulated disk applies in its next batch, as group commit does.
_COMMITTED_EFFECTS = frozenset({Persist, StoreHint, DropHint, DropPeerHints, Purge, SaveFloor, SaveRequests, Joined})


@dataclass
class NetworkFaults:
    """Per-message odds, raised by the nemesis for a while and lowered again."""

    drop: float = 0.0
    duplicate: float = 0.0
    min_delay: float = 0.0002
    max_delay: float = 0.002


class Scheduler:
    """The world's clock: the core's own timer heap, run one event at a time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers = Timers()
        self.steps = 0

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._timers.schedule(max(when, self.now), action)

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def run_until(self, until: float, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop() and (event := self._timers.pop_due(until)) is not None:
            self.now = event.when
            self.steps += 1
            event.callback()
        if not stop():
            self.now = max(self.now, until)


@dataclass(slots=True)
class PeerToken:
    """A peer's request waiting for this node's answer."""

    source: str
    request_id: int
    epoch: int


# What a stalled node's core answers its peers' REPLICATEs (NodeCore.disk_stalled).
DISK_STALLED = UnavailableError("this node's disk is not completing writes (injected stall); not applied here",
                                maybe_applied=False)


class SimDisk:
    """What survives a crash: committed rows and hints."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[Any, bool, Any]] = {}  # key -> (version, deleted, value)
        self.hints: dict[str, dict[str, Any]] = {}
        self.floor = 0  # the durable tag floor (tombstone collection)
        # (request id, key) -> (version, when, tentative)
        self.requests: dict[tuple[str, str], tuple[Any, float, bool]] = {}
        self.stranded: dict[str, Any] = {}  # key -> the tag of its mark (Strand)
        self.joining = False  # a replacement disk: its node joins (ServerConfig.join)
        self.incarnation = ""  # the name its node mints tags under (kvwire/server/core/minter.py)
        self.failing_until = -1.0
        self.slow_until = -1.0
        self.stalled_until = -1.0  # commits held until then (the ``stall`` fault)
        self.commits = 0
        # A commit failed and none has succeeded since (Storage.write_error): a stop
        # now is not clean, as the real storage's close then keeps its mark.
        self.write_error = False
        # Its node's last stop was clean (``SimNode.stop_cleanly``): the real
        # storage deletes its ``running`` mark then, so the next start is not
        # taken for one after a kill.
        self.stopped_cleanly = False


@dataclass
class SimNode:
    node_id: str
    config: ServerConfig
    world: World
    mutant: str | None
    disk: SimDisk = field(default_factory=SimDisk)
    core: NodeCore | None = None
    alive: bool = False
    paused: bool = False
    incarnation: int = 0
    backlog: list[Callable[[], None]] = field(default_factory=list)
    # our link to each peer: its epoch while open, else None
    links: dict[str, int | None] = field(default_factory=dict)
    dial_delay: dict[str, float] = field(default_factory=dict)
    queued: list = field(default_factory=list)  # Persist and hint effects awaiting the next commit
    commit_scheduled: bool = False
    tick_at: float | None = None
    started_before: bool = False
    # Stopping cleanly (SIGTERM): waiting for the requests it had started.
    stopping: bool = False
    # Requests started here and not yet answered, clients' and peers':
    # id(token) -> (token, request, when it was started).
    unanswered: dict[int, tuple[Any, Any, float]] = field(default_factory=dict)
    # While stopping: looks again once a request is answered.
    _answered_while_stopping: Callable[[], None] | None = None
    # Incarnations that ended in a clean stop: their frames in flight all arrive.
    flushed_incarnations: set[int] = field(default_factory=set)

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        world = self.world
        self.incarnation += 1
        if self.incarnation > 1:
            world.trace(f"{self.node_id}: starts again (incarnation {self.incarnation}), from what its disk holds")
        self.alive, self.paused = True, False
        committed = {key: Entry(version, deleted) for key, (version, deleted, _value) in self.disk.rows.items()}
        hints = {peer: dict(keys) for peer, keys in self.disk.hints.items()}
        now = world.scheduler.now
        disk = self.disk
        disk.requests = {name: held for name, held in disk.requests.items() if now - held[1] <= REQUEST_MAX_AGE}
        requests = [(request, key, version, at, tentative)
                    for (request, key), (version, at, tentative) in disk.requests.items()]
        # Every start after the first follows a crash, an unclean stop (NodeCore),
        # unless the node stopped cleanly (the ``stop`` fault): an unclean one may
        # have lost a tag this node minted, as may a new disk. Its count of starts
        # and crashes names the incarnation, as the real node's random one does:
        # unique to this node, drawing nothing from the run's random stream.
        unclean = self.started_before and not disk.stopped_cleanly
        disk.stopped_cleanly = False  # running again: a kill from now on is unclean
        if unclean or disk.joining:
            disk.incarnation = str(self.incarnation)
        # As Storage._load: a mark whose key's row has passed it, or is gone, is dropped.
        disk.stranded = {key: version for key, version in disk.stranded.items() if mark_holds(committed.get(key), version)}
        self.core = NodeCore(self.config, world.scheduler.now, committed=committed, hints=hints, requests=requests,
                             stranded=list(disk.stranded.items()),
                             floor=self.disk.floor, joining=self.disk.joining, unclean=unclean,
                             incarnation=disk.incarnation, mutant=self.mutant)
        self.started_before = True
        self.stopping = False
        self.unanswered.clear()
        self.queued, self.commit_scheduled, self.tick_at = [], False, None
        for peer in self.config.peers:
            self.links[peer.node_id] = None
            self.dial_delay[peer.node_id] = RECONNECT_BASE_DELAY
            self._dial_later(peer.node_id, 0.0)
        self.perform()

    def crash(self, *, flushed: bool = False) -> None:
        """kill -9: whatever was not committed is gone; every link to and from it drops.
        ``flushed``: the end of a clean stop instead, which wrote every frame it had
        sent to the kernel first (they all arrive) and closes its links after them."""
        self.alive, self.paused, self.stopping = False, False, False
        self.backlog.clear()
        self.unanswered.clear()
        self._answered_while_stopping = None
        if flushed:
            self.flushed_incarnations.add(self.incarnation)
        self.incarnation += 1
        self.core = None
        for peer in list(self.links):
            self.links[peer] = None
        world = self.world
        for other in world.nodes.values():
            if other is not self and other.alive and other.links.get(self.node_id) is not None:
                # After a clean stop the peer reads the close after every frame sent before
                # it (TCP's FIN follows the data; three delays cover a duplicate's).
                delay = 3 * world.faults.max_delay if flushed else world.latency()
                world.scheduler.after(delay, lambda other=other: other.lose_link(self.node_id))

    def stop_cleanly(self, then: Callable[[], None]) -> None:
        """SIGTERM, as ``kvwire.server.app._shut_down`` runs it: the listener
        closes (a peer's dial is refused); the node waits up to
        ``shutdown_timeout`` for the requests it had started (those read
        meanwhile are started, not waited for); then it closes its connections,
        their replies written first, commits what is queued as ``Storage.close``
        does, and exits. The stop is clean if the core says it may be
        (``NodeCore.stops_cleanly``) and no commit has failed since the last
        that succeeded, that last one included (no probe commit clears a failure
        here, so a stop may count as unclean where the real node's probe would
        have cleared it). A paused node acts on the signal once resumed.
        ``then`` runs once it has exited; not if it is killed first."""
        world, incarnation = self.world, self.incarnation
        self.stopping = True
        # Taken when the process first runs after the signal (a paused one, once resumed):
        # the tokens too, not only their ids, as an id is reused once its token is gone.
        awaited: list[tuple[int, Any]] | None = None
        give_up = 0.0

        def exit_when_answered() -> None:
            nonlocal awaited, give_up
            if self.incarnation != incarnation or not self.alive or not self.stopping:
                return  # killed while stopping (the crash's own restart follows), or gone already
            if awaited is None:
                awaited = [(key, taken[0]) for key, taken in self.unanswered.items()]
                give_up = world.scheduler.now + self.config.shutdown_timeout
                world.scheduler.at(give_up, lambda: self.run(exit_when_answered))
            if any(self.unanswered.get(key, (None,))[0] is token for key, token in awaited) \
                    and world.scheduler.now < give_up:
                self._answered_while_stopping = lambda: self.run(exit_when_answered)
                return
            clean = self.core.stops_cleanly
            batch, self.queued = self.queued, []
            if batch:  # the committer's last batch; with nothing queued there is none
                self._write(batch, world.scheduler.now)
            # A refused batch may have held a tag this node sent: Storage.close then
            # keeps the mark, as it does while an earlier failure stands.
            clean = clean and not self.disk.write_error
            self.crash(flushed=True)
            self.disk.stopped_cleanly = clean
            world.trace(f"{self.node_id}: stopped {'cleanly' if clean else 'as after a kill'}")
            then()

        self.run(exit_when_answered)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        backlog, self.backlog = self.backlog, []
        for action in backlog:
            action()
        self.tick_at = None
        if self.alive:
            self.perform()

    def run(self, action: Callable[[], None]) -> None:
        """Run ``action`` in this process now, or when it is resumed; never if it died."""
        incarnation = self.incarnation

        def guarded() -> None:
            if self.alive and self.incarnation == incarnation:
                action()
                self.perform()

        if not self.alive:
            return
        if self.paused:
            self.backlog.append(guarded)
        else:
            guarded()

    # --- links -------------------------------------------------------------------------

    def _dial_later(self, peer: str, delay: float) -> None:
        incarnation = self.incarnation
        self.world.scheduler.after(delay, lambda: self._dial(peer, incarnation))

    def _dial(self, peer: str, incarnation: int) -> None:
        if not self.alive or self.incarnation != incarnation or self.links.get(peer) is not None:
            return
        if self.paused:
            self._dial_later(peer, 0.05)
            return
        world = self.world
        target = world.nodes[peer]
        if target.alive and not target.paused and not target.stopping and world.path_open(self.node_id, peer) \
                and world.path_open(peer, self.node_id):
            epoch = world.next_epoch()
            self.links[peer] = epoch
            self.dial_delay[peer] = RECONNECT_BASE_DELAY
            world.scheduler.after(2 * world.latency(), lambda: self.run(lambda: self._linked(peer, epoch)))
            return
        delay = self.dial_delay[peer]
        self.dial_delay[peer] = min(delay * 2, RECONNECT_MAX_DELAY)
        # A refused connect is quick; a dropped SYN or a hung peer's missing
        # HELLO reply costs the connect timeout.
        cost = 0.001 if not target.alive or (target.stopping and not target.paused) else self.config.failure_timeout
        self._dial_later(peer, cost + world.rng.uniform(delay / 2, delay))

    def _linked(self, peer: str, epoch: int) -> None:
        if self.links.get(peer) == epoch:
            # What its HELLO_REPLY would say: whether it is joining (down since the dial: nothing).
            target = self.world.nodes[peer].core
            self.core.link_up(peer, self.world.scheduler.now, joining=target is not None and target.joining)

    def lose_link(self, peer: str) -> None:
        """The connection to ``peer`` closed under us (reset, or we closed it)."""
        if not self.alive or self.links.get(peer) is None:
            return
        self.links[peer] = None
        self.run(lambda: self.core.link_down(peer, self.world.scheduler.now))
        self._dial_later(peer, self.world.rng.uniform(RECONNECT_BASE_DELAY / 2, RECONNECT_BASE_DELAY))

    # --- effects -------------------------------------------------------------------------

    def perform(self) -> None:
        core, world = self.core, self.world
        if core is None or not self.alive or self.paused:
            return
        now = world.scheduler.now
        while core.effects:
            for effect in core.take_effects():
                kind = type(effect)
                if kind is Send:
                    self._send(effect)
                elif kind is Respond:
                    self._respond(effect.token, effect.reply)
                elif kind in _COMMITTED_EFFECTS:
                    self.queued.append(effect)
                    self._schedule_commit()
                    if kind is Persist and world.crash_at_next_persist is not None:
                        strike, world.crash_at_next_persist = world.crash_at_next_persist, None
                        strike(self)
                elif kind is Strand:
                    # Durable at once, drawing nothing from the run's random stream: a
                    # commit of its own would move every later event of the runs that
                    # pin the mutants. (The real mark rides the next group commit; a
                    # crash in between loses it, which docs/design.md 1.2 says is not covered.)
                    self._keep_strand(effect.key, effect.version)
                elif kind is Load:
                    self._load(effect.key)
                elif kind is CloseLink:
                    self.lose_link(effect.peer)
                elif kind is PeerStateChanged:
                    world.trace(f"{self.node_id}: {effect.transition.describe()}")
                elif kind is DropConnections:
                    # Simulated clients keep no backlog on a connection: each message is
                    # delivered, or lost, on its own.
                    world.trace(f"{self.node_id}: drops its connections after a {effect.stalled:.0f} s stall")
                elif kind is Notice:
                    world.trace(f"{self.node_id}: {effect.message}")
        deadline = core.next_deadline()
        if deadline is not None and (self.tick_at is None or deadline < self.tick_at):
            self.tick_at = deadline
            incarnation = self.incarnation

            def tick() -> None:
                if self.incarnation == incarnation and self.tick_at == deadline:
                    self.tick_at = None
                    self.run(lambda: self.core.tick(world.scheduler.now))

            world.scheduler.at(max(deadline, now), tick)

    def _send(self, effect: Send) -> None:
        epoch = self.links.get(effect.peer)
        if epoch is None:
            self.core.peer_failed(effect.peer, effect.request_id, self.world.scheduler.now)
            return
        message = effect.message_type(effect.request_id, *effect.fields)
        token = PeerToken(self.node_id, effect.request_id, epoch)
        target = self.world.nodes[effect.peer]
        # A forwarded DELETE is the one request that is not idempotent. TCP
        # never duplicates a frame and kvwire never resends one, so neither
        # does this network; every other message may arrive twice.
        self.world.transmit(self.node_id, effect.peer, epoch, lambda: target.run(
            lambda: target.receive_request(token, message)), duplicable=effect.message_type is not Delete)

    def receive_request(self, token: PeerToken, message: Any) -> None:
        # Requests come in on the peer's own link, which in production does not
        # feed our failure detector either: only frames on our link to it do.
        stalled = self.world.scheduler.now < self.disk.stalled_until
        if type(message) is Ping:  # answered by the shell, as kvwire.server.node does
            self._respond(token, Pong(message.id, True if self.core.joining else None, False if stalled else None))
            return
        # The shell's flag, as kvwire.server.node sets it from its storage's.
        self.core.disk_stalled = DISK_STALLED if stalled else None
        self.unanswered[id(token)] = (token, message, self.world.scheduler.now)
        self.core.request(token, message, self.world.scheduler.now, from_peer=True, peer=token.source)

    def client_request(self, on_reply: Callable[[Any], None], request: Any) -> None:
        """A client's request, on a connection it already has."""
        self.unanswered[id(on_reply)] = (on_reply, request, self.world.scheduler.now)
        self.core.request(on_reply, request, self.world.scheduler.now)

    def _respond(self, token: Any, reply: Any) -> None:
        if self.unanswered.pop(id(token), None) is not None and self._answered_while_stopping is not None:
            look_again, self._answered_while_stopping = self._answered_while_stopping, None
            self.world.scheduler.after(0.0, look_again)
        if isinstance(token, PeerToken):
            source = self.world.nodes[token.source]
            answer = reply  # an error travels as an ERROR reply, and the peer link raises it
            self.world.transmit(self.node_id, token.source, token.epoch, lambda: source.run(
                lambda: source.receive_reply(self.node_id, token, answer)))
        else:
            token(reply)

    def receive_reply(self, peer: str, token: PeerToken, reply: Any) -> None:
        if self.links.get(peer) != token.epoch:
            return  # that connection is gone; its requests were failed when it went
        now = self.world.scheduler.now
        self.core.heard(peer, now)
        self.core.peer_reply(peer, token.request_id, reply, now)

    # --- the disk ------------------------------------------------------------------------

    def _load(self, key: str) -> None:
        """Read the row at some moment after the request (as SQLite's reader thread
        does), and deliver it some time later still; a failing disk fails reads too."""
        world, incarnation = self.world, self.incarnation

        def snapshot() -> None:
            if self.incarnation != incarnation:
                return
            if world.scheduler.now < self.disk.failing_until:
                row = OSError("injected read failure")
            else:
                row = self.disk.rows.get(key)
            slow = world.scheduler.now < self.disk.slow_until
            world.scheduler.after(world.rng.uniform(0.01, 0.05) if slow else world.rng.uniform(0.0001, 0.003),
                                  lambda: self.run(lambda: self.core.loaded(key, row, world.scheduler.now)))

        world.scheduler.after(world.rng.uniform(0.0, 0.003), snapshot)

    def _schedule_commit(self) -> None:
        if self.commit_scheduled:
            return
        self.commit_scheduled = True
        incarnation = self.incarnation
        world = self.world
        world.scheduler.after(world.rng.uniform(0.0005, 0.004), lambda: self._commit(incarnation))

    def unstalled(self) -> None:
        """Its disk's stall ended early (the run's final heal): the held commit goes now."""
        if self.alive and self.commit_scheduled:
            incarnation = self.incarnation
            self.world.scheduler.after(0.0, lambda: self._commit(incarnation))

    def _commit(self, incarnation: int) -> None:
        if self.incarnation != incarnation or not self.alive:
            return
        if self.paused:
            self.backlog.append(lambda: self._commit(incarnation))
            return
        now = self.world.scheduler.now
        if now < self.disk.stalled_until:  # held by the disk until it completes writes again
            self.world.scheduler.after(self.disk.stalled_until - now, lambda: self._commit(incarnation))
            return
        self.commit_scheduled = False
        batch, self.queued = self.queued, []
        failed = not self._write(batch, now)
        error = InternalServerError("storage write failed: injected disk failure") if failed else None
        for effect in batch:
            if type(effect) is Persist:
                self.core.persisted(effect.write_id, error, now)
            elif type(effect) is SaveFloor and not failed:
                self.core.floor_saved(effect.floor, now)
        if failed:  # hints are kept in memory and tried again, as storage does
            self.queued[:0] = [effect for effect in batch if type(effect) is not Persist]
            if self.queued:
                self._schedule_commit()
        self.perform()

    def _write(self, batch: list, now: float) -> bool:
        """One group commit of ``batch`` to the disk; False when the disk refused it."""
        failed = now < self.disk.failing_until
        disk = self.disk
        if not failed:
            disk.commits += 1
            for effect in batch:
                kind = type(effect)
                if kind is Persist:
                    held = disk.rows.get(effect.key)
                    if held is None or effect.version > held[0]:
                        disk.rows[effect.key] = (effect.version, effect.deleted, None if effect.deleted else effect.value)
                    if effect.request is not None:
                        self._keep_request(effect.request, effect.key, effect.version, effect.tentative, now)
                elif kind is StoreHint:
                    hinted = disk.hints.setdefault(effect.peer, {})
                    if effect.key not in hinted or effect.version > hinted[effect.key]:
                        hinted[effect.key] = effect.version
                elif kind is DropPeerHints:
                    disk.hints.pop(effect.peer, None)
                elif kind is Purge:
                    held = disk.rows.get(effect.key)
                    if held is not None and held[1] and held[0] == effect.version:
                        del disk.rows[effect.key]
                elif kind is SaveFloor:
                    disk.floor = max(disk.floor, effect.floor)
                elif kind is SaveRequests:
                    for request, key, version, tentative in effect.records:
                        self._keep_request(request, key, version, tentative, now)
                elif kind is Joined:
                    disk.joining = False
                else:
                    hinted = disk.hints.get(effect.peer, {})
                    if effect.key in hinted and hinted[effect.key] <= effect.version:
                        del hinted[effect.key]
        disk.write_error = failed
        return not failed

    def _keep_strand(self, key: str, version: Any) -> None:
        held = self.disk.stranded.get(key)
        if held is None or version > held:
            self.disk.stranded[key] = version

    def _keep_request(self, request: str, key: str, version: Any, tentative: bool, now: float) -> None:
        """The request log as a restart loads it (storage._newest_requests): a newer
        tag, or the same tag firm where it was tentative, replaces what is kept."""
        name = (request, key)
        held = self.disk.requests.get(name)
        if held is None or version > held[0] or (version == held[0] and held[2] and not tentative):
            self.disk.requests[name] = (version, now, tentative)


class World:
    def __init__(self, seed: int, node_count: int, *, mutant: str | None = None, cache_entries: int | None = None) -> None:
        self.rng = random.Random(seed)
        if cache_entries is None:
            # Small caches, none at all in a quarter of the runs, so that reads
            # go through Load (and its races with commits) as well as memory.
            cache_entries = self.rng.choice((0, 2, 8, 64))
        # Hint bounds small enough to be passed in some runs, so that catch-up
        # is left to anti-entropy there; repair rounds often enough to finish
        # well within a run's settle time.
        # (Their own stream, so adding a setting never reshuffles the runs.)
        settings = random.Random(f"settings-{seed}")
        hint_limit = settings.choice((2, 16, 100_000))
        hint_max_age = settings.choice((0.5, 3600.0))
        # Tombstones collected within a run in half of them: a short write
        # timeout allows a grace (4 of them) shorter than the faults.
        write_timeout, tombstone_grace = settings.choice(((1.0, 3600.0), (0.25, 1.0)))
        self.scheduler = Scheduler()
        self.faults = NetworkFaults()
        self.blocked: set[tuple[str, str]] = set()
        self._epochs = itertools.count(1)
        self.log: list[str] = []
        # Set by the nemesis: called with the next node that hands a write to its disk.
        self.crash_at_next_persist: Callable[[SimNode], None] | None = None
        ids = [f"n{i + 1}" for i in range(node_count)]
        members = tuple(Member(node_id, f"10.0.0.{i + 1}", 7379) for i, node_id in enumerate(ids))
        self.nodes: dict[str, SimNode] = {}
        for node_id in ids:
            # The secret is never used: simulated links skip HELLO, as they skip TCP.
            config = ServerConfig(node_id=node_id, members=members, data_dir=Path("sim"), cache_entries=cache_entries,
                                  cluster_secret=SIM_CLUSTER_SECRET, hint_limit=hint_limit, hint_max_age=hint_max_age,
                                  repair_interval=0.2, write_timeout=write_timeout, tombstone_grace=tombstone_grace)
            self.nodes[node_id] = SimNode(node_id, config, self, mutant)

    def trace(self, line: str) -> None:
        self.log.append(f"{self.scheduler.now:10.6f} {line}")

    def next_epoch(self) -> int:
        return next(self._epochs)

    def latency(self) -> float:
        return self.rng.uniform(self.faults.min_delay, self.faults.max_delay)

    def path_open(self, source: str, target: str) -> bool:
        return (source, target) not in self.blocked

    def transmit(self, source: str, target: str, epoch: int, deliver: Callable[[], None], *,
                 duplicable: bool = True) -> None:
        """One message: delayed (so reordered), maybe dropped or duplicated; lost if partitioned."""
        rng = self.rng
        if not self.path_open(source, target) or rng.random() < self.faults.drop:
            return
        sender = self.nodes[source]
        incarnation = sender.incarnation

        def arrive() -> None:
            # A frame still in flight when its sender was killed may have been
            # in the process's own buffers, never handed to the kernel: half
            # of them are lost.
            if sender.incarnation != incarnation and incarnation not in sender.flushed_incarnations \
                    and rng.random() < 0.5:
                return
            deliver()

        self.scheduler.after(self.latency(), arrive)
        if rng.random() < self.faults.duplicate and duplicable:
            self.scheduler.after(self.latency() * 3, arrive)
