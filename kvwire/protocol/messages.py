"""The messages of the kvwire protocol, as plain Python objects.

Each class is one op of docs/protocol.md; its fields, in order, are the map
fields that follow ``op`` and ``id`` on the wire. Requests have op codes below
0x80 and each reply has its request's op code with the 0x80 bit set, so a
reply says what it answers even when read alone (as HAProxy's checks do).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

from msgspec import Meta

from .limits import MAX_COUNTER

PROTOCOL_VERSION = 1

REPLY_BIT = 0x80


class Op(enum.IntEnum):
    HELLO = 0x01
    PING = 0x02
    GET = 0x03
    PUT = 0x04
    DELETE = 0x05
    HEALTH = 0x06
    REPLICATE = 0x07
    LOOKUP = 0x08
    FETCH = 0x09
    DIGESTS = 0x0A
    SYNC = 0x0B
    REQUESTS = 0x0C

    ERROR = 0x80
    HELLO_REPLY = 0x81
    PONG = 0x82
    GET_REPLY = 0x83
    PUT_REPLY = 0x84
    DELETE_REPLY = 0x85
    HEALTH_REPLY = 0x86
    REPLICATE_REPLY = 0x87
    LOOKUP_REPLY = 0x88
    FETCH_REPLY = 0x89
    DIGESTS_REPLY = 0x8A
    SYNC_REPLY = 0x8B
    REQUESTS_REPLY = 0x8C


class Role(str, enum.Enum):
    """Who opened a connection; a node accepts REPLICATE only from a peer."""

    CLIENT = "client"
    PEER = "peer"


class Consistency(str, enum.Enum):
    """How many replicas a GET consults; a lone node answers both alike."""

    QUORUM = "quorum"
    ONE = "one"


class Version(NamedTuple):
    """A version tag, ordered as a tuple: first by counter, then by node id.

    Wall-clock time never orders writes (docs/design.md section 1.1);
    the node id only breaks ties between writes of the same counter.
    """

    # The bound is read by the compiled decoder (kvwire.protocol.compiled).
    counter: Annotated[int, Meta(ge=0, le=MAX_COUNTER)]
    node: str


NO_VERSION = Version(0, "")


# --- requests --------------------------------------------------------------------------


@dataclass(slots=True)
class Hello:
    """``token``: a client's access token, for a node with an auth file.
    ``nonce`` and ``proof``: a peer's two HELLOs of the cluster-secret
    handshake (kvwire.protocol.peer_auth, docs/protocol.md section 6.1).
    ``instance``: a peer's random id of its process, new at every start, so that
    two processes running as one member are told apart."""

    id: int
    proto: int = PROTOCOL_VERSION
    role: Role = Role.CLIENT
    cluster: str | None = None
    node: str | None = None
    token: str | None = None
    nonce: bytes | None = None
    proof: bytes | None = None
    instance: bytes | None = None
    op = Op.HELLO


@dataclass(slots=True)
class Ping:
    id: int
    op = Op.PING


@dataclass(slots=True)
class Get:
    id: int
    key: str
    consistency: Consistency | None = None
    op = Op.GET


@dataclass(slots=True)
class Put:
    """``request``: the client's id for this write. A PUT sent again with the same
    id (a retry after a lost reply) is applied once: a node that finds the id
    already applied completes that write instead of making a new one (6.4)."""

    id: int
    key: str
    value: Any
    request: str | None = None
    # True when this PUT (this request id) may have been sent before: a retry,
    # or an id from outside the client. It then takes the LOOKUP round first,
    # which finds an earlier attempt's write (6.4); a first attempt goes out in
    # one round trip (6.3).
    retry: bool | None = None
    op = Op.PUT


@dataclass(slots=True)
class Delete:
    id: int
    key: str
    op = Op.DELETE


@dataclass(slots=True)
class Health:
    id: int
    op = Op.HEALTH


@dataclass(slots=True)
class Replicate:
    """Peer only: store ``value`` (or a tombstone) if ``version`` is newer.

    ``expect`` makes it conditional: apply only if the replica's newest
    accepted version for the key is at most ``expect`` (a DELETE uses it).
    """

    id: int
    key: str
    version: Version
    value: Any = None
    deleted: bool = False
    expect: Version | None = None
    request: str | None = None  # the PUT's request id, remembered with the version
    # True from a quorum read's write-back: this version was the newest on the read's
    # majority, so its PUT took effect, and a replica remembers ``request`` even if
    # it holds newer.
    read: bool | None = None
    op = Op.REPLICATE


@dataclass(slots=True)
class Lookup:
    """Peer only: the newest version tag this replica has accepted for ``key``,
    committed or not, from memory. A coordinator's first step of a write.
    ``request``: also ask whether this replica holds that PUT request applied.
    ``floor``: the coordinator's tag floor, which the replica adopts first."""

    id: int
    key: str
    request: str | None = None
    floor: int | None = None
    op = Op.LOOKUP


@dataclass(slots=True)
class Fetch:
    """Peer only: the committed value and version of ``key``; a quorum read's question.
    ``floor``: the coordinator's tag floor, which the replica adopts first.
    ``repair``: an anti-entropy pull, not a read: answered even while joining."""

    id: int
    key: str
    floor: int | None = None
    repair: bool | None = None
    op = Op.FETCH


@dataclass(slots=True)
class Digests:
    """Peer only, anti-entropy's first step: one 64-bit digest per key bucket of
    the sender's live keys (``REPAIR_BUCKETS`` big-endian words), and the
    sender's tag floor (docs/protocol.md section 6.12). ``tombstones``: the
    digests cover tombstones too (a joining node's, which needs every version)."""

    id: int
    digests: bytes
    floor: int
    tombstones: bool | None = None
    op = Op.DIGESTS


@dataclass(slots=True)
class Sync:
    """Peer only: the sender's entries ``[key, counter, node, deleted]`` of one
    bucket, in key order, for the keys after ``after`` (``""``: from the
    bucket's start) up to the last entry's key, or to the bucket's end when
    ``last``. The receiver answers which keys each side holds newer.
    ``tombstones``: offer tombstones against nothing too (a joining node needs
    every version, 6.12)."""

    id: int
    bucket: int
    after: str
    last: bool
    entries: list
    tombstones: bool | None = None
    op = Op.SYNC


@dataclass(slots=True)
class Requests:
    """Peer only, a joining node's last step: the receiver's records of the PUT
    request ids it applied (docs/protocol.md section 6.13), from ``cursor`` on
    (0: from the oldest)."""

    id: int
    cursor: int
    op = Op.REQUESTS


# --- replies ---------------------------------------------------------------------------


@dataclass(slots=True)
class ErrorReply:
    """``maybe_applied``, for a failed write: True if some replica may hold it,
    False if nothing was written; None (left out) for reads and other errors."""

    id: int | None
    code: int
    message: str
    maybe_applied: bool | None = None
    op = Op.ERROR


@dataclass(slots=True)
class HelloReply:
    """``limits``: the node's ``max_key_bytes``, ``max_value_bytes`` and
    ``max_frame_bytes`` (``Limits.to_wire()``); None from nodes that predate it.
    ``nonce`` and ``proof``: the node's half of a peer handshake, else None.
    ``joining``: True to a peer's HELLO from a node still catching up (as in PONG).
    ``instance`` and ``members``, to a peer that proved itself: the node's process
    id (as in HELLO) and its ``--cluster``, as a map of member id to HOST:PORT."""

    id: int
    proto: int
    node: str
    cluster: str
    limits: dict | None = None
    nonce: bytes | None = None
    proof: bytes | None = None
    joining: bool | None = None
    instance: bytes | None = None
    members: dict | None = None
    op = Op.HELLO_REPLY


@dataclass(slots=True)
class Pong:
    """``joining``: True from a node still catching up from its peers (it takes no
    part in majorities yet), so that its peers count it out of their quorum too.
    ``writable``: False from a node whose disk refuses writes: it fails every write
    it is sent, so its peers count it out of the majority that can take writes."""

    id: int
    joining: bool | None = None
    writable: bool | None = None
    op = Op.PONG


@dataclass(slots=True)
class GetReply:
    id: int
    value: Any
    version: Version
    op = Op.GET_REPLY


@dataclass(slots=True)
class PutReply:
    """``created``: no live value was there before this write (never written, or
    deleted), as the coordinator's majority saw it; None from nodes that predate it."""

    id: int
    version: Version
    created: bool | None = None
    op = Op.PUT_REPLY


@dataclass(slots=True)
class DeleteReply:
    id: int
    version: Version
    op = Op.DELETE_REPLY


@dataclass(slots=True)
class HealthReply:
    id: int
    health: dict
    op = Op.HEALTH_REPLY


@dataclass(slots=True)
class ReplicateReply:
    """``version`` is what the replica holds after the request, applied or not;
    ``prior`` and ``prior_deleted``, what it held when the request came (a
    one-round-trip PUT learns from them whether it created the key)."""

    id: int
    applied: bool
    version: Version
    prior: Version | None = None
    prior_deleted: bool | None = None
    # True from a node still joining (--join): having lost its disk, what it held
    # proves nothing, so a one-round-trip PUT does not count it (6.10).
    joining: bool | None = None
    # True when not applied (this node holds newer) but known to have taken effect:
    # a tombstone here whose DELETE read exactly the request's version, or a firm
    # record of the request's PUT at it (6.7, 6.10).
    observed: bool | None = None
    op = Op.REPLICATE_REPLY


@dataclass(slots=True)
class LookupReply:
    """``version`` is ``[0, ""]`` for a key never written; ``deleted`` marks a tombstone.
    ``floor``: the replica's tag floor, which a coordinator mints above (6.12)."""

    id: int
    version: Version
    deleted: bool
    floor: int | None = None
    request_version: Version | None = None  # the version LOOKUP's request was applied at, if held here
    # True when that version is a one-round-trip PUT's tag only its coordinator is
    # known to hold (it may be one a majority refused): finish it only where newest (6.10)
    request_tentative: bool | None = None
    op = Op.LOOKUP_REPLY


@dataclass(slots=True)
class FetchReply:
    """``value`` is nil when ``deleted`` or when ``version`` is ``[0, ""]``.
    ``floor``: as in LOOKUP_REPLY."""

    id: int
    version: Version
    deleted: bool
    value: Any
    floor: int | None = None
    request: str | None = None  # the request id of the PUT that wrote this version, if known here
    op = Op.FETCH_REPLY


@dataclass(slots=True)
class DigestsReply:
    """``buckets``: the bucket numbers whose digests differ from the receiver's,
    ascending; ``floor``: the receiver's durable tag floor; ``tombstones``: true
    when it compared digests that cover tombstones, as the DIGESTS asked (a
    node that predates the field ignores it and compares live keys only)."""

    id: int
    buckets: list
    floor: int
    tombstones: bool | None = None
    op = Op.DIGESTS_REPLY


@dataclass(slots=True)
class SyncReply:
    """``wanted``: the keys of the SYNC's range whose sent version is newer than
    the receiver's (the receiver pulls them in its own rounds); ``offered``:
    those where the receiver holds newer (the sender pulls them with FETCH)."""

    id: int
    wanted: list
    offered: list
    op = Op.SYNC_REPLY


@dataclass(slots=True)
class RequestsReply:
    """``records``: ``[request id, key, counter, node, tentative]``, each a PUT
    request id the receiver remembers applying to ``key`` at that tag; ``cursor``:
    what to send in the next REQUESTS; ``last``: no record is left after it."""

    id: int
    records: list
    cursor: int
    last: bool
    op = Op.REQUESTS_REPLY


# Fields left out of the map when they are None; every other field is always sent.
OPTIONAL_FIELDS: dict[int, frozenset[str]] = {
    Op.HELLO: frozenset({"cluster", "node", "token", "nonce", "proof", "instance"}),
    Op.GET: frozenset({"consistency"}),
    Op.PUT: frozenset({"request", "retry"}),
    Op.REPLICATE: frozenset({"expect", "request", "read"}),
    Op.LOOKUP: frozenset({"request", "floor"}),
    Op.FETCH: frozenset({"floor", "repair"}),
    Op.DIGESTS: frozenset({"tombstones"}),
    Op.SYNC: frozenset({"tombstones"}),
    Op.ERROR: frozenset({"maybe_applied"}),
    Op.HELLO_REPLY: frozenset({"limits", "nonce", "proof", "joining", "instance", "members"}),
    Op.PONG: frozenset({"joining", "writable"}),
    Op.PUT_REPLY: frozenset({"created"}),
    Op.REPLICATE_REPLY: frozenset({"prior", "prior_deleted", "joining", "observed"}),
    Op.LOOKUP_REPLY: frozenset({"floor", "request_version", "request_tentative"}),
    Op.FETCH_REPLY: frozenset({"floor", "request"}),
    Op.DIGESTS_REPLY: frozenset({"tombstones"}),
}

Request = Hello | Ping | Get | Put | Delete | Health | Replicate | Lookup | Fetch | Digests | Sync | Requests
Reply = (
    ErrorReply | HelloReply | Pong | GetReply | PutReply | DeleteReply | HealthReply | ReplicateReply
    | LookupReply | FetchReply | DigestsReply | SyncReply | RequestsReply
)
Message = Request | Reply

__all__ = [
    "Consistency",
    "Delete",
    "DeleteReply",
    "Digests",
    "DigestsReply",
    "ErrorReply",
    "Get",
    "GetReply",
    "Fetch",
    "FetchReply",
    "Health",
    "HealthReply",
    "Hello",
    "HelloReply",
    "Lookup",
    "LookupReply",
    "Message",
    "NO_VERSION",
    "Op",
    "PROTOCOL_VERSION",
    "Ping",
    "Pong",
    "Put",
    "PutReply",
    "REPLY_BIT",
    "Replicate",
    "ReplicateReply",
    "Reply",
    "Request",
    "Requests",
    "RequestsReply",
    "Role",
    "Sync",
    "SyncReply",
    "Version",
]
