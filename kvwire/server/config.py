"""Node configuration: one frozen dataclass, checked as a whole when built."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol.address import format_endpoint, parse_host_port
from ..protocol.ids import ID_RULE, is_valid_id
from ..protocol.codec import MAX_MEMBERS
from ..protocol.limits import DEFAULT_LIMITS, DIGESTS_FRAME_BYTES, MAX_SYNC_ENTRIES, Limits, anti_entropy_frame_bytes
from ..tls import TlsFiles
from ..protocol.peer_auth import MIN_SECRET_BYTES
from .access import AuthTable


class SyncMode(str, enum.Enum):
    """SQLite's ``PRAGMA synchronous`` for the WAL (https://sqlite.org/pragma.html#pragma_synchronous).

    Every mode survives ``kill -9`` of the node, because a commit has reached
    the operating system before it is acknowledged; only ``full`` also
    survives losing power, by fsyncing the WAL on every commit.
    """

    FULL = "full"
    NORMAL = "normal"
    OFF = "off"


# Seconds; a shorter heartbeat only burns CPU (2 peers at 10 ms are 200 PINGs a second).
MIN_HEARTBEAT_INTERVAL = 0.01
MIN_DISK_STALL_TIMEOUT = 0.1
# Bounds no setting needs to reach, which keep HEALTH's figures (milliseconds, counts)
# within msgpack's integers: a --failure-timeout of 1e21 s made every HEALTH fail to
# encode, and its connection close (a probe, 2026-12-07).
MAX_SECONDS = 1_000_000_000  # about 31 years
MAX_RETRY_ATTEMPTS = 1000


@dataclass(frozen=True, slots=True)
class Member:
    """One node of the cluster, as ``--cluster`` names it."""

    node_id: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return format_endpoint(self.host, self.port)


def parse_cluster(text: str) -> tuple[Member, ...]:
    """``n1=HOST:PORT,n2=HOST:PORT,...`` to members; errors quote the faulty part."""
    members = []
    for part in text.split(","):
        node_id, sep, address = part.strip().partition("=")
        if not sep or not node_id:
            raise ValueError(f"--cluster entry {part.strip()!r} is not NODE_ID=HOST:PORT")
        host, port = parse_host_port(address)
        members.append(Member(node_id, host, port))
    return tuple(members)


@dataclass(frozen=True)
class ServerConfig:
    node_id: str = "n1"
    host: str = "127.0.0.1"
    port: int = 7379
    data_dir: Path = Path(".kvwire/n1")
    cluster_id: str = "kvwire"
    sync: SyncMode = SyncMode.FULL
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    max_connections: int = 1024
    # Values kept in memory, at most this many and this many bytes of them (as
    # packed); every key's version tag is held regardless.
    cache_entries: int = 100_000
    cache_bytes: int = 256 * 1024 * 1024
    # A connection with this many requests waiting (on storage or on peers)
    # stops being read, and its requests already read wait too, until fewer
    # than half of that many wait: one pipelining client cannot queue unbounded work.
    max_inflight_per_connection: int = 1024
    # The same, counted in the bytes of the waiting requests' frames, and for a
    # client's GET or DELETE the largest value besides (what it may bring in):
    # at 1024 PUTs or GETs of the largest value (1 MiB) the count alone would
    # let one client make the node hold a gigabyte. One request always starts
    # when none waits.
    max_inflight_bytes_per_connection: int = 64 * 1024 * 1024
    # The bytes all client connections together may hold read but not yet
    # handled (frames still arriving, requests held back), and of replies left
    # unread; past it the one holding the most is closed (kvwire.buffer_budget). 256 frames of
    # the largest request at the default limits, a quarter of what 1,024
    # connections could otherwise make the node hold.
    max_buffered_bytes: int = 256 * 1024 * 1024
    # Rows per group-commit transaction; more waits for the next one. At about
    # 220k rows/s for executemany (docs/design.md section 4) this keeps one transaction
    # near 20 ms.
    max_batch_rows: int = 4096
    shutdown_timeout: float = 10.0
    # Every member of the cluster, this node included; empty runs the node alone.
    members: tuple[Member, ...] = ()
    # A PING to every peer this often; any frame from a peer proves it alive.
    # At least MIN_HEARTBEAT_INTERVAL: 1e-6 was accepted and pinned a core.
    heartbeat_interval: float = 0.1
    # Silence after which a peer is DOWN: five missed heartbeats, so one slow
    # reply is no false alarm, and still well under a second.
    failure_timeout: float = 0.5
    # How long a write or quorum read may wait for a majority before NO_QUORUM.
    write_timeout: float = 1.0
    # A replica that missed a write gets a durable hint at once; while it is
    # live, the hint is replayed this many times, the delay doubling from
    # retry_delay (up to the 2 s hint sweep), and then at every sweep.
    retry_attempts: int = 3
    retry_delay: float = 0.5
    # What peers prove they hold (kvwire.protocol.peer_auth). A cluster node
    # needs one unless ``insecure``, which accepts any connection calling
    # itself a peer, as kvwire before 0.2 did.
    cluster_secret: bytes | None = field(default=None, repr=False)
    insecure: bool = False
    # Client tokens and their roles (kvwire.server.access); None lets anyone
    # use every client op.
    auth: AuthTable | None = field(default=None, repr=False)
    # A connection must say who it is within hello_timeout (its first complete
    # request; with an auth file, an accepted HELLO), and a frame once begun
    # must arrive whole within frame_timeout: idle and slow-loris connections
    # would otherwise hold one of max_connections for ever.
    hello_timeout: float = 5.0
    frame_timeout: float = 10.0
    # A REPLICATE tag more than this far above the highest counter this node
    # holds is refused, even from a proven peer: one bad tag near the top of
    # the counter range would make its key unwritable for good.
    max_version_jump: int = 2**40
    # TLS on every connection, clients' and peers' (kvwire.tls): the node serves
    # with tls.cert and also presents it to the peers it dials, checking them
    # against tls.ca; with tls.ca every connection must bring a certificate it
    # signed (mutual TLS). None: plain TCP.
    tls: TlsFiles | None = None
    # Anti-entropy (docs/design.md section 1.7): a comparison with the next
    # peer in turn this often, and at most repair_rate keys a second pulled,
    # so a refill never starves the clients.
    repair_interval: float = 2.0
    repair_rate: int = 5000
    # Hints for one peer are bounded in number and in how long the peer may go
    # with hints pending (since it last had none); past either, this node drops
    # that peer's hints and leaves its catch-up to anti-entropy. Cassandra's
    # max_hint_window is 3 hours likewise.
    hint_limit: int = 100_000
    hint_max_age: float = 3 * 3600.0
    # A tombstone is removed once every replica has held no live version of
    # its key for this long (docs/design.md 1.8). It must outlast any message
    # still carrying an older version: every operation stops at its deadline,
    # so at least four write timeouts (a forwarded DELETE waits for two).
    tombstone_grace: float = 3600.0
    # A group commit running this long (a disk that stopped completing writes)
    # makes the node refuse writes until it returns, as a failed one does
    # (Storage.check_stall): its writes would wait on it until they time out.
    disk_stall_timeout: float = 2.0
    # Values checked a second by the background scrub for damage on disk, which it
    # mends from a peer's copy (kvwire.server.scrub); 0 turns it off.
    scrub_rate: int = 1000
    # This node's data directory is new but the cluster already holds data:
    # its disk was lost, or it replaces a removed member. It takes no part in
    # majorities until anti-entropy has caught it up from every peer
    # (docs/design.md 1.9). Without it a new data directory is a new cluster's.
    join: bool = False

    def __post_init__(self) -> None:
        if not is_valid_id(self.node_id):
            raise ValueError(f"node id {self.node_id!r} must be {ID_RULE}")
        if not is_valid_id(self.cluster_id):
            raise ValueError(f"cluster id {self.cluster_id!r} must be {ID_RULE}")
        if not self.host:
            raise ValueError("listen host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"listen port {self.port} is outside 0-65535")
        object.__setattr__(self, "sync", SyncMode(self.sync))
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not isinstance(self.limits, Limits):
            raise ValueError("limits must be a kvwire.protocol.Limits")
        for name in ("max_connections", "max_inflight_per_connection", "max_inflight_bytes_per_connection", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_buffered_bytes < self.limits.client_frame_bytes:
            # Below it, a client sending the largest request would be closed before it arrived.
            raise ValueError(f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least the largest "
                             f"request's frame ({self.limits.client_frame_bytes} bytes: max_key_bytes + "
                             "max_value_bytes + the frame's overhead)")
        if self.cache_entries < 0:
            raise ValueError(f"cache_entries must be 0 or more, got {self.cache_entries}")
        if self.cache_bytes < 0:
            raise ValueError(f"cache_bytes must be 0 or more, got {self.cache_bytes}")
        if not isinstance(self.scrub_rate, int) or not 0 <= self.scrub_rate <= 1_000_000:
            raise ValueError(f"scrub_rate must be an integer from 0 (off) to 1000000, got {self.scrub_rate!r}")
        for name in ("repair_rate", "hint_limit"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 1 <= self.max_version_jump <= 2**62:
            raise ValueError(f"max_version_jump must be 1 to 2**62, got {self.max_version_jump}")
        if self.auth is not None and not isinstance(self.auth, AuthTable):
            raise ValueError("auth must be a kvwire.server.access.AuthTable")
        self._check_cluster()
        self._check_secret()
        if self.tls is not None and (not isinstance(self.tls, TlsFiles) or self.tls.cert is None):
            raise ValueError("a node serving TLS needs --tls-cert and --tls-key (--tls-ca alone is for clients)")

    def _check_cluster(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        ids = [member.node_id for member in self.members]
        for node_id in ids:
            if not is_valid_id(node_id):
                raise ValueError(f"cluster member id {node_id!r} must be {ID_RULE}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"cluster member ids must be unique, got {', '.join(ids)}")
        if self.members and self.node_id not in ids:
            raise ValueError(f"--node-id {self.node_id} is not among the cluster members ({', '.join(ids)})")
        if self.max_connections <= len(ids) - 1:
            # Each peer's link to this node counts in it: at that few, clients were refused
            # for good while the peers saw the node UP (a probe, 2026-12-07).
            raise ValueError(f"max_connections ({self.max_connections}) must exceed the {len(ids) - 1} links its "
                             "peers open to it, which count in it, or no client is ever served")
        if len(ids) > MAX_MEMBERS:
            # HELLO_REPLY's member list holds at most that many: no handshake could pass.
            raise ValueError(f"--cluster names {len(ids)} members; a cluster has at most {MAX_MEMBERS}")
        needed = anti_entropy_frame_bytes(self.limits.max_key_bytes)
        if len(ids) > 1 and self.limits.max_frame_bytes < needed:
            # Found by a probe (2026-12-07): at a smaller limit every round failed, unlogged,
            # replicas never converged, and a node restarted after a kill never joined.
            raise ValueError(
                f"max_frame_bytes ({self.limits.max_frame_bytes}) must be at least {needed} in a cluster with "
                f"max_key_bytes {self.limits.max_key_bytes}: anti-entropy's messages (a DIGESTS of "
                f"{DIGESTS_FRAME_BYTES} bytes, SYNC pages and their replies of up to {MAX_SYNC_ENTRIES} keys) "
                "must fit a frame, or the replicas never converge and a restarted node never rejoins")
        for name in ("heartbeat_interval", "failure_timeout", "write_timeout", "retry_delay", "shutdown_timeout",
                     "hello_timeout", "frame_timeout", "repair_interval", "hint_max_age", "tombstone_grace",
                     "disk_stall_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= MAX_SECONDS):
                raise ValueError(f"{name} must be a positive, finite number of seconds, at most {MAX_SECONDS:,}, "
                                 f"got {value!r}")
        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval} s) must be at least {MIN_HEARTBEAT_INTERVAL} s: "
                "every peer gets a PING that often, and a shorter interval keeps a core busy pinging"
            )
        if self.failure_timeout <= 2 * self.heartbeat_interval:
            raise ValueError(
                f"failure_timeout ({self.failure_timeout} s) must exceed twice heartbeat_interval "
                f"({self.heartbeat_interval} s), or a single late heartbeat marks a live peer DOWN"
            )
        if self.disk_stall_timeout < MIN_DISK_STALL_TIMEOUT:
            # Below it the node's check of the commit's age would keep its loop busy,
            # and a healthy fsync would read as a stalled disk.
            raise ValueError(f"disk_stall_timeout ({self.disk_stall_timeout} s) must be at least "
                             f"{MIN_DISK_STALL_TIMEOUT} s")
        if self.tombstone_grace < 4 * self.write_timeout:
            raise ValueError(
                f"tombstone_grace ({self.tombstone_grace} s) must be at least four times write_timeout "
                f"({self.write_timeout} s): a tombstone must outlast every operation that could still carry an "
                "older version of its key"
            )
        if not 0 <= self.retry_attempts <= MAX_RETRY_ATTEMPTS:
            raise ValueError(f"retry_attempts must be from 0 to {MAX_RETRY_ATTEMPTS}, got {self.retry_attempts}")

    def _check_secret(self) -> None:
        secret = self.cluster_secret
        if secret is not None and (type(secret) is not bytes or len(secret) < MIN_SECRET_BYTES):
            raise ValueError(f"cluster_secret must be at least {MIN_SECRET_BYTES} bytes")
        if len(self.members) > 1 and secret is None and not self.insecure:
            raise ValueError(
                "a node with --cluster needs --cluster-secret-file FILE (or KVWIRE_CLUSTER_SECRET_FILE), the secret "
                "its peers prove they hold; make one with `kvwire secret FILE` and give every node a copy. "
                "--insecure runs without, and then anyone who can reach the port can rewrite any key"
            )
        if len(self.members) > 1 and secret is None and self.insecure and self.auth is not None:
            # --insecure grants the peer role to any HELLO naming a member, and a peer
            # may read and write every key: the tokens would guard nothing.
            raise ValueError(
                "--auth-file with --insecure protects nothing: any connection may say HELLO as a peer, naming a "
                "member, and then read and write every key; give every node --cluster-secret-file FILE instead "
                "(`kvwire secret FILE` makes one)"
            )

    @property
    def peers(self) -> tuple[Member, ...]:
        """The other members."""
        return tuple(member for member in self.members if member.node_id != self.node_id)

    @property
    def member_addresses(self) -> dict[str, str]:
        """Every member's HOST:PORT by its id, this node's included: what a peer's
        HELLO_REPLY says of its own --cluster, compared with this node's."""
        return {member.node_id: member.address for member in self.members}

    @property
    def cluster_size(self) -> int:
        return max(1, len(self.members))

    @property
    def quorum(self) -> int:
        """A majority, counting this node: 2 of 3."""
        return self.cluster_size // 2 + 1

