"""A blocking, byte-level connection to a node, for tests that send bad input on purpose."""

from __future__ import annotations

import socket
import ssl
import time

from ..protocol import CLOSED, NEED_DATA, Connection, Side, encode, parse_host_port
from ..protocol.messages import Hello, HelloReply, Message, Role
from ..protocol.peer_auth import ACCEPTOR, DIALER, new_nonce, peer_proof, proof_matches


def connect_socket(host: str, port: int, *, timeout: float, ssl_context: ssl.SSLContext | None = None) -> socket.socket:
    """A blocking socket to ``host:port``, past its TLS handshake when given ``ssl_context``."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if ssl_context is None:
        return sock
    try:
        return ssl_context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


class RawConnection:
    """Sends raw bytes or messages; reads back replies through the real codec (over TLS with ``ssl_context``).
    ``raw_values``: replies keep their values as the msgpack bytes the node sent (a msgspec.Raw)."""

    def __init__(self, address: str, *, timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None,
                 raw_values: bool = False) -> None:
        self.sock = connect_socket(*parse_host_port(address), timeout=timeout, ssl_context=ssl_context)
        self.codec = Connection(Side.CLIENT, raw_values=raw_values)
        self.timeout = timeout

    def send(self, *messages: Message) -> None:
        self.sock.sendall(b"".join(encode(message) for message in messages))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, count: int = 1) -> list[Message]:
        """The next ``count`` replies; raises TimeoutError or EOFError if they don't come."""
        replies: list[Message] = []
        deadline = time.monotonic() + self.timeout
        while len(replies) < count:
            event = self.codec.next_event()
            if event is CLOSED:
                raise EOFError(f"node closed the connection after {len(replies)} of {count} replies")
            if event is not NEED_DATA:
                replies.append(event)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(replies)} of {count} replies within {self.timeout} s")
            self.sock.settimeout(remaining)
            self.codec.receive_data(self.sock.recv(1 << 20))
        return replies

    def request(self, message: Message) -> Message:
        self.send(message)
        return self.receive(1)[0]

    def hello_as_peer(self, node: str, cluster: str, secret: bytes, *, request_id: int = 1) -> Message:
        """The peer handshake (kvwire.protocol.peer_auth) as member ``node``: the
        reply to the second HELLO, or the first reply if that was an ERROR.
        Raises AssertionError if the node's own proof is wrong."""
        nonce = new_nonce()
        first = self.request(Hello(request_id, role=Role.PEER, cluster=cluster, node=node, nonce=nonce))
        if not isinstance(first, HelloReply):
            return first
        expected = peer_proof(secret, ACCEPTOR, cluster, node, first.node, nonce, first.nonce)
        assert proof_matches(expected, first.proof), f"node {first.node} did not prove the cluster secret"
        proof = peer_proof(secret, DIALER, cluster, node, first.node, nonce, first.nonce)
        return self.request(Hello(request_id + 1, role=Role.PEER, cluster=cluster, node=node, proof=proof))

    def closed_by_peer(self, timeout: float | None = None) -> bool:
        """True once the node has closed its side (read returns EOF) within ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def accepts_connections(address: str, timeout: float = 0.2) -> bool:
    """Whether something accepts a TCP connection at ``HOST:PORT`` now (the connection is closed at once)."""
    host, port = parse_host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
