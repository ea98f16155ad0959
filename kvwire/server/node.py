"""The asyncio shell around the node core: it performs the core's effects, nothing more.

``Node.handle`` gives a request to the core (``kvwire.server.core``) and
answers with the reply when the core produced it at once (a PING, a GET of a
cached or missing key) and otherwise with a future of it. Answering
synchronously where possible is what lets one ``data_received`` call turn a
burst of pipelined GETs into a single write. Every effect the core asks for is
performed here: peer messages go out on the peer links, rows to group commit,
loads to SQLite's reader, and each completion goes back into the core.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from msgspec import Raw

from ..protocol.errors import (BadRequestError, ForbiddenError, KvwireError, NoQuorumError, TooLargeError,
                               UnauthenticatedError, UnavailableError)
from ..protocol.peer_auth import ACCEPTOR, DIALER, new_nonce, peer_proof, proof_matches
from ..protocol.messages import (
    PROTOCOL_VERSION,
    Delete,
    Get,
    Health,
    HealthReply,
    Hello,
    HelloReply,
    Ping,
    Pong,
    Put,
    Replicate,
    Reply,
    Request,
    Role,
)
from ..protocol.values import pack_value
from ..tls import certificate_names
from .access import ANONYMOUS, BEYOND_THE_LIMIT, EVERYONE, PEER, TOO_MANY_CONNECTIONS, Grant
from ..buffer_budget import ClientBuffers
from .clock import node_clock
from .config import ServerConfig
from .core import (
    CloseLink, DropConnections, DropHint, DropPeerHints, Joined, Load, Mend, NodeCore, Notice, PeerStateChanged, Persist, Purge, Respond, SaveFloor,
    SaveRequests, Send, StoreHint, Strand,
)
from .core.keydir import MAX_ACCEPTED_COUNTER
from .failure_detector import PeerState, Transition
from ..log_limit import LogLimit
from .core.mending import DamagedValueError
from .peers import PeerLinks
from .scrub import Scrubber
from .stall import CHECK_INTERVAL as STALL_CHECK_INTERVAL
from .storage import Storage
from .tally import RequestMetrics

log = logging.getLogger("kvwire.node")
# A node without a quorum this long after it started says which peers it has not reached.
NO_QUORUM_AT_START_WARNING_S = 5.0
# The core's notices that change whether this node has a quorum (a peer joining or joined,
# or its disk refusing writes or taking them again).
QUORUM_NOTICES = frozenset({"peer_joining", "peer_joined", "peer_refuses_writes", "peer_takes_writes"})

# Keys read from SQLite in one hop to its thread: a batch of 256 point reads takes
# about a millisecond, short enough not to hold up the requests of the next one.
MAX_READ_BATCH = 256


def _read_failure(key: str, error: Exception) -> Exception:
    """What a request waiting on ``key``'s read is answered when the read failed. A
    database SQLite cannot read (damaged, a file truncated under it, an I/O error)
    is this node's trouble, not the key's: UNAVAILABLE, so that clients read another
    node's copy, as for a damaged value. INTERNAL, as it was, is retried nowhere (a
    probe truncated a running node's file: every read through it failed, the two
    other nodes holding every value)."""
    if isinstance(error, sqlite3.DatabaseError):
        return UnavailableError(f"this node could not read {key!r} from its disk ({error}); read another node's copy")
    return error


@dataclass(slots=True, weakref_slot=True, eq=False)
class Session:
    """What a node knows about one connection: where it comes from, what it may
    do, and, between a peer's two HELLOs, ``(dialer, dialer nonce, our nonce)``."""

    peer: str
    grant: Grant
    handshake: tuple[str, bytes, bytes] | None = None
    said_hello: bool = False
    # The member a peer connection speaks for (proven, unless --insecure), and the
    # process it said it is (HELLO's instance).
    member: str | None = None
    instance: bytes | None = None
    # Closes the connection at once, unread (NodeProtocol.drop); set by the connection.
    drop: Callable[[], None] | None = None
    # Called after every HELLO that got as far as granting (or refusing) rights: the
    # connection's frame limit follows ``grant`` (NodeProtocol._rights_changed).
    rights_changed: Callable[[], None] | None = None
    # The certificate the other side presented in its TLS handshake (getpeercert()),
    # where it was asked for one (--tls-ca); set by the connection.
    certificate: dict | None = None
    # Opened past --max-connections, in the room kept for the peers' links: kept only
    # once its HELLOs prove the peer role (grant BEYOND_THE_LIMIT until then).
    beyond_limit: bool = False


class PendingReply:
    """A request handed to the core that it could not answer at once: ``handle``
    returns it, and the connection sets ``on_reply``, which the core's answer
    (a reply, or the exception to answer with) is handed to, once, as soon as
    it is given. A callback, not a future: no loop turn between the two."""

    __slots__ = ("reply", "on_reply")

    def __init__(self) -> None:
        self.reply: Any = None  # the core's answer, once given
        self.on_reply: Callable[[Any], None] | None = None

    def detached_error(self) -> BaseException:
        """The error the core answered with, for ``handle`` to raise: taken from this
        answer, as the frame that raises it holds the answer (and the error's traceback
        that frame: a cycle, which only the garbage collector frees), and with no
        traceback, as the core may answer with one error many times (every peer's
        REPLICATE during a disk stall) and each raise adds to the traceback it has: a
        stalled node kept every frame that had raised it, each REPLICATE and its value
        with them, 1.7 MB a second under a probe's load."""
        error, self.reply = self.reply, None
        return error.with_traceback(None)


# A backup's time ahead of this machine's clock by more than this (clocks kept by NTP
# agree to well under it) means one of the two clocks is wrong.
BACKUP_CLOCK_SLACK_S = 60.0


class Node:
    def __init__(self, config: ServerConfig, storage: Storage, *, clock: Callable[[], float] = node_clock) -> None:
        self.config = config
        self.storage = storage
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        self._started = clock()
        now = clock()
        requests = [(request, key, version, now - age, tentative)
                    for request, key, version, age, tentative in storage.loaded_requests]
        self.core = NodeCore(config, now, committed=storage.loaded_entries, hints=storage.loaded_hints, requests=requests,
                             stranded=storage.loaded_stranded, floor=storage.loaded_floor, joining=storage.joining,
                             unclean=storage.unclean, incarnation=storage.incarnation)
        storage.loaded_entries = {}
        storage.loaded_hints = {}
        building = time.perf_counter()
        if indexed := self.core.build_repair_index():
            log.info("indexed %d keys for anti-entropy in %.2f s", indexed, time.perf_counter() - building,
                     extra={"event": "repair_index_built", "keys": indexed})
        # This process, to its peers: two processes running as one member (a forgotten
        # old copy, a clone of its directory) mint the same tags for different writes.
        self.instance = new_nonce()
        # The proven peer connections dialled in, to drop those of another process than
        # the one this node's own link reaches at the member's address (peer_linked).
        self._peer_sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self.peers = PeerLinks(config, self)
        self._timer: asyncio.TimerHandle | None = None
        self._to_load: deque[str] = deque()  # keys the core asked to read (Load), not yet read
        self._loader: asyncio.Task | None = None
        self._timer_at: float | None = None
        self.connections = 0
        self.client_buffers = ClientBuffers(config.max_buffered_bytes)
        # Closes every connection of this node's listener unread, and says how many
        # (DropConnections); the server sets it, which owns them.
        self.drop_connections: Callable[[], int] = lambda: 0
        # Called once its database file or write-ahead log is found deleted or replaced
        # (Storage.check_file); the server then stops the node, to be started again.
        self.files_lost: Callable[[], None] = lambda: None
        self.metrics = RequestMetrics()
        # For logging transitions once: peers with hints pending, and whether this node had a
        # majority. Peers start DOWN, so a cluster node starts without one (and says when it
        # gets it); a lone node is its own majority.
        self._hinting: set[str] = {peer for peer in self.core.peer_ids if self.core.hints.count(peer)}
        self._has_quorum = config.quorum == 1
        self._snapshot_timer: asyncio.TimerHandle | None = None
        self.scrubber: Scrubber | None = None
        self._quiet_start_timer: asyncio.TimerHandle | None = None
        self._joining = self.core.joining
        if self._joining:
            why = "" if storage.joining or not storage.unclean else (
                "its last run did not stop cleanly, and may have sent peers tags it never committed; ")
            log.info("joining the cluster: %suntil anti-entropy has caught this node up from every peer it takes no "
                     "part in majorities, and what it coordinates asks every node", why, extra={"event": "joining"})
            if storage.backup_taken_at is not None:
                self._warn_if_backup_too_old(time.time() - storage.backup_taken_at)
        # Lines a client can cause by the thousand are logged a few at a time (log_limit.py).
        self.limited_log = LogLimit(log, clock=clock)
        # What a connection may do before (and without) an accepted HELLO.
        self._default_grant = ANONYMOUS if config.auth is not None else EVERYONE
        # Requests ``handle`` left pending and not yet answered. At shutdown,
        # those pending when the wait began, and the future set once they are
        # all answered: requests still arriving on open connections meanwhile
        # must not keep the wait going.
        self._unanswered: set[PendingReply] = set()
        self._awaited: set[PendingReply] = set()
        self._all_answered: asyncio.Future | None = None

    def _warn_if_backup_too_old(self, age: float) -> None:
        """A backup older than the tombstone grace may hold live copies of keys deleted
        since, whose tombstones every replica has since collected: with nothing left to
        refuse them, anti-entropy spreads them again (docs/operations.md, Backups)."""
        grace = self.config.tombstone_grace
        if age < -BACKUP_CLOCK_SLACK_S:
            # Taken "in the future": one of the two machines' clocks is wrong, so the age,
            # and whether it passes the grace, cannot be told. Said, not passed over.
            log.warning("this data directory was restored from a backup whose time is %.0f s after this machine's "
                        "clock: one of the two clocks is wrong, so whether it is older than --tombstone-grace "
                        "(%g s) cannot be told; if it may be, a key deleted in the cluster since then whose "
                        "tombstone has been collected comes back with this node's copy: start this node on an "
                        "empty data directory with --join instead", -age, grace,
                        extra={"event": "old_backup", "age_s": round(age)})
        elif age > grace:
            log.warning("this data directory was restored from a backup taken %.0f s ago, longer than "
                        "--tombstone-grace (%g s): a key deleted in the cluster since then, whose tombstone has "
                        "been collected, comes back with this node's copy; to rejoin one node without that risk, "
                        "start it on an empty data directory with --join (not when every node is restored from "
                        "backups taken together: there is then nothing else to copy from)", age, grace,
                        extra={"event": "old_backup", "age_s": round(age)})

    def start(self) -> None:
        self.peers.start()
        self._perform()
        self._take_snapshot()
        if self.config.scrub_rate:
            self.scrubber = Scrubber(self.storage, self.config.scrub_rate, self._scrub_found)
        if not self._has_quorum:
            self._quiet_start_timer = self._loop.call_later(NO_QUORUM_AT_START_WARNING_S, self._warn_if_no_quorum_yet)

    def _warn_if_no_quorum_yet(self) -> None:
        """Peers start DOWN and only changes are logged: a node whose peers never came
        (a mistyped --cluster address, peers not started) said nothing after its
        listening line (an observability probe's finding)."""
        if self._has_quorum:
            return
        down = [member for member in self.config.peers if self.core.detector.state(member.node_id) is not PeerState.UP]
        log.warning("no quorum %g s after starting: %d of %d nodes UP, %d needed; not reached: %s. Writes and quorum "
                    "reads answer NO_QUORUM until they are: check that they run and that --cluster gives their "
                    "addresses", NO_QUORUM_AT_START_WARNING_S, self._voters_up(own_disk=False), self.config.cluster_size,
                    self.config.quorum, ", ".join(f"{member.node_id}={member.address}" for member in down) or "none",
                    extra={"event": "no_quorum_at_start"})

    def stop(self) -> None:
        """Stop the node's own timers; the links and storage are closed by their owners."""
        if self.scrubber is not None:
            self.scrubber.stop()
        for timer in (self._timer, self._snapshot_timer, self._quiet_start_timer):
            if timer is not None:
                timer.cancel()

    def now(self) -> float:
        return self._clock()

    def _take_snapshot(self) -> None:
        self.metrics.take_snapshot(self._clock())
        self.limited_log.flush()
        if self.storage.file_lost is None:
            self.storage.check_file()
            if self.storage.file_lost is not None:
                self.files_lost()
        self._snapshot_timer = self._loop.call_later(1.0, self._take_snapshot)

    def _scrub_found(self, damaged: DamagedValueError) -> None:
        self.core.found_damaged(damaged.key, damaged.version, self._clock())
        self._perform()

    def watch_disk(self, late: float) -> None:
        """Storage.check_stall, at every check of the server's StallWatch (kvwire.server.stall),
        ten a second. A check that ran later than its interval says the whole process was
        held (SIGSTOP, a paused VM), its commit with it: that time is not held against the
        disk. (Its clock counts a suspended machine's time, which the commit's does not: a
        suspend only delays the stall's detection.)"""
        storage, core = self.storage, self.core
        storage.check_stall(self.config.disk_stall_timeout, held=late if late > STALL_CHECK_INTERVAL else 0.0)
        if storage.stalled != (core.disk_stalled is not None):
            core.disk_stalled = UnavailableError(f"this node's disk is not completing writes ({storage.write_error}); "
                                                 "not applied here", maybe_applied=False) if storage.stalled else None

    def new_session(self, peer: str) -> Session:
        """A connection's session before its HELLO: open ops only, if this node has an auth file."""
        return Session(peer, self._default_grant)

    def handle(self, request: Request, session: Session) -> Reply | PendingReply:
        """The reply, or a ``PendingReply`` whose ``on_reply`` the caller sets at
        once. Raises KvwireError for a refusal."""
        kind = type(request)
        grant = session.grant
        if kind not in grant.ops or grant.prefix:
            grant.check(request)
        if kind is Ping:
            # Only a peer hears that this node is joining: a client's PONG stays the bare
            # one, which HAProxy's minority check matches byte for byte (haproxy/kvwire.cfg).
            if grant is not PEER:
                return Pong(request.id)
            # And whether its disk refuses writes: its peers count it out of their quorum then.
            return Pong(request.id, True if self.core.joining else None,
                        False if self.storage.write_error is not None else None)
        if kind is Hello:
            return self._hello(request, session)
        if (kind is Put or kind is Delete) and self.storage.write_error is not None:
            # Every write a node coordinates commits on its own disk too: started, this
            # one would fail (INTERNAL, maybe applied, as its peers were sent it), and
            # the client would not know to try another node. Refused, it may. (Its
            # peers' REPLICATEs still come in: a commit that succeeds clears the error.)
            raise UnavailableError(f"this node's disk refuses writes ({self.storage.write_error}); request not "
                                   f"started: {self._who_else_can_write()}", maybe_applied=False)
        if (kind is Put or kind is Delete) and self.core.peers_refusing_writes and self._voters_up() < self.config.quorum:
            # Its peers said their disks refuse writes (PONG): started, the write would wait on
            # them until its deadline and fail as maybe applied, as a probe's did with two of
            # three disks stalled, 3.2 s a call. Refused, nothing was applied anywhere.
            raise NoQuorumError(f"request not started: {self._who_else_can_write()}", maybe_applied=False)
        if kind is Health:
            return HealthReply(request.id, self.health())
        if kind is Get:
            reply = self.core.answer_from_memory(request)
            if reply is not None:
                if isinstance(reply, BaseException):
                    raise reply.with_traceback(None)  # the core may answer with one error many times
                return reply
        packed = None
        if kind is Replicate:
            self._check_tag_distance(request, session)
        if kind is Put or (kind is Replicate and not request.deleted):
            packed = self._pack_value(request.value)
            if type(request.value) is Raw:
                # The decoded Raw is a view of the whole frame; the cache would keep it all.
                request.value = Raw(packed)
        answer = PendingReply()
        self.core.request(answer, request, self._clock(), from_peer=grant is PEER, packed=packed, peer=session.member)
        self._perform()
        if answer.reply is not None:
            if isinstance(answer.reply, BaseException):
                raise answer.detached_error()
            return answer.reply
        self._unanswered.add(answer)
        return answer

    def _who_else_can_write(self) -> str:
        """Whether another node can take a write this one refuses: "another node can take it"
        was said when no node could (a lifecycle probe's two of three disks full)."""
        config, core = self.config, self.core
        if self._voters_up() >= config.quorum:
            return "another node can take it"
        # The voting peers UP whose disks take writes, this node left out whatever its disk does.
        others = core.voters_up() - (not core.joining) - core.refusing_writes_up()
        return (f"no node can now: {others} of the other {config.cluster_size - 1} nodes can commit a write (the "
                f"others are DOWN, joining, or their disks refuse writes), and a majority needs {config.quorum}")

    def _hello(self, request: Hello, session: Session) -> Reply:
        """A client's HELLO (with its token, if this node has an auth file) or one
        of a peer's two (kvwire.protocol.peer_auth). A refusal of its token or
        handshake leaves the connection with no more rights than it had before
        any HELLO; one of its ``proto`` or ``cluster`` changes nothing (6.1)."""
        if request.proto != PROTOCOL_VERSION:
            raise BadRequestError(
                f"protocol version {request.proto} is not supported; this node speaks {PROTOCOL_VERSION}"
            )
        if request.cluster is not None and request.cluster != self.config.cluster_id:
            raise ForbiddenError(
                f"node {self.config.node_id!r} belongs to cluster {self.config.cluster_id!r}, not {request.cluster!r}"
            )
        if session.beyond_limit and request.role is not Role.PEER:
            raise UnavailableError(TOO_MANY_CONNECTIONS)
        session.grant, handshake, session.handshake = self._default_grant, session.handshake, None
        session.member = None
        nonce = proof = None
        try:
            if request.role is Role.PEER:
                nonce, proof = self._peer_hello(request, session, handshake)
            elif self.config.auth is not None and request.token is not None:
                session.grant = self._client_grant(request, session)
        finally:
            if session.beyond_limit:
                if session.grant is PEER:
                    session.beyond_limit = False
                else:  # the first of a peer's two HELLOs, or a refused one
                    session.grant = BEYOND_THE_LIMIT
            if session.rights_changed is not None:
                session.rights_changed()
        session.said_hello = True
        # A peer learns at once that this node cannot vote yet, before its first heartbeat.
        joining = True if request.role is Role.PEER and self.core.joining else None
        # Only to a peer that proved itself (or, with --insecure, said it is one).
        proven = session.grant is PEER
        return HelloReply(request.id, PROTOCOL_VERSION, self.config.node_id, self.config.cluster_id,
                          self.config.limits.to_wire(), nonce, proof, joining,
                          self.instance if proven else None, self.config.member_addresses if proven else None)

    def _client_grant(self, request: Hello, session: Session) -> Grant:
        """The grant of a client HELLO's token. Without a token a HELLO is still
        accepted, as an introduction: the connection may then PING and ask HEALTH."""
        entry = self.config.auth.find(request.token)
        if entry is None:
            self.limited_log.log(logging.WARNING, "refused HELLOs (token not in the auth file)",
                              "refused a HELLO from %s: its token is not in the auth file", session.peer)
            raise UnauthenticatedError("token refused: this node's auth file does not list it")
        log.debug("%s said HELLO as token %r", session.peer, entry.name)
        return entry.grant()

    def _peer_hello(self, request: Hello, session: Session,
                    handshake: tuple[str, bytes, bytes] | None) -> tuple[bytes | None, bytes | None]:
        """A peer's first HELLO gets our nonce and proof; its second, with its proof, the peer role."""
        config = self.config
        secret = config.cluster_secret
        if not self.core.peer_ids:
            # Even with --insecure: a lone node's peer role was a way past its auth file.
            raise ForbiddenError(f"node {config.node_id!r} runs alone (its --cluster names no other member), "
                                 "so it takes no peers")
        if secret is None and not config.insecure:
            raise ForbiddenError("this node has no cluster secret, so it takes no peers")
        dialer = request.node
        if dialer is None:
            raise ForbiddenError("a HELLO as a peer must name its node (the field 'node')")
        if dialer == config.node_id:
            self.limited_log.log(logging.WARNING, "refused peer HELLOs (own id)",
                                 "refused a peer HELLO from %s naming this node's own id %r: another node runs with "
                                 "--node-id %s, or this node dialled itself (a --cluster entry of another member "
                                 "holds this node's address)", session.peer, dialer, dialer)
            raise ForbiddenError(f"{dialer!r} is the id of the node dialled: two nodes run as {dialer!r}, or a "
                                 "--cluster entry of another member holds this node's address")
        if dialer not in self.core.peer_ids:
            self.limited_log.log(logging.WARNING, "refused peer HELLOs (not a member)",
                              "refused a peer HELLO from %s: %r is not a member of this cluster", session.peer, dialer)
            raise ForbiddenError(f"{dialer!r} is not a member of cluster {config.cluster_id!r} as this node knows it")
        self._check_certificate(dialer, session)
        if secret is None:  # --insecure: a member's id is all it takes
            self._check_instance(dialer, request.instance, session)
            self._grant_peer(session, dialer, request.instance)
            return None, None
        if request.proof is None:
            if request.nonce is None:
                raise ForbiddenError(
                    f"node {config.node_id!r} needs its peers to prove the cluster secret, and this HELLO has no "
                    "nonce: does the dialling node run with --insecure, or without --cluster-secret-file?")
            our_nonce = new_nonce()
            session.handshake = (dialer, request.nonce, our_nonce)
            return our_nonce, peer_proof(secret, ACCEPTOR, config.cluster_id, dialer, config.node_id,
                                         request.nonce, our_nonce)
        if handshake is None or handshake[0] != dialer:
            raise ForbiddenError("a peer proof must follow this node's nonce: send HELLO with a nonce first")
        expected = peer_proof(secret, DIALER, config.cluster_id, dialer, config.node_id, handshake[1], handshake[2])
        if not proof_matches(expected, request.proof):
            self.limited_log.log(logging.WARNING, "refused peer HELLOs (proof does not match)",
                              "refused a peer HELLO from %s as %s: its proof does not match this node's cluster "
                              "secret", session.peer, dialer)
            raise ForbiddenError("peer proof refused: the two nodes do not hold the same cluster secret")
        self._check_instance(dialer, request.instance, session)
        self._grant_peer(session, dialer, request.instance)
        return None, None

    def _check_certificate(self, dialer: str, session: Session) -> None:
        """With --tls-ca, a peer's certificate must name its --cluster host, as this node
        checks a peer it dials: a CA-signed certificate of any other holder (a client's,
        or one naming another member) could speak for any member that dialled in, and a
        node its peers could not dial took part in majorities (a probe, 2026-12-07)."""
        tls = self.config.tls
        if tls is None or tls.ca is None:
            return
        host = next(member.host for member in self.config.peers if member.node_id == dialer)
        if certificate_names(session.certificate or {}, host):
            return
        self.limited_log.log(logging.WARNING, "refused peer HELLOs (certificate)",
                             "refused a peer HELLO from %s as %s: its TLS certificate does not name %s, %s's "
                             "--cluster host", session.peer, dialer, host, dialer,
                             extra={"event": "peer_certificate_refused", "peer": dialer})
        raise ForbiddenError(f"the TLS certificate of this connection does not name {host}, {dialer!r}'s --cluster "
                             "host: a node's certificate must name the address its peers dial it at")

    def _grant_peer(self, session: Session, member: str | None, instance: bytes | None) -> None:
        session.grant = PEER
        session.member = member
        session.instance = instance
        self._peer_sessions.add(session)
        self.peers.dial_now(member)  # it is up: our link to it need not wait out its backoff

    def _check_instance(self, dialer: str | None, instance: bytes | None, session: Session) -> None:
        """Refuse a peer that is not the process this node's own link reaches at the
        member's --cluster address: two processes ran as one member (a forgotten
        copy elsewhere, a clone of its directory), each minted the same tags for
        different writes, and the replicas kept the first and acknowledged both (a
        probe lost every second write that way, with nothing logged). A HELLO with
        no instance (kvwire before it, or a test's raw peer) is not checked."""
        reached = self.peers.reached_instance(dialer) if dialer is not None else None
        if instance is None or reached is None or instance == reached:
            return
        address = self.peers.address(dialer)
        # Or the member restarted while its old connection stayed open (its host lost
        # power, say): that link is dropped once silent for --failure-timeout, and the
        # new process's next dial is taken.
        self.limited_log.log(logging.ERROR, "refused peer HELLOs (a second process as one member)",
                             "refused a peer HELLO from %s as %s: this node's link to %s at %s reaches another "
                             "process running as %s: two processes run as node %r (stop the one not at %s), or it "
                             "restarted while its old connection stayed open (then this passes within "
                             "--failure-timeout)", session.peer, dialer, dialer, address, dialer, dialer, address,
                             extra={"peer": dialer, "event": "peer_twin_refused"})
        raise ForbiddenError(f"another process runs as node {dialer!r}: node {self.config.node_id!r} reaches it at "
                             f"{address}, its --cluster address; two processes must not run as one node (or this "
                             "one restarted, and that node has yet to find its old connection dead)")

    def _check_tag_distance(self, request: Replicate, session: Session) -> None:
        highest = self.core.keydir.highest_counter
        limit = min(highest + self.config.max_version_jump, MAX_ACCEPTED_COUNTER)
        if request.version.counter > limit:
            log.warning("refused REPLICATE of %r from %s: tag counter %d is more than %d above this node's highest (%d)",
                        request.key, session.peer, request.version.counter, self.config.max_version_jump, highest)
            raise ForbiddenError(
                f"version counter {request.version.counter} is too far ahead: this node's highest is {highest}, "
                f"and it accepts at most {limit}")

    def _pack_value(self, value: Any) -> bytes:
        packed = pack_value(value)
        limit = self.config.limits.max_value_bytes
        if len(packed) > limit:
            raise TooLargeError(f"value is {len(packed)} bytes encoded; the limit is {limit} bytes")
        return packed

    # --- events from the outside -----------------------------------------------------------

    def peer_heard(self, peer: str) -> None:
        self.core.heard(peer, self._clock())
        self._perform()

    def peer_linked(self, peer: str, *, joining: bool = False, instance: bytes | None = None) -> None:
        if instance is not None:
            # Dialled in before this link stood, so unchecked then (_check_instance).
            # Or from an earlier process of the member, whose connection stayed open (its
            # host lost power): which, this node cannot tell, so the line says both.
            # (A session whose connection has closed, drop gone, is not one to drop or report.)
            for session in [session for session in self._peer_sessions if session.drop is not None
                            and session.member == peer and session.instance not in (None, instance)]:
                self.limited_log.log(logging.WARNING, "dropped peer connections (another process as one member)",
                                     "dropped the peer connection from %s as %s: it comes from another process than "
                                     "the one this node's link reaches at %s, %s's --cluster address: an earlier "
                                     "process of %s whose connection stayed open, or a second process running as "
                                     "%s (its next dial is refused, event=peer_twin_refused)", session.peer, peer,
                                     self.peers.address(peer), peer, peer, peer,
                                     extra={"peer": peer, "event": "peer_connection_superseded"})
                self._peer_sessions.discard(session)
                session.drop()
        self.core.link_up(peer, self._clock(), joining=joining)
        self._perform()

    def peer_answered(self, peer: str, request_id: int, reply: Any) -> None:
        self.core.peer_reply(peer, request_id, reply, self._clock())
        self._perform()

    def peer_send_failed(self, peer: str, request_id: int, refusal: Exception | None = None) -> None:
        """A request not sent: lost with its link, or ``refusal``, the peer's answer to
        it had it been read (the peer said it reads nothing more: it is stopping)."""
        # Called while _perform sends: its loop picks up the effects this adds.
        if refusal is None:
            self.core.peer_failed(peer, request_id, self._clock())
        else:
            self.core.peer_reply(peer, request_id, refusal, self._clock())

    def peer_unlinked(self, peer: str) -> None:
        self.core.link_down(peer, self._clock())
        self._perform()

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self.core.tick(self._clock())
        self._perform()

    # --- performing effects ----------------------------------------------------------------

    def _perform(self) -> None:
        core = self.core
        while core.effects:
            for effect in core.take_effects():
                kind = type(effect)
                if kind is Respond:
                    self._respond(effect.token, effect.reply)
                elif kind is Send:
                    self.peers.send(effect.peer, effect.request_id, effect.message_type, effect.fields)
                elif kind is Persist:
                    future = self.storage.write(effect.key, effect.version, effect.deleted, effect.value, effect.packed,
                                                effect.request, effect.tentative)
                    future.add_done_callback(lambda done, write_id=effect.write_id: self._persisted(write_id, done))
                elif kind is Load:
                    self._to_load.append(effect.key)
                    if self._loader is None:
                        self._loader = self._loop.create_task(self._load_batches())
                elif kind is StoreHint:
                    self.storage.add_hint(effect.peer, effect.key, effect.version)
                    # A joining peer applies what it is sent, but its answer counts for no
                    # majority, so each write is hinted and delivered at once: it missed
                    # nothing, and a pair of lines per write while it joined said it did
                    # (an observability probe's finding).
                    if effect.peer not in self._hinting and effect.peer not in core.peers_joining:
                        self._hinting.add(effect.peer)
                        # A DELETE racing PUTs of its key hints the peers that refused its tombstone,
                        # each delivered at once: a pair of lines per race, so a few at a time.
                        self.limited_log.log(logging.WARNING, f"'hinting peer {effect.peer}' lines",
                                             "hinting peer %s: it missed a write; hints wait for it", effect.peer,
                                             extra={"peer": effect.peer, "event": "hinting_started"})
                elif kind is DropHint:
                    self.storage.drop_hint(effect.peer, effect.key, effect.version)
                    if effect.peer in self._hinting and core.hints.count(effect.peer) == 0:
                        self._hinting.discard(effect.peer)
                        self.limited_log.log(logging.INFO, f"'hinting peer {effect.peer} stopped' lines",
                                             "hinting peer %s stopped: every hint delivered (%d since this node "
                                             "started)", effect.peer, core.hints.delivered.get(effect.peer, 0),
                                             extra={"peer": effect.peer, "event": "hints_delivered"})
                elif kind is SaveRequests:
                    self.storage.save_requests(effect.records)
                elif kind is Strand:
                    self.storage.strand(effect.key, effect.version)
                elif kind is Joined:
                    self.storage.clear_joining()
                elif kind is Purge:
                    self.storage.purge(effect.key, effect.version)
                elif kind is Mend:
                    self.storage.mend(effect.key, effect.version, effect.value, effect.peer)
                elif kind is SaveFloor:
                    future = self.storage.save_floor(effect.floor)
                    future.add_done_callback(lambda done, floor=effect.floor: self._floor_saved(floor, done))
                elif kind is DropPeerHints:
                    self.storage.drop_peer_hints(effect.peer)
                    self._hinting.discard(effect.peer)
                    catch_up = ("" if effect.peer not in self.core.peer_ids
                                else ", and anti-entropy will bring it up to date once it is back")
                    log.warning("stopped hinting peer %s: %s; its hints are dropped%s", effect.peer, effect.reason,
                                catch_up, extra={"peer": effect.peer, "event": "hinting_abandoned"})
                elif kind is CloseLink:
                    self.peers.reconnect(effect.peer)
                elif kind is DropConnections:
                    dropped = self.drop_connections()
                    log.warning("this node could not run for %.0f s (stopped, or starved of CPU), longer than request "
                                "ids are kept: closed its %d connections without reading what they still held, "
                                "requests sent before or during that time; their clients send them again",
                                effect.stalled, dropped, extra={"event": "connections_dropped_after_stall"})
                elif kind is PeerStateChanged:
                    self._log_transition(effect.transition)
                elif kind is Notice:
                    (log.info if effect.event in ("peer_joined", "peer_takes_writes", "repair_recovered") else log.warning)(
                        "%s", effect.message, extra={"event": effect.event, **effect.fields})
                    if effect.event in QUORUM_NOTICES:
                        self._log_quorum_change()
        if core.joining and not self._joining:
            # Begun while running: this node's disk refused a write whose REPLICATEs had
            # gone out (NodeCore.lost_a_sent_tag); HEALTH said joining, the log nothing.
            self._joining = True
            log.warning("joining the cluster: this node's disk refused a write its peers were sent, so a peer may "
                        "hold a tag this node lost; until anti-entropy has caught it up from every peer it takes no "
                        "part in majorities, and what it coordinates asks every node", extra={"event": "joining"})
            self._log_quorum_change()
        elif self._joining and not core.joining:
            self._joining = False
            log.info("joined: caught up from every peer, this node now takes part in majorities",
                     extra={"event": "joined"})
            self._log_quorum_change()
        self._arm_timer(core.next_deadline())

    def _log_transition(self, transition: Transition) -> None:
        """Each peer transition once, and the quorum's when it changes with it."""
        down = transition.state is PeerState.DOWN
        (log.warning if down else log.info)(
            "%s", transition.describe(),
            extra={"peer": transition.peer, "event": "peer_down" if down else "peer_up",
                   "silent_ms": round(transition.silent_for * 1000)},
        )
        self._log_quorum_change()

    def _log_quorum_change(self) -> None:
        """Say so when this node's quorum comes or goes (a peer UP or DOWN, joining or
        joined, its disk refusing writes or taking them again). This node's own disk is
        left out: storage logs its own lines when it refuses writes and takes them again."""
        config = self.config
        up = self._voters_up(own_disk=False)
        has_quorum = up >= config.quorum
        if has_quorum != self._has_quorum:
            self._has_quorum = has_quorum
            refusing = self.core.refusing_writes_up()
            if has_quorum:
                log.info("quorum available: %d of %d nodes UP", up, config.cluster_size,
                         extra={"event": "quorum_available", "up": up})
            elif refusing and up + refusing >= config.quorum:
                # Enough of them UP to answer a quorum read; only writes fail.
                log.error("quorum lost: %d of %d nodes UP and taking writes, %d needed (%d UP with their disks "
                          "refusing writes); writes answer NO_QUORUM", up, config.cluster_size, config.quorum,
                          refusing, extra={"event": "quorum_lost", "up": up})
            else:
                log.error("quorum lost: %d of %d nodes UP, %d needed; writes and quorum reads answer NO_QUORUM",
                          up, config.cluster_size, config.quorum, extra={"event": "quorum_lost", "up": up})

    def _respond(self, answer: PendingReply, reply: Any) -> None:
        if answer.reply is not None:
            return  # answered already: the first answer stands
        answer.reply = reply
        if answer not in self._unanswered:
            return  # inside ``handle``, which returns it
        on_reply, answer.on_reply = answer.on_reply, None
        self._unanswered.discard(answer)
        awaited = self._awaited
        if answer in awaited:
            awaited.discard(answer)
            if not awaited and not self._all_answered.done():
                self._all_answered.set_result(None)
        if on_reply is None:
            return
        try:
            on_reply(reply)
        except Exception:  # noqa: BLE001
            # As the loop treats a failing callback: logged. It runs inside
            # ``_perform``, whose other effects must still be performed.
            log.exception("internal error queueing a reply")

    async def wait_answered(self, timeout: float) -> int:
        """Wait until every request ``handle`` has left pending so far is answered
        (each answer is queued on its connection by then), or ``timeout``
        seconds; how many of them are still unanswered. Requests read during
        the wait are not waited for, as a snapshot of futures would not be."""
        self._awaited = set(self._unanswered)
        if self._awaited:
            self._all_answered = self._loop.create_future()
            try:
                await asyncio.wait_for(self._all_answered, timeout)
            except TimeoutError:
                pass
        return len(self._awaited)

    def _persisted(self, write_id: int, done: asyncio.Future) -> None:
        error = None if done.cancelled() else done.exception()
        if done.cancelled():
            error = KvwireError("write cancelled: node is shutting down")
        self.core.persisted(write_id, error, self._clock())
        self._perform()

    def _floor_saved(self, floor: int, done: asyncio.Future) -> None:
        if not done.cancelled() and done.exception() is None:
            self.core.floor_saved(floor, self._clock())
            self._perform()

    async def _load_batches(self) -> None:
        """Read the keys the core asked for (``Load``), all those waiting at once, one
        batch at a time: loads that arrive during a read go in the next, as
        writes do with group commit."""
        try:
            while self._to_load:
                # Taken off the front: slicing the rest off each time was O(N²/256) for N queued.
                to_load = self._to_load
                keys = [to_load.popleft() for _ in range(min(MAX_READ_BATCH, len(to_load)))]
                try:
                    rows: dict[str, Any] = await self.storage.read_many(keys)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the reader failed: the requests waiting get an error, not "absent"
                    log.error("reading %d keys (%r first) failed: %s", len(keys), keys[0], exc)
                    rows = {key: _read_failure(key, exc) for key in keys}
                now = self._clock()
                for key in keys:
                    self.core.loaded(key, rows[key], now)
                self._perform()
        finally:
            self._loader = None

    def _arm_timer(self, deadline: float | None) -> None:
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        delay = max(0.0, deadline - self._clock())
        self._timer = self._loop.call_later(delay, self._tick)

    # --- health ------------------------------------------------------------------------------

    def quorum_state(self) -> tuple[int, bool]:
        """Members UP as this node sees them, itself counted only while its storage takes
        writes, and whether this node can take writes: they are a majority, and its own
        disk takes writes. Every write a node coordinates commits on its own disk too,
        so one whose disk refuses writes fails them all, however many peers are UP, and
        must not look able to take them (HEALTH, and load balancers' checks of it)."""
        up = self._voters_up()
        return up, up >= self.config.quorum and self.storage.write_error is None

    def _voters_up(self, *, own_disk: bool = True) -> int:
        core = self.core
        # Peers that said they are joining are left out (voters_up), and a joining
        # node never counts itself; nor does a node whose disk refuses writes count
        # itself (``own_disk``), or its peers that said so of theirs (every write there fails).
        own_refusing = own_disk and self.storage.write_error is not None and not core.joining
        return core.voters_up() - own_refusing - core.refusing_writes_up()

    def health(self) -> dict[str, Any]:
        """The HEALTH document; its ``cluster`` part has the shape the REST API documents."""
        storage, config, core = self.storage, self.config, self.core
        running = storage.commit_running_s
        peers = core.describe_peers(self._clock())
        for peer in peers:
            peer["url"] = self.peers.address(peer["node_id"])
        healthy, has_quorum = self.quorum_state()
        return {
            # degraded: a majority can vote, but not all (this node with its disk refusing writes, say).
            "status": ("healthy" if healthy == config.cluster_size
                       else "degraded" if healthy >= config.quorum else "unavailable"),
            "node_id": config.node_id,
            "cluster_id": config.cluster_id,
            "uptime_s": round(self._clock() - self._started, 3),
            "protocol_version": PROTOCOL_VERSION,
            "connections": self.connections,
            # ``keys`` counts tombstones too (kept as it was); ``live_keys`` is what a GET finds.
            "keys": len(core.keydir),
            "live_keys": len(core.keydir) - core.keydir.tombstones,
            # Started with --join on a new data directory and not yet caught up from every peer.
            "joining": core.joining,
            # Tombstones held and removed since start, and the counter every new tag is above.
            "tombstones": {"held": core.keydir.tombstones, "collected": core.tombstones.purged,
                           "tag_floor": core.tombstones.floor_target},
            "cached_values": len(core.cache),
            "cached_value_bytes": core.cache.bytes,
            "pending_writes": core.pending_writes,
            "commits": storage.commits,
            "committed_rows": storage.committed_rows,
            "sync": config.sync.value,
            # Whether the disk takes writes: false from a failed commit until one succeeds (a
            # probe commit each second finds out), and meanwhile has_quorum is false.
            "storage": {"writable": storage.write_error is None, "error": storage.write_error,
                        "failed_commits": storage.failed_commits,
                        "commit_running_ms": None if running is None else round(running * 1000)},
            "no_quorum_writes": core.stats.no_quorum_writes,
            "read_write_backs": core.stats.write_backs,
            "hedged_requests": core.stats.hedged_requests,
            "delete_conflicts": core.stats.delete_conflicts,
            "one_trip_retries": core.stats.one_trip_retries,
            "requests": self.metrics.recent(),
            "cluster": {
                "replication_enabled": config.cluster_size > 1,
                "total_nodes": config.cluster_size,
                "healthy_nodes": healthy,
                "unhealthy_nodes": config.cluster_size - healthy,
                "required_for_quorum": config.quorum,
                "has_quorum": has_quorum,
                "can_accept_writes": has_quorum,
                "automatic_failover_enabled": config.cluster_size > 1,
                "retry_attempts": config.retry_attempts,
                "heartbeat_interval_ms": round(config.heartbeat_interval * 1000),
                "failure_timeout_ms": round(config.failure_timeout * 1000),
                "nodes": peers,
            },
        }
