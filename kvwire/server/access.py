"""Who may do what on a connection: client tokens, their roles, and the peer role.

A node with an auth file (``--auth-file``) refuses every request but HELLO,
PING and HEALTH until the connection has said HELLO with a token the file
lists; the token's role then decides which ops it may send, and its optional
key prefix which keys. Peers get the peer ops by proving the cluster secret
(kvwire.protocol.peer_auth), never by a token.

The auth file, one token a line (a line whose first field begins with ``#`` is a
comment; a ``#`` inside a token or key prefix is part of it)::

    # name     role    token (or sha256:HEX of it)      [key prefix]
    app        write   sha256:<64 hex digits>           app/
    dashboard  read    Xq3v...

A token is looked up by its SHA-256 digest, in a dict: one look-up per HELLO
however long the file (a probe stalled a node's loop for seconds with HELLOs
of made-up tokens when each was compared against 100,000 entries). The
look-up's timing can tell at most something of a token's digest, which does
not lead back to the token. Names, never tokens, appear in logs.
"""

from __future__ import annotations

import enum
import hashlib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol.errors import ForbiddenError, UnauthenticatedError, UnavailableError
from ..protocol.messages import Delete, Digests, Fetch, Get, Health, Hello, Lookup, Ping, Put, Replicate, Requests, Sync
from ..small_file import read_small_file

# About 100,000 entries: anything larger is the wrong file (/dev/zero never ends).
MAX_AUTH_FILE_BYTES = 16 * 1024 * 1024
# A token is a password a program holds: refuse ones short enough to guess.
MIN_TOKEN_CHARS = 16
_SHA256_PREFIX = "sha256:"
# What `printf "$TOKEN" | sha256sum` and `echo "$TOKEN" | sha256sum` write when TOKEN is
# unset: no token could match either, and the entry is a mistake to say so of.
_UNSET_DIGESTS = {hashlib.sha256(b"").digest(): "nothing", hashlib.sha256(b"\n").digest(): "a newline alone"}


class AccessRole(str, enum.Enum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


# What a connection may send before it has said HELLO with a token: enough to
# introduce itself and for a load balancer's check. HEALTH names nodes, never keys.
OPEN_OPS = frozenset({Hello, Ping, Health})
_READ_OPS = OPEN_OPS | {Get}
_WRITE_OPS = _READ_OPS | {Put, Delete}
ROLE_OPS = {
    AccessRole.READ: _READ_OPS,
    AccessRole.WRITE: _WRITE_OPS,
    # Every client op there is; admin is the role later admin-only ops will need.
    AccessRole.ADMIN: _WRITE_OPS,
}
PEER_ONLY_OPS = frozenset({Replicate, Lookup, Fetch, Digests, Sync, Requests})
PEER_OPS = _WRITE_OPS | PEER_ONLY_OPS
# A node without an auth file: every client op, to anyone.
ANYONE_OPS = _WRITE_OPS


@dataclass(frozen=True)
class Grant:
    """What one connection may do: ``ops`` (request classes), on keys starting with ``prefix``."""

    who: str
    ops: frozenset
    prefix: str = ""
    # UNAVAILABLE with this message, not FORBIDDEN, for what ``ops`` lacks.
    unavailable: str | None = None

    def check(self, request) -> None:
        """Raise ForbiddenError unless this grant allows ``request`` (UnavailableError, with
        its message, for a grant that says ``unavailable``)."""
        kind = type(request)
        if kind not in self.ops:
            if self.unavailable is not None:
                raise UnavailableError(self.unavailable, maybe_applied=_unapplied(kind))
            name = kind.__name__.upper()
            if kind in PEER_ONLY_OPS:
                raise ForbiddenError(
                    f"{name} is accepted only on a connection that said HELLO with role 'peer' "
                    "and proved the cluster secret")
            if self.who == "anonymous":
                raise UnauthenticatedError(
                    f"{name} needs a token: this node has an auth file; say HELLO with a token first "
                    "(kvwire-cli --token-file or KVWIRE_TOKEN, Client(token=...))", maybe_applied=_unapplied(kind))
            raise ForbiddenError(f"{name} is not allowed for {self.who}", maybe_applied=_unapplied(kind))
        key = getattr(request, "key", None)
        if self.prefix and key is not None and not key.startswith(self.prefix):
            raise ForbiddenError(f"{self.who} may only use keys starting with {self.prefix!r}, not {key!r}"
                                 f"{_unicode_forms_note(key, self.prefix)}", maybe_applied=_unapplied(kind))


_WRITES = frozenset({Put, Delete})


def _unapplied(kind: type) -> bool | None:
    """A PUT or DELETE refused here was not applied: nothing was started."""
    return False if kind in _WRITES else None


def _unicode_forms_note(key: str, prefix: str) -> str:
    """Why a key that reads as if it had the prefix does not: another Unicode form
    of the same text (é as one code point or as e and a combining accent) prints
    the same, and the refusal read as nonsense."""
    if not unicodedata.normalize("NFC", key).startswith(unicodedata.normalize("NFC", prefix)):
        return ""
    return (f" (the same text in another Unicode form: keys are compared code point by code point, "
            f"{ascii(key)} against {ascii(prefix)})")


ANONYMOUS = Grant("anonymous", OPEN_OPS)
EVERYONE = Grant("anyone", ANYONE_OPS)
PEER = Grant("peer", PEER_OPS)
TOO_MANY_CONNECTIONS = "too many connections; try another node or later"
# A connection opened past --max-connections, in the room kept for the peers' links
# (NodeProtocol.connection_made): it may say a peer's HELLOs and nothing else.
BEYOND_THE_LIMIT = Grant("a connection beyond --max-connections", frozenset({Hello}), unavailable=TOO_MANY_CONNECTIONS)


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: AccessRole
    digest: bytes = b""
    prefix: str = ""

    def __repr__(self) -> str:  # the digest stays out of logs and tracebacks
        return f"TokenEntry(name={self.name!r}, role={self.role.value!r}, prefix={self.prefix!r})"

    def grant(self) -> Grant:
        return Grant(f"token {self.name!r} (role {self.role.value})", ROLE_OPS[self.role], self.prefix)


@dataclass(frozen=True)
class AuthTable:
    """The tokens of an auth file."""

    entries: tuple[TokenEntry, ...]
    _by_digest: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("an auth file must list at least one token")
        names = [entry.name for entry in self.entries]
        if len(set(names)) != len(names):
            raise ValueError(f"token names must be unique, got {', '.join(sorted(names))}")
        by_digest = {entry.digest: entry for entry in self.entries}
        if len(by_digest) != len(self.entries):
            raise ValueError("two entries hold the same token")
        object.__setattr__(self, "_by_digest", by_digest)

    def find(self, token: str) -> TokenEntry | None:
        """The entry for ``token``, or None. A token shorter than MIN_TOKEN_CHARS is
        never one: a ``sha256:`` entry could otherwise hold the digest of "" or "a"."""
        if len(token) < MIN_TOKEN_CHARS:
            return None
        return self._by_digest.get(hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest())

    @classmethod
    def load(cls, path: Path) -> AuthTable:
        """Read an auth file; ValueError naming the file and line for anything wrong."""
        data = read_small_file(path, limit=MAX_AUTH_FILE_BYTES, what="auth file")
        try:
            # utf-8-sig: an editor's byte order mark made the first line's first field
            # "\ufeff#" (a comment read as an entry) or part of a name.
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"cannot read auth file {path}: {exc}") from None
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                if any(field.startswith("#") for field in fields):
                    # Cut at the first "#", "tenant#42:" became the prefix "tenant" (every
                    # tenant's keys) and a token holding "#" its first part: a comment after
                    # an entry reads the same as a token or prefix that begins with "#".
                    raise ValueError("a field begins with '#': a comment goes on a line of its own, "
                                     "and a token or key prefix may hold '#' but not begin with it")
                entries.append(_parse_entry(fields))
            except ValueError as exc:
                raise ValueError(f"{path} line {number}: {exc}") from None
        try:
            return cls(tuple(entries))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def _parse_entry(fields: list[str]) -> TokenEntry:
    if len(fields) not in (3, 4):
        raise ValueError("expected NAME ROLE TOKEN [KEY_PREFIX]")
    name, role, token = fields[:3]
    try:
        role = AccessRole(role)
    except ValueError:
        raise ValueError(f"role {role!r} is not one of read, write, admin") from None
    if token.startswith(_SHA256_PREFIX):
        try:
            digest = bytes.fromhex(token[len(_SHA256_PREFIX):])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ValueError(f"token of {name!r}: sha256: must be followed by 64 hex digits")
        if digest in _UNSET_DIGESTS:
            raise ValueError(f"token of {name!r}: that is the SHA-256 of {_UNSET_DIGESTS[digest]} (was the variable "
                             f"holding the token unset when it was hashed?); tokens are at least {MIN_TOKEN_CHARS} "
                             "characters")
    elif len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"token of {name!r} is shorter than {MIN_TOKEN_CHARS} characters")
    else:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
    return TokenEntry(name, role, digest, fields[3] if len(fields) == 4 else "")
