"""Links to the other members: persistent connections, heartbeats, failure detection, hints.

Each peer gets one ``PeerLink``: a persistent connection (the client's own
connection class, saying HELLO as a peer), reopened after failures with capped
exponential backoff plus jitter. ``Peers`` pings every link each heartbeat
interval; any frame read from a peer counts as hearing from it, and the
``FailureDetector`` turns silence into DOWN. When a peer comes UP, the writes
it missed (hints, kept durably by storage) are replayed to it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Callable

from ..client.connection import ClientConnection
from ..protocol.errors import ForbiddenError, KvwireConnectionError, KvwireError
from ..protocol.messages import NO_VERSION, Ping, Replicate, Role, Version
from .config import Member, ServerConfig
from .failure_detector import FailureDetector, PeerState, Transition
from .storage import Storage

log = logging.getLogger("kvwire.peers")

# Reconnect delays: the first retry is quick (a restarting peer is back within
# a second), later ones back off to a second so a dead peer costs nothing.
RECONNECT_BASE_DELAY = 0.05
RECONNECT_MAX_DELAY = 1.0
# Keys replayed to a peer per round trip when delivering hints.
HINT_BATCH = 256


def _ignore_outcome(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class PeerLink:
    """The connection to one peer, kept open for the node's lifetime."""

    def __init__(self, member: Member, config: ServerConfig, on_receive: Callable[[], None]) -> None:
        self.member = member
        self._config = config
        self._on_receive = on_receive
        self.connection: ClientConnection | None = None
        self._task: asyncio.Task | None = None
        self._ping: asyncio.Future | None = None

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.is_open

    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain(), name=f"kvwire-peer-{self.member.node_id}")

    async def _maintain(self) -> None:
        delay = RECONNECT_BASE_DELAY
        while True:
            try:
                connection = await ClientConnection.open(
                    self.member.host,
                    self.member.port,
                    connect_timeout=self._config.failure_timeout,
                    limits=self._config.limits,
                    cluster=self._config.cluster_id,
                    role=Role.PEER,
                    node=self._config.node_id,
                )
            except ForbiddenError as exc:
                log.error("peer %s refused us: %s", self.member.node_id, exc)
                await asyncio.sleep(RECONNECT_MAX_DELAY)
                continue
            except KvwireConnectionError as exc:
                log.debug("peer %s unreachable: %s", self.member.node_id, exc)
                # Full jitter (AWS architecture blog): peers restarting together
                # don't reconnect in lockstep.
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            if connection.node_id != self.member.node_id:
                log.error("%s answers as node %r, not %r; check --cluster", self.member.address, connection.node_id, self.member.node_id)
                connection.close()
                await asyncio.sleep(RECONNECT_MAX_DELAY)
                continue
            delay = RECONNECT_BASE_DELAY
            connection.on_receive = self._on_receive
            self.connection = connection
            self._on_receive()  # the HELLO reply was a frame from it
            await connection.wait_closed()
            self.connection = None

    def submit(self, message_type: type, *fields: Any) -> asyncio.Future:
        """Send a request now; the future of its reply. Raises KvwireConnectionError if not connected."""
        connection = self.connection
        if connection is None:
            raise KvwireConnectionError(f"no connection to peer {self.member.node_id}")
        return connection.submit(message_type, *fields)

    def heartbeat(self) -> None:
        """PING, unless the last one is still unanswered (a hung peer must not pile them up)."""
        if not self.connected or (self._ping is not None and not self._ping.done()):
            return
        try:
            self._ping = self.submit(Ping)
        except KvwireError:
            return
        self._ping.add_done_callback(_ignore_outcome)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.connection is not None:
            self.connection.close()


class Peers:
    """Every peer link, the failure detector fed by them, and hint delivery."""

    def __init__(self, config: ServerConfig, storage: Storage, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.storage = storage
        self._clock = clock
        self.links: dict[str, PeerLink] = {
            member.node_id: PeerLink(member, config, lambda peer=member.node_id: self._heard(peer))
            for member in config.peers
        }
        self.detector = FailureDetector(self.links, config.failure_timeout, clock())
        self._ticker: asyncio.Task | None = None
        self._replays: dict[str, asyncio.Task] = {}

    def start(self) -> None:
        for link in self.links.values():
            link.start()
        if self.links:
            self._ticker = asyncio.create_task(self._tick_forever(), name="kvwire-heartbeat")

    def usable(self, peer: str) -> bool:
        """UP by the detector and with an open connection: worth sending to."""
        return self.detector.is_up(peer) and self.links[peer].connected

    def usable_peers(self) -> list[str]:
        return [peer for peer in self.links if self.usable(peer)]

    # --- failure detection ---------------------------------------------------------------

    async def _tick_forever(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            for link in self.links.values():
                link.heartbeat()
            for transition in self.detector.check(self._clock()):
                self._log(transition)
            await asyncio.sleep(interval)

    def _heard(self, peer: str) -> None:
        transition = self.detector.mark_heard(peer, self._clock())
        if transition is not None:
            self._log(transition)
            self.deliver_hints(peer)

    def _log(self, transition: Transition) -> None:
        if transition.state is PeerState.DOWN:
            log.warning("%s", transition.describe())
        else:
            log.info("%s", transition.describe())

    # --- hints -----------------------------------------------------------------------------

    def hint(self, peer: str, key: str, version: Version) -> None:
        """``peer`` missed ``key`` at ``version``: keep it durably and deliver it when possible."""
        self.storage.add_hint(peer, key, version)
        if self.usable(peer):
            self.deliver_hints(peer)

    def deliver_hints(self, peer: str) -> None:
        """Start replaying ``peer``'s hints unless a replay is already running."""
        running = self._replays.get(peer)
        if self.storage.hint_count(peer) and (running is None or running.done()):
            self._replays[peer] = asyncio.create_task(self._replay(peer), name=f"kvwire-hints-{peer}")

    async def _replay(self, peer: str) -> None:
        """Send ``peer`` the current row of every hinted key, retrying with backoff.

        A live peer that keeps failing is tried ``retry_attempts`` times,
        the delay doubling from ``retry_delay``; its hints then wait for the
        next time it comes UP, or for the next write it misses.
        """
        failures = 0
        delivered_total = 0
        while self.usable(peer) and self.storage.hint_count(peer):
            keys = list(self.storage.hints[peer])[:HINT_BATCH]
            try:
                delivered = await self._replay_batch(peer, keys)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # KvwireError, timeouts: the peer didn't take them
                failures += 1
                if failures > self.config.retry_attempts:
                    log.warning("peer %s: giving up on %d hints for now after %d attempts: %s",
                                peer, self.storage.hint_count(peer), failures, exc)
                    return
                await asyncio.sleep(self.config.retry_delay * 2 ** (failures - 1))
                continue
            failures = 0
            delivered_total += len(delivered)
            self.storage.drop_hints(peer, delivered)
        if delivered_total:
            log.info("peer %s: delivered %d hinted writes; %d left", peer, delivered_total, self.storage.hint_count(peer))

    async def _replay_batch(self, peer: str, keys: list[str]) -> dict[str, Version]:
        rows = {key: (version, deleted, value) for key, version, deleted, value in await self.storage.read_rows(keys)}
        link = self.links[peer]
        futures = {key: link.submit(Replicate, key, version, value, deleted) for key, (version, deleted, value) in rows.items()}
        async with asyncio.timeout(self.config.write_timeout * 5):
            await asyncio.gather(*futures.values())
        delivered = {key: rows[key][0] for key in futures}
        # A hinted key with no committed row here has nothing to deliver: the
        # local write it came from never committed, so it was never acknowledged.
        for key in keys:
            if key not in rows:
                delivered[key] = self.storage.hints[peer].get(key, NO_VERSION)
        return delivered

    # --- health ----------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [
            {
                "node_id": peer,
                "url": link.member.address,
                "healthy": self.detector.is_up(peer),
                "state": self.detector.state(peer).value,
                "connected": link.connected,
                "last_heard_ms": round(self.detector.silent_for(peer, now) * 1000, 1),
                "pending_hints": self.storage.hint_count(peer),
                "down_transitions": self.detector.transitions.get((peer, PeerState.DOWN), 0),
                "up_transitions": self.detector.transitions.get((peer, PeerState.UP), 0),
            }
            for peer, link in self.links.items()
        ]

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for task in self._replays.values():
            task.cancel()
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)
