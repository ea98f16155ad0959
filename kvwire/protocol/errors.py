"""The one exception tree of kvwire, each class bound to its wire code.

Like hyper-h2, every error knows the code it travels as, so the server turns
any ``KvwireError`` into an ERROR reply with ``err.code`` (and
``err.maybe_applied``) and the client turns an ERROR reply back into the same
class with :func:`error_from_wire`. Where a
builtin fits, the class also subclasses it (``KeyNotFoundError`` is a
``KeyError``), so callers can use the idioms they already know.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Codes carried by ERROR replies; the table in docs/protocol.md mirrors it."""

    NOT_FOUND = 1
    BAD_REQUEST = 2
    TOO_LARGE = 3
    UNKNOWN_OP = 4
    FORBIDDEN = 5
    NO_QUORUM = 6
    TIMEOUT = 7
    UNAVAILABLE = 8
    INTERNAL = 9
    CONFLICT = 10
    UNAUTHENTICATED = 11


class KvwireError(Exception):
    """Root of every error kvwire raises.

    ``maybe_applied`` is what an ERROR reply's field of that name said about a
    failed write: True when some replica may hold it (it may become visible
    later), False when nothing was written, None when the node did not say
    (reads, and errors raised locally, but for a write the client could not
    send at all: a connection that could not be opened says False).

    Two class attributes say what a caller can do about the error, so that the
    client's failover, ``kvwire-cli``'s exit codes and the REST bridge's
    statuses all read the same fact instead of keeping lists of their own:

    - ``transient``: the request was not at fault; the cluster could not serve
      it now and the same request may succeed later (exit code 3, a 503 or 504).
    - ``try_another_node``: what failed is the one node asked, not the
      cluster's verdict, so another node may serve the call at once; the client
      fails over on these. Also ``transient``, but for WrongClusterError and
      UnauthenticatedError: another node may serve the call, and the node asked
      will not until its configuration changes.
    """

    code: ErrorCode = ErrorCode.INTERNAL
    maybe_applied: bool | None = None
    transient: bool = False
    try_another_node: bool = False

    def __init__(self, message: str = "", *, maybe_applied: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if maybe_applied is not None:
            self.maybe_applied = maybe_applied

    def __str__(self) -> str:
        # KeyError's __str__ would repr() the message; keep it readable.
        return self.message


# --- raised locally, on either side of a connection ---------------------------------


class ProtocolError(KvwireError, ValueError):
    """Bytes or a message that break docs/protocol.md.

    ``request_id`` is the id of the offending request when it could be read,
    so the server can still address its ERROR reply; ``fatal`` says whether the
    byte stream is beyond repair (a bad frame) or only this message was wrong.
    """

    code = ErrorCode.BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        request_id: int | None = None,
        fatal: bool = True,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.request_id = request_id
        self.fatal = fatal


class KvwireConnectionError(KvwireError, ConnectionError):
    """A node could not be reached, or the connection to it broke."""

    code = ErrorCode.UNAVAILABLE
    transient = True
    try_another_node = True


class KvwireTimeoutError(KvwireError, TimeoutError):
    """No reply arrived within the call's timeout."""

    code = ErrorCode.TIMEOUT
    transient = True
    try_another_node = True


# --- reported by a node in an ERROR reply (and raised by the node to produce it) -----


class ServerError(KvwireError):
    """An ERROR reply: the node understood the request and refused it."""


class KeyNotFoundError(ServerError, KeyError):
    code = ErrorCode.NOT_FOUND


class BadRequestError(ServerError, ValueError):
    code = ErrorCode.BAD_REQUEST


class TooLargeError(ServerError, ValueError):
    code = ErrorCode.TOO_LARGE


class UnknownOpError(ServerError, ValueError):
    code = ErrorCode.UNKNOWN_OP


class ForbiddenError(ServerError, PermissionError):
    code = ErrorCode.FORBIDDEN


class WrongClusterError(ForbiddenError):
    """The node belongs to another cluster than the one the client named (a HELLO's
    ``cluster``): a wrong endpoint in the list, not the cluster's verdict, so the
    client tries its other nodes; nothing was sent to this one. Not ``transient``:
    the node will never serve this cluster's calls (the REST bridge's 502)."""

    try_another_node = True


class WrongNodeError(ForbiddenError):
    """A peer link's dial reached a node answering as another member than the one
    dialled (``--cluster`` names the wrong address for it, or someone else took it):
    refused before the handshake's proof is sent. Raised by the connection, never
    sent on the wire."""


class UnauthenticatedError(ForbiddenError):
    """The node has an auth file and this connection has no accepted token: none
    was given, or the node does not know it (the REST bridge's 401). A token
    that is known but lacks the role is plain ForbiddenError (403). The client
    tries its other nodes, as for WrongClusterError: one node's auth file may
    lag the others' while they are rolled out (a client probe's finding: every
    call failed on the first node)."""

    code = ErrorCode.UNAUTHENTICATED
    try_another_node = True


class NoQuorumError(ServerError):
    """No majority answered in time. For a write, ``maybe_applied`` says whether
    it may still be on some replica (True) or was written nowhere (False).
    Not ``try_another_node``: it is the cluster's answer, not one node's; but
    another node may see a majority this one did not, so the client sends it
    again where that cannot apply it twice (RetryPolicy.retries)."""

    code = ErrorCode.NO_QUORUM
    transient = True


class ServerTimeoutError(ServerError, TimeoutError):
    code = ErrorCode.TIMEOUT
    transient = True


class UnavailableError(ServerError):
    """This node can't serve now (connection limit, shutting down); another may."""

    code = ErrorCode.UNAVAILABLE
    transient = True
    try_another_node = True


class InternalServerError(ServerError):
    code = ErrorCode.INTERNAL


class ConflictError(ServerError):
    """A DELETE raced with a concurrent write of the same key and may or may not
    have taken effect; hence ``maybe_applied`` is True unless the node says otherwise."""

    code = ErrorCode.CONFLICT
    maybe_applied = True
    transient = True  # a race, not a bad request: the same DELETE may succeed later


_SERVER_ERRORS: dict[int, type[ServerError]] = {
    cls.code: cls
    for cls in (
        KeyNotFoundError,
        BadRequestError,
        TooLargeError,
        UnknownOpError,
        ForbiddenError,
        NoQuorumError,
        ServerTimeoutError,
        UnavailableError,
        InternalServerError,
        ConflictError,
        UnauthenticatedError,
    )
}


def error_from_wire(code: int, message: str, maybe_applied: bool | None = None) -> ServerError:
    """The exception an ERROR reply stands for; unknown codes stay readable.

    ``maybe_applied`` is the reply's field of that name; None (absent) leaves
    the class's default.
    """
    cls = _SERVER_ERRORS.get(code)
    if cls is None:
        err = ServerError(f"{message} (unknown error code {code})", maybe_applied=maybe_applied)
        err.code = code  # type: ignore[assignment]
        return err
    return cls(message, maybe_applied=maybe_applied)

__all__ = [
    "BadRequestError",
    "ConflictError",
    "ErrorCode",
    "ForbiddenError",
    "InternalServerError",
    "KeyNotFoundError",
    "KvwireConnectionError",
    "KvwireError",
    "KvwireTimeoutError",
    "NoQuorumError",
    "ProtocolError",
    "ServerError",
    "ServerTimeoutError",
    "TooLargeError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownOpError",
    "WrongClusterError",
    "error_from_wire",
]
