"""What the node core asks its shell to do. Plain records, no behaviour.

The core (``NodeCore``) never performs I/O: every event handler appends
effects to ``core.effects``, and the shell (asyncio in production, the
simulator in tests) performs them in order and reports back with further
events. Each effect names the event that completes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...protocol.messages import Version


@dataclass(slots=True)
class Send:
    """Send a request to ``peer`` on our link to it. Completed by
    ``core.peer_reply(peer, request_id, reply)`` or ``core.peer_failed(peer, request_id)``."""

    peer: str
    request_id: int
    message_type: type
    fields: tuple


@dataclass(slots=True)
class Respond:
    """Answer the request the shell handed in as ``token``: a reply message, or a KvwireError."""

    token: Any
    reply: Any


@dataclass(slots=True)
class Persist:
    """Commit this row durably (a tombstone when ``deleted``). ``packed`` is the
    value's msgpack bytes when the shell already has them. ``request``: the id
    of the PUT that wrote this version, to keep with it in the same commit, so
    that a retry finds it after a restart too (``applied.py``). Completed by
    ``core.persisted(write_id, error)``; the shell may batch rows (group commit)."""

    write_id: int
    key: str
    version: Version
    deleted: bool
    value: Any
    packed: bytes | None
    request: str | None = None
    tentative: bool = False  # the request's record is tentative (applied.Applied)


@dataclass(slots=True)
class StoreHint:
    """Remember durably that ``peer`` must get ``key`` at ``version`` at least. No completion."""

    peer: str
    key: str
    version: Version


@dataclass(slots=True)
class DropHint:
    """``peer`` holds ``key`` at ``version`` or newer: forget hints up to it. No completion."""

    peer: str
    key: str
    version: Version


@dataclass(slots=True)
class DropPeerHints:
    """Forget every hint for ``peer``: this node stopped hinting it, for ``reason``
    (over a bound, or no longer a member), and leaves its catch-up to
    anti-entropy. No completion."""

    peer: str
    reason: str


@dataclass(slots=True)
class Purge:
    """Delete ``key``'s row, in the next commit, if it is still the tombstone
    tagged ``version`` (tombstone garbage collection). No completion."""

    key: str
    version: Version


@dataclass(slots=True)
class SaveFloor:
    """Make ``floor`` this node's durable tag floor (a meta row, in the next
    commit). Completed by ``core.floor_saved(floor)``."""

    floor: int


@dataclass(slots=True)
class Joined:
    """A joining node caught up from every peer: forget, in the next commit, that
    it is joining (a restart must not make it a voter before). No completion."""


@dataclass(slots=True)
class SaveRequests:
    """Keep these PUT request records durably, in the next commit, as ``Persist``
    keeps its own: ``(request, key, version, tentative)`` each, copied from a
    peer while joining (``applied.py``). No completion."""

    records: list


@dataclass(slots=True)
class Strand:
    """Keep, in the next commit, that ``key``'s copy here at ``version`` is from a
    write left undecided (stranded, ``one_trip.py``), so that a restart still
    knows it: forgotten, the next LOOKUP PUT here minted two above what a majority
    held. No completion; the mark is dropped at a start that finds the key's row
    past it."""

    key: str
    version: Version


@dataclass(slots=True)
class Mend:
    """Rewrite, in the next commit, ``key``'s value with ``value`` (``peer``'s copy)
    if its row is still ``version``: the value there was found damaged
    (``mending.py``). No completion."""

    key: str
    version: Version
    value: Any
    peer: str


@dataclass(slots=True)
class Load:
    """Read ``key``'s committed row. Completed by ``core.loaded(key, row)``, with row
    ``(version, deleted, value)`` or None when there is none."""

    key: str


@dataclass(slots=True)
class CloseLink:
    """Close the link to ``peer`` and dial again: the failure detector found it
    silent, and a silent TCP connection may sit in retransmission backoff for
    tens of seconds after a partition heals."""

    peer: str


@dataclass(slots=True)
class DropConnections:
    """Close every connection open to this node now, without reading what it still
    holds: this process could not run for ``stalled`` seconds, longer than request
    ids are kept, and a write waiting in a connection's backlog was sent before or
    during that time; its client may have had it applied elsewhere since, and a newer
    write acknowledged after it. The refusals of ``NodeCore.request`` cover what the
    process reads within a failure timeout of running again; a backlog deeper than
    that (tens of thousands of pipelined writes) went on to be applied (a reviewer's
    finding). Clients see the connection lost and send again, a PUT with its id."""

    stalled: float


@dataclass(slots=True)
class PeerStateChanged:
    """For the log: the failure detector moved a peer UP or DOWN."""

    transition: Any


@dataclass(slots=True)
class Notice:
    """For the log: a warning an operator should read, ``event`` and ``fields`` with it. No completion."""

    event: str
    message: str
    fields: dict


Effect = (Send | Respond | Persist | StoreHint | DropHint | DropPeerHints | Purge | SaveFloor | SaveRequests | Joined | Load
          | CloseLink | DropConnections | PeerStateChanged | Notice | Strand | Mend)
