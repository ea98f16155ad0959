"""Links to the other members: one persistent connection per peer, redialled when it drops.

Each peer gets one ``PeerLink``: the client's own connection class, saying
HELLO as a peer, reopened after failures with capped exponential backoff plus
jitter. The links only carry bytes: which peer is UP, what to send and what a
reply means are the node core's business (``kvwire.server.core``). Any frame
read from a peer is reported as hearing from it; when the core finds a peer
silent for too long it asks for the link to be closed and dialled again,
because a silent TCP connection can sit in retransmission backoff for tens of
seconds after a partition heals. A peer that dials in while its link is down
is dialled back at once (``dial_now``): it is up, and the link's backoff
would leave it unused for up to a second. That includes the second's wait
after a refused certificate or handshake, which may have been fixed since;
not the wait after reaching another node than the one named, whose address
is wrong, and which cutting short would turn into a redial loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import Any, Protocol

from ..backoff import backoff_delay
from ..client.connection import ClientConnection, RefusedBeforeHello
from ..protocol.errors import KvwireConnectionError, KvwireError, UnavailableError, WrongNodeError
from ..protocol.limits import WIRE_NAMES, Limits
from ..protocol.messages import Role
from ..tls import client_context
from .config import Member, ServerConfig

log = logging.getLogger("kvwire.peers")

# Reconnect delays: the first retry is quick (a restarting peer is back within
# a second), later ones back off to a second so a dead peer costs nothing.
RECONNECT_BASE_DELAY = 0.05
RECONNECT_MAX_DELAY = 1.0
# Failed dials in a row, with the peer dialling in meanwhile, before its address here is
# called wrong: a few, so that a peer restarting (refusing, then dialling in) is not.
UNREACHABLE_WARNING_FAILURES = 5


class LinkEvents(Protocol):
    """What the links report to their node (``kvwire.server.node.Node``)."""

    # This process's random id, new at each start, said in every peer HELLO.
    instance: bytes

    def peer_heard(self, peer: str) -> None: ...

    def peer_linked(self, peer: str, *, joining: bool = False, instance: bytes | None = None) -> None: ...

    def peer_unlinked(self, peer: str) -> None: ...

    def peer_answered(self, peer: str, request_id: int, reply: Any) -> None:
        """A reply to a request sent with ``PeerLink.send``, or the exception
        for an ERROR reply or a lost link; called as soon as it is read."""

    def peer_send_failed(self, peer: str, request_id: int, refusal: Exception | None = None) -> None: ...


class PeerLink:
    """The connection to one peer, kept open for the node's lifetime."""

    def __init__(self, member: Member, config: ServerConfig, node: LinkEvents,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.member = member
        self._config = config
        self._ssl_context = ssl_context
        self._node = node
        self.connection: ClientConnection | None = None
        self._task: asyncio.Task | None = None
        self._dial_now = asyncio.Event()  # set: cut the backoff short
        self._backing_off = False
        self._closing = False  # close() called: dial no more
        self._limits_warned: Limits | None = None  # the peer's limits last warned about, to say it once
        self._members_warned: dict[str, str] | None = None  # likewise, the peer's --cluster
        # The peer dialled in (and proved itself) since this link last stood: if dialling
        # it keeps failing meanwhile, its --cluster address here is what is wrong.
        self._dialled_in = False
        self._unreachable_warned = False
        # The last dial reached the peer and the handshake failed (another secret, a refused
        # certificate, another node at the address): a client may still get through.
        self.handshake_refused = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain(), name=f"kvwire-peer-{self.member.node_id}")

    async def _maintain(self) -> None:
        peer = self.member.node_id
        failures = 0
        while not self._closing:
            # Cleared before the attempt, not after it fails: a peer that dials
            # in meanwhile still cuts the next backoff short.
            self._dial_now.clear()
            try:
                connection = await ClientConnection.open(
                    self.member.host,
                    self.member.port,
                    connect_timeout=self._config.failure_timeout,
                    limits=self._config.limits,
                    cluster=self._config.cluster_id,
                    role=Role.PEER,
                    node=self._config.node_id,
                    secret=self._config.cluster_secret,
                    expect_node=peer,
                    instance=self._node.instance,
                    ssl_context=self._ssl_context,
                    raw_values=True,  # a node forwards values as the bytes it got (protocol.values)
                )
            except KvwireConnectionError as exc:
                # Under TLS 1.3 the peer refuses our certificate after our side of the
                # handshake is done: we hear it only as a close before HELLO.
                refused = isinstance(exc, RefusedBeforeHello) and self._ssl_context is not None
                self.handshake_refused = isinstance(exc.__cause__, ssl.SSLError) or refused
                if self.handshake_refused:
                    # Reachable, but its certificate is refused (or ours): no
                    # retry fixes that, so say it every time, as for a refused HELLO.
                    log.error("peer %s: %s", peer, exc, extra={"peer": peer, "event": "peer_handshake_failed"})
                    await self._back_off(RECONNECT_MAX_DELAY)
                    continue
                log.debug("peer %s unreachable: %s", peer, exc)
                failures += 1
                self._warn_if_it_dialled_in(failures, exc)
                await self._back_off(_redial_delay(failures))
                continue
            except UnavailableError as exc:
                # Stopping (it refuses what it reads once it has begun) or at its limits:
                # a state that passes, not a handshake that failed.
                log.debug("peer %s unavailable: %s", peer, exc)
                self.handshake_refused = False
                failures += 1
                await self._back_off(_redial_delay(failures))
                continue
            except WrongNodeError as exc:
                self.handshake_refused = True
                log.error("%s", exc, extra={"peer": peer, "event": "peer_wrong_node"})
                # A plain wait, which dial_now does not cut: the node there
                # accepts our HELLO, so nodes whose --cluster swaps addresses
                # would each cut the others' waits and redial without pause.
                await asyncio.sleep(RECONNECT_MAX_DELAY)
                continue
            except KvwireError as exc:
                # The handshake failed (another cluster, another protocol
                # version, another secret, either way round): say so every
                # time, and keep trying, so the link comes back by itself
                # once the peer is fixed.
                self.handshake_refused = True
                log.error("peer %s: handshake failed: %s", peer, exc, extra={"peer": peer, "event": "peer_handshake_failed"})
                await self._back_off(RECONNECT_MAX_DELAY)
                continue
            if self._closing:  # closed while it dialled (its cancellation swallowed, see close)
                connection.abort()
                return
            failures = 0
            self._dialled_in = self._unreachable_warned = self.handshake_refused = False
            self._check_limits(connection.server_limits)
            self._check_members(connection.peer_members)
            connection.on_receive = lambda: self._node.peer_heard(peer)
            self.connection = connection
            self._node.peer_linked(peer, joining=connection.peer_joining, instance=connection.peer_instance)
            try:
                await connection.wait_closed()
            finally:
                self.connection = None
                self._node.peer_unlinked(peer)

    def _check_limits(self, theirs: Limits | None) -> None:
        """Warn, once for each set of limits the peer names, when they differ from this
        node's: a value one node takes and another refuses fails its writes' majorities
        (NO_QUORUM), and a frame past the peer's limit closes the link."""
        ours = self._config.limits
        if theirs is None or theirs == ours or theirs == self._limits_warned:
            return
        self._limits_warned = theirs
        differences = ", ".join(f"{name} {getattr(theirs, name)} there, {getattr(ours, name)} here"
                                for name in WIRE_NAMES if getattr(theirs, name) != getattr(ours, name))
        log.warning("peer %s has other limits than this node (%s): a write of a value that one of them refuses "
                    "cannot reach its majority there; give every node the same --max-key-bytes, "
                    "--max-value-bytes and --max-frame-bytes", self.member.node_id, differences,
                    extra={"peer": self.member.node_id, "event": "peer_limits_differ"})

    def _check_members(self, theirs: dict[str, str] | None) -> None:
        """Say, once for each --cluster the peer names, where it differs from this node's.
        Other members: the two may count majorities no node of both belongs to (a probe's
        3-node list beside a 5-node one), and each take writes the other never sees; an
        ERROR, not a refusal, as the documented replacement of a member runs, for a
        restart's length, with lists that differ in that member. A member at another
        address: a WARNING, as NAT or DNS can give one node two right addresses; but where
        an old copy of that member still runs at one of them, each side links to another
        process running as that member, and two processes then mint the same tags for
        different writes (a reviewer's finding)."""
        ours = self._config.member_addresses
        if theirs is None or theirs == ours or theirs == self._members_warned:
            return
        self._members_warned = theirs
        peer = self.member.node_id
        if theirs.keys() != ours.keys():
            only_there = sorted(theirs.keys() - ours.keys())
            only_here = sorted(ours.keys() - theirs.keys())
            log.error("peer %s's --cluster names other members than this node's (%s there, %s here; only there: %s; "
                      "only here: %s): nodes whose lists differ can each count a majority of their own and take "
                      "writes the others never see; give every node the same --cluster", peer,
                      ",".join(sorted(theirs)), ",".join(sorted(ours)), ",".join(only_there) or "none",
                      ",".join(only_here) or "none", extra={"peer": peer, "event": "peer_members_differ"})
        moved = sorted(node for node in theirs.keys() & ours.keys() if theirs[node] != ours[node])
        if moved:
            log.warning("peer %s's --cluster gives other addresses than this node's for %s: if two processes run as "
                        "one member, one at each address, each gets links and a majority of its own and they lose "
                        "each other's writes; unless the two addresses reach the same process (NAT, DNS), give every "
                        "node the same --cluster", peer,
                        ", ".join(f"{node} at {theirs[node]} there, {ours[node]} here" for node in moved),
                        extra={"peer": peer, "event": "peer_addresses_differ"})

    def _warn_if_it_dialled_in(self, failures: int, error: Exception) -> None:
        """A peer that dials in but cannot be dialled is UP on its side and DOWN on
        this one, and the one-line debug message was all that said why."""
        if self._dialled_in and not self._unreachable_warned and failures >= UNREACHABLE_WARNING_FAILURES:
            self._unreachable_warned = True
            log.warning("peer %s dialled in and was accepted as a peer, but this node cannot reach it at %s, its --cluster "
                        "address here (%s): it stays DOWN here until it can; check this node's --cluster",
                        self.member.node_id, self.member.address, error,
                        extra={"peer": self.member.node_id, "event": "peer_unreachable_at_address"})

    @property
    def reached_instance(self) -> bytes | None:
        """The process this link reached at the peer's --cluster address, while it stands."""
        connection = self.connection
        return connection.peer_instance if connection is not None and connection.is_open else None

    async def _back_off(self, delay: float) -> None:
        """Wait ``delay`` seconds before dialling again, or until ``dial_now``."""
        self._backing_off = True
        try:
            await asyncio.wait_for(self._dial_now.wait(), delay)
        except TimeoutError:
            pass
        finally:
            self._backing_off = False

    def dial_now(self) -> None:
        """The peer just dialled this node, so it is up: if this link is waiting
        out its backoff, dial at once. A restarted peer is then used as soon as
        it is back, not up to ``RECONNECT_MAX_DELAY`` later."""
        if self.connection is None:
            self._dialled_in = True
        if self.connection is None and not self._dial_now.is_set():
            self._dial_now.set()
            if self._backing_off:
                log.info("peer %s dialled in while this node's link to it was backing off; dialling it back now",
                         self.member.node_id, extra={"peer": self.member.node_id, "event": "peer_dial_back"})

    def send(self, request_id: int, message_type: type, fields: tuple) -> None:
        connection = self.connection
        peer = self.member.node_id
        if connection is None or not connection.is_open:
            # Not sent. A peer that said it reads nothing more on this link (it is
            # stopping) refuses, unread, whatever it reads meanwhile: this is such a
            # refusal, not a request lost with its link (a forwarded DELETE would be
            # left undecided) in the moment before the link's end reaches the core.
            self._node.peer_send_failed(peer, request_id,
                                        connection.refusal(message_type) if connection is not None else None)
            return
        try:
            connection.send(message_type, fields, lambda reply: self._node.peer_answered(peer, request_id, reply))
        except KvwireError:
            self._node.peer_send_failed(peer, request_id, connection.refusal(message_type))

    def reconnect(self) -> None:
        if self.connection is not None:
            log.info("dropping the silent link to peer %s; dialling again", self.member.node_id,
                     extra={"peer": self.member.node_id, "event": "peer_link_dropped"})
            # abort, not close: close waits for the write buffer to drain,
            # which into a partition is TCP's retransmission backoff.
            self.connection.abort()

    async def close(self) -> None:
        self._closing = True
        if self.connection is not None:
            # The node is stopping: nothing buffered is owed, and a hung peer would hold a
            # graceful close. The link's task then sees its connection end, and stops.
            self.connection.abort()
        task = self._task
        while task is not None and not task.done():
            # Cancelled again until it ends: Python 3.11's wait_for returns the result
            # of a wait that ended as the cancellation came (a peer dialling in as this
            # node stops cuts the backoff short), and the link would go on to dial.
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("peer %s: the link ended with an error as the node stopped", self.member.node_id,
                      exc_info=task.exception())


class PeerLinks:
    def __init__(self, config: ServerConfig, node: LinkEvents) -> None:
        # A node's own certificate is its client certificate towards its peers.
        tls = config.tls
        ssl_context = client_context(ca=tls.ca, cert=tls.cert, key=tls.key) if tls is not None else None
        self.links: dict[str, PeerLink] = {
            member.node_id: PeerLink(member, config, node, ssl_context) for member in config.peers
        }

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def send(self, peer: str, request_id: int, message_type: type, fields: tuple) -> None:
        self.links[peer].send(request_id, message_type, fields)

    def reconnect(self, peer: str) -> None:
        self.links[peer].reconnect()

    def dial_now(self, peer: str | None) -> None:
        link = self.links.get(peer)
        if link is not None:
            link.dial_now()

    def any_handshake_refused(self) -> bool:
        """Whether some peer was reached last time and refused this node's handshake."""
        return any(link.handshake_refused for link in self.links.values())

    def reached_instance(self, peer: str) -> bytes | None:
        link = self.links.get(peer)
        return link.reached_instance if link is not None else None

    def address(self, peer: str) -> str:
        return self.links[peer].member.address

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)


def _redial_delay(failures: int) -> float:
    """How long to wait after ``failures`` failed dials in a row: jittered, so that
    peers restarting together don't redial in lockstep."""
    return backoff_delay(failures, base=RECONNECT_BASE_DELAY, cap=RECONNECT_MAX_DELAY, jitter=random.uniform)
