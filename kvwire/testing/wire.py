"""A blocking, byte-level connection to a node, for tests that send bad input on purpose."""

from __future__ import annotations

import socket
import time

from ..protocol import CLOSED, NEED_DATA, Connection, Side, encode, parse_host_port
from ..protocol.messages import Message


class RawConnection:
    """Sends raw bytes or messages; reads back replies through the real codec."""

    def __init__(self, address: str, *, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(parse_host_port(address), timeout=timeout)
        self.codec = Connection(Side.CLIENT)
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
