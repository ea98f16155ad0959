"""What a bridge needs to know, checked once when it is built.

No aiohttp here: ``kvwire bridge`` builds its options and its config from this
module without loading the server (``kvwire.http_bridge`` imports that lazily).
"""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass, field

from kvwire.client import RetryPolicy
from kvwire.protocol import DEFAULT_LIMITS, Limits, format_endpoint, parse_endpoints
from kvwire.protocol.ids import ID_RULE, is_valid_id
from kvwire.tls import TlsFiles, client_context, server_context

from .hosts import normalize_allowed_host

DEFAULT_LISTEN_PORT = 8000
# A value's limit is on its msgpack encoding (1 MiB by default); its JSON
# text is bigger: base64 adds a third to bytes, and a string of control
# characters spelled \u0001 takes six bytes per character. 4 MiB leaves room
# for that and still bounds the memory one request can pin.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# Nothing legitimate is smaller: {"value": ...} alone is 11 bytes.
MIN_BODY_BYTES = 64
# What all clients' connections may hold together of requests still arriving
# (kvwire.buffer_budget): 64 bodies of the default largest, where 1,024
# connections could otherwise make the bridge hold 4 GB.
DEFAULT_MAX_BUFFERED_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """One bridge: where it listens and which nodes it forwards to.

    ``endpoints`` are tried in order, failing over as the client library
    does; ``timeout`` bounds each REST request's call to the cluster,
    failover included. ``limits`` should match the nodes' (``kvwire serve
    --max-key-bytes/--max-value-bytes``): the bridge refuses what they would.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_LISTEN_PORT
    endpoints: tuple[str, ...] = ("127.0.0.1:7379",)
    timeout: float = 5.0
    cluster_id: str | None = None
    limits: Limits = DEFAULT_LIMITS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # In-flight REST requests get this long to finish on shutdown, like a node's.
    shutdown_timeout: float = 10.0
    access_log: bool = False
    # GET, PUT and DELETE of a key read and answered without aiohttp's request
    # machinery (http_bridge/fast_path.py); off, or with access_log, aiohttp serves all.
    fast_path: bool = True
    # HTTPS with tls.cert and tls.key (no cert: plain HTTP). With nodes_tls the
    # bridge dials the nodes over TLS, checking them against tls.ca (None: the
    # system's CAs) and presenting tls.cert, which nodes given a CA require.
    tls: TlsFiles | None = None
    nodes_tls: bool = False
    # Bounds on what one client can make the bridge hold, as a node has its own
    # (--max-connections, --hello-timeout, --frame-timeout): connections past
    # max_connections are answered 503 and closed; a connection with no request
    # for idle_timeout is closed (nginx's keep-alive default; aiohttp's own is an
    # hour); a request must have its head whole within request_timeout of its
    # first byte, and its body may not go silent for as long (408).
    max_connections: int = 1024
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    idle_timeout: float = 75.0
    request_timeout: float = 10.0
    # Host names a plain-HTTP bridge answers for besides IP addresses and
    # localhost ("*": any), against DNS rebinding (hosts.py).
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise ValueError(f"host must be a string, got {self.host!r}")
        if type(self.port) is not int or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer from 0 to 65535 (0: any free port), got {self.port!r}")
        if isinstance(self.endpoints, str) or not self.endpoints:
            raise ValueError("endpoints must be a non-empty sequence of 'host:port' strings")
        # Normalised, so that errors show what was understood.
        object.__setattr__(
            self, "endpoints", tuple(format_endpoint(host, port) for host, port in parse_endpoints(list(self.endpoints)))
        )
        for name in ("timeout", "shutdown_timeout", "idle_timeout", "request_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.cluster_id is not None and not is_valid_id(self.cluster_id):
            raise ValueError(f"cluster id {self.cluster_id!r} must be {ID_RULE}, as the nodes' is")
        if not isinstance(self.limits, Limits):
            raise ValueError(f"limits must be a kvwire.protocol.Limits, got {type(self.limits).__name__}")
        if type(self.max_connections) is not int or self.max_connections < 1:
            raise ValueError(f"max_connections must be a positive integer, got {self.max_connections!r}")
        if type(self.max_body_bytes) is not int or self.max_body_bytes < MIN_BODY_BYTES:
            raise ValueError(f"max_body_bytes must be an integer of at least {MIN_BODY_BYTES}, got {self.max_body_bytes!r}")
        if type(self.max_buffered_bytes) is not int or self.max_buffered_bytes < 2 * self.max_body_bytes:
            # A connection holds a body and what it read ahead of the next request: below
            # that, one client sending the largest body would be closed before it arrived.
            raise ValueError(f"max_buffered_bytes must be an integer of at least twice max_body_bytes "
                             f"({2 * self.max_body_bytes}), got {self.max_buffered_bytes!r}")
        if not isinstance(self.retry, RetryPolicy):
            raise ValueError(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        for name in ("access_log", "fast_path", "nodes_tls"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.tls is not None and not isinstance(self.tls, TlsFiles):
            raise ValueError(f"tls must be a kvwire.tls.TlsFiles or None, got {type(self.tls).__name__}")
        if isinstance(self.allowed_hosts, str):
            raise ValueError(f"allowed_hosts must be a sequence of host names, not the string {self.allowed_hosts!r}")
        object.__setattr__(self, "allowed_hosts", tuple(dict.fromkeys(
            normalize_allowed_host(name) for name in self.allowed_hosts)))

    @property
    def checks_hosts(self) -> bool:
        """Whether requests' Host is checked (hosts.py): over plain HTTP, unless any host is allowed."""
        return not self.https and "*" not in self.allowed_hosts

    @property
    def listen(self) -> str:
        return format_endpoint(self.host, self.port)

    @property
    def https(self) -> bool:
        return self.tls is not None and self.tls.cert is not None

    def https_context(self) -> ssl.SSLContext | None:
        """What the REST API serves with; None for plain HTTP. Browsers and curl bring no
        client certificate, so none is asked for."""
        if self.tls is None or self.tls.cert is None or self.tls.key is None:
            return None
        return server_context(self.tls.cert, self.tls.key)

    def nodes_context(self) -> ssl.SSLContext | None:
        """What the bridge's clients dial the nodes with; None for plain TCP."""
        if not self.nodes_tls:
            return None
        files = self.tls or TlsFiles()
        return client_context(ca=files.ca, cert=files.cert, key=files.key)
