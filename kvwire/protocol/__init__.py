"""The kvwire wire protocol: pure code, no sockets, no asyncio (docs/protocol.md)."""

from .address import parse_host_port
from .codec import decode_payload, encode, encode_payload, frame
from .connection import CLOSED, NEED_DATA, Connection, Side
from .errors import *  # noqa: F403 - the exception tree is part of the protocol's API
from .errors import ErrorCode, error_from_wire
from .limits import DEFAULT_LIMITS, Limits
from .messages import *  # noqa: F403
from .messages import NO_VERSION, PROTOCOL_VERSION, Consistency, Op, Role, Version
