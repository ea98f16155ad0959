"""Python clients for kvwire: ``AsyncClient`` for asyncio, ``Client`` for blocking code.

Both share one implementation (:mod:`kvwire.client.aio`); the errors are the
protocol's one exception tree, re-exported here for convenience.
"""

from kvwire.protocol.errors import (
    BadRequestError,
    ConflictError,
    ErrorCode,
    ForbiddenError,
    InternalServerError,
    KeyNotFoundError,
    KvwireConnectionError,
    KvwireError,
    KvwireTimeoutError,
    NoQuorumError,
    ProtocolError,
    ServerError,
    ServerTimeoutError,
    TooLargeError,
    UnauthenticatedError,
    UnavailableError,
    UnknownOpError,
    WrongClusterError,
)
from kvwire.protocol import DEFAULT_LIMITS, MSGPACK_MAX_INT, MSGPACK_MIN_INT, Limits
from kvwire.protocol.messages import Consistency, Version

from .aio import AsyncClient, PutResult, RetryPolicy, VersionedValue
from .arguments import check_key, check_value
from .connection import ClientConnection
from .sync import Client

__all__ = [
    "AsyncClient",
    "BadRequestError",
    "Client",
    "ClientConnection",
    "ConflictError",
    "Consistency",
    "DEFAULT_LIMITS",
    "ErrorCode",
    "ForbiddenError",
    "InternalServerError",
    "KeyNotFoundError",
    "KvwireConnectionError",
    "KvwireError",
    "KvwireTimeoutError",
    "Limits",
    "MSGPACK_MAX_INT",
    "MSGPACK_MIN_INT",
    "NoQuorumError",
    "ProtocolError",
    "RetryPolicy",
    "ServerError",
    "ServerTimeoutError",
    "TooLargeError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownOpError",
    "Version",
    "WrongClusterError",
    "PutResult",
    "VersionedValue",
    "check_key",
    "check_value",
]
