"""The probes of ``kvwire up``: one request to a node on a blocking socket, and why it went unanswered."""

from __future__ import annotations

import ssl
from typing import Any

from ..protocol import NEED_DATA, Connection, Side, encode
from ..protocol.address import format_endpoint
from ..testing.wire import connect_socket
from ..tls import describe_tls_error


class NoAnswer(Exception):
    """A node's probe got no reply it could use; the message says why, in a few words."""


class ClosedWithoutReply(NoAnswer):
    """The node closed the connection without a reply."""


def reply_of(host: str, port: int, request: Any, reply_type: type, timeout: float = 0.5,
             ssl_context: ssl.SSLContext | None = None) -> Any:
    """The node's reply to ``request`` if it is a ``reply_type``; NoAnswer saying why not."""
    try:
        with connect_socket(host, port, timeout=timeout, ssl_context=ssl_context) as sock:
            sock.sendall(encode(request))
            codec = Connection(Side.CLIENT)
            while (event := codec.next_event()) is NEED_DATA:
                data = sock.recv(65536)
                if not data:
                    raise ClosedWithoutReply("it closed the connection without a reply")
                codec.receive_data(data)
    except ssl.SSLError as exc:  # during the handshake, or after it in TLS 1.3 when the node refuses our certificate
        raise NoAnswer(f"TLS with {format_endpoint(host, port)} failed: {describe_tls_error(exc)}") from None
    except TimeoutError:
        raise NoAnswer(f"no reply within {timeout:g} s") from None
    except OSError as exc:
        raise NoAnswer(f"{format_endpoint(host, port)}: {exc.strerror or exc}") from None
    except ValueError as exc:  # the codec's: not our protocol
        raise NoAnswer(f"a reply that is not kvwire's protocol ({exc})") from None
    if not isinstance(event, reply_type):
        raise NoAnswer(f"it replied {type(event).__name__}, not {reply_type.__name__}")
    return event
