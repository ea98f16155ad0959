"""The kvwire wire protocol: pure code, no sockets, no asyncio (docs/protocol.md)."""

import signal as _signal

# msgspec's C module, its start interrupted by a signal handler that raised (a Ctrl-C
# in a command's first tenth of a second: every kvwire program imports it here), was
# left half made, and the first decoder built with it crashed the process (SIGSEGV).
# With those signals held it starts whole, and one that came meanwhile is taken as
# they are let through, by pthread_sigmask itself.
_unheld = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP})
try:
    import msgspec as _msgspec  # noqa: F401
finally:
    _signal.pthread_sigmask(_signal.SIG_SETMASK, _unheld)

from . import errors as _errors
from . import messages as _messages
from .address import format_endpoint, parse_endpoint, parse_endpoints, parse_host_port
from .codec import decode_payload, encode, encode_payload, frame
from .connection import CLOSED, NEED_DATA, Connection, Side
from .errors import *  # noqa: F403 - the exception tree is part of the protocol's API
from .limits import DEFAULT_LIMITS, MSGPACK_MAX_INT, MSGPACK_MIN_INT, Limits
from .messages import *  # noqa: F403

__all__ = [
    *_errors.__all__,
    *_messages.__all__,
    "CLOSED",
    "DEFAULT_LIMITS",
    "MSGPACK_MAX_INT",
    "MSGPACK_MIN_INT",
    "NEED_DATA",
    "Connection",
    "Limits",
    "Side",
    "decode_payload",
    "encode",
    "encode_payload",
    "format_endpoint",
    "frame",
    "parse_endpoint",
    "parse_endpoints",
    "parse_host_port",
]
