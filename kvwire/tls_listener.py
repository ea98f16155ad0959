"""Accepting TLS connections, with one log line for every handshake that fails.

``loop.create_server(ssl=...)`` drops a failed handshake silently (asyncio and
uvloop only log it in debug mode), so an operator would never learn that a
peer or a client is being refused for its certificate. This listener accepts
plain sockets and runs each handshake itself through
``loop.connect_accepted_socket``, which raises the handshake's error with the
peer's address at hand. (``start_tls`` on an accepted transport would do the
same, but uvloop starts reading before it can take over and the ClientHello
is lost.) Once the handshake is done the connection is the protocol's (a
node's or an HTTPS bridge's), exactly as with ``create_server``.

Given a ``plaintext_answer``, it first peeks at the connection's first byte.
Every TLS client begins with a handshake record (0x16); anything else is a
client speaking plaintext to a TLS port (``curl http://`` to an HTTPS bridge,
a client without ``--tls``), which a handshake would only drop with an empty
reply. It gets the answer instead, saying so in its own protocol, and the
connection is closed, as nginx and Go's net/http answer plain HTTP on an
HTTPS port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Callable

from .log_limit import LogLimit
from .protocol.address import format_endpoint
from .tls import TLS_SHUTDOWN_TIMEOUT, describe_tls_error

log = logging.getLogger("kvwire.server")

# A connection that has not finished its handshake by then is dropped, so
# half-open handshakes cannot pin sockets (asyncio's default is 60 s).
HANDSHAKE_TIMEOUT = 5.0
# The first byte of a TLS handshake record, what every TLS client sends first.
TLS_HANDSHAKE_RECORD = 0x16
# What a plaintext connection is answered, given its first bytes (at least one).
PlaintextAnswer = Callable[[bytes], bytes]


class TlsListener:
    """Listening sockets whose connections become ``protocol_factory()``'s after a TLS handshake.

    Closed with :meth:`close`, like the ``asyncio.Server`` it stands in for.
    """

    def __init__(self, sockets: list[socket.socket], context: ssl.SSLContext,
                 protocol_factory: Callable[[], asyncio.Protocol], handshake_timeout: float, max_handshakes: int,
                 log_limit: LogLimit | None = None, plaintext_answer: PlaintextAnswer | None = None,
                 logger: logging.Logger = log) -> None:
        self.sockets = sockets
        self._log = logger
        self._plaintext_answer = plaintext_answer
        # Anyone who can connect can fail a handshake: its lines are logged a few at a time.
        self._log_limit = log_limit or LogLimit(logger)
        self._context = context
        self._protocol_factory = protocol_factory
        self._handshake_timeout = handshake_timeout
        self._max_handshakes = max_handshakes
        self._handshakes = 0
        self._tasks: set[asyncio.Task] = set()
        for listener in sockets:
            self._spawn(self._accept(listener))

    @classmethod
    async def start(cls, protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int, *,
                    context: ssl.SSLContext, backlog: int, max_handshakes: int,
                    handshake_timeout: float = HANDSHAKE_TIMEOUT, log_limit: LogLimit | None = None,
                    plaintext_answer: PlaintextAnswer | None = None, logger: logging.Logger = log,
                    reuse_port: bool | None = None) -> TlsListener:
        """Bind every address ``host`` resolves to, as ``create_server`` does; OSError if one can't be bound.

        At most ``max_handshakes`` handshakes run at once (the node passes its
        connection limit); a connection beyond them is closed at once, so a
        flood of slow handshakes costs bounded memory and CPU. A connection
        whose first byte opens no TLS handshake is sent ``plaintext_answer(its
        first bytes)`` and closed, if given (the module's docstring); lines
        are logged to ``logger``."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                listener = socket.socket(family, kind, proto)
                sockets.append(listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind(address)
                listener.listen(backlog)
                listener.setblocking(False)
        except BaseException:
            for listener in sockets:
                listener.close()
            raise
        return cls(sockets, context, protocol_factory, handshake_timeout, max_handshakes, log_limit,
                   plaintext_answer, logger)

    def close(self) -> None:
        """Stop accepting and drop the handshakes in progress; established connections stay."""
        for task in list(self._tasks):
            task.cancel()
        for listener in self.sockets:
            listener.close()

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, address = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: keep the listener alive
                self._log.error("accepting a connection failed: %s", exc.strerror or exc)
                await asyncio.sleep(0.1)
                continue
            if self._handshakes >= self._max_handshakes:
                # Refusing connections is worth an operator's notice (a flood, or --max-connections too low).
                remote = format_endpoint(address[0], address[1])
                self._log_limit.log(logging.WARNING, "connections refused at the handshake limit",
                                    "%d TLS handshakes already running (--max-connections); closing the connection "
                                    "from %s at once", self._handshakes, remote, logger=self._log,
                                    extra={"event": "tls_handshakes_at_limit", "remote": remote})
                connection.close()
                continue
            self._spawn(self._handshake(connection, address))

    async def _handshake(self, connection: socket.socket, address: tuple) -> None:
        loop = asyncio.get_running_loop()
        remote = format_endpoint(address[0], address[1])
        started = loop.time()
        self._handshakes += 1
        handed_over = False
        try:
            if self._plaintext_answer is not None:
                first = await asyncio.wait_for(_peek(loop, connection), self._handshake_timeout)
                if not first or first[0] != TLS_HANDSHAKE_RECORD:
                    await self._answer_plaintext(connection, first, remote)
                    return
            timeout = max(0.1, self._handshake_timeout - (loop.time() - started))
            handed_over = True
            await loop.connect_accepted_socket(
                self._protocol_factory, connection, ssl=self._context, ssl_handshake_timeout=timeout,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
            )
        except ssl.SSLError as exc:
            self._log_limit.log(logging.WARNING, "failed TLS handshakes", "TLS handshake with %s failed: %s", remote,
                                describe_tls_error(exc), logger=self._log,
                                extra={"event": "tls_handshake_failed", "remote": remote})
        except (OSError, TimeoutError) as exc:
            # Past the deadline (asyncio raises TimeoutError, uvloop ConnectionAbortedError):
            # a client stuck or holding a slot, which the operator should see. Closed before
            # it, a port probe most often (a client that distrusts our certificate sends an
            # alert first, an SSLError above): worth a line only when debugging.
            if isinstance(exc, TimeoutError) or loop.time() - started >= self._handshake_timeout:
                self._log_limit.log(logging.WARNING, "unfinished TLS handshakes", "TLS handshake with %s did not "
                                    "finish within %g s; closing the connection", remote, self._handshake_timeout,
                                    logger=self._log, extra={"event": "tls_handshake_timeout", "remote": remote})
            else:
                self._log.debug("TLS handshake with %s did not finish: %s", remote, type(exc).__name__)
        finally:
            self._handshakes -= 1
            # Handed over, success or failure, the socket is the transport's: it closes it.
            if not handed_over:
                connection.close()

    async def _answer_plaintext(self, connection: socket.socket, first: bytes, remote: str) -> None:
        try:
            if first:
                self._log_limit.log(logging.WARNING, "plaintext on the TLS port", "%s sent plaintext, not a TLS "
                                    "handshake (first byte 0x%02x): answered that this port serves TLS, and closed",
                                    remote, first[0], logger=self._log,
                                    extra={"event": "tls_plaintext_refused", "remote": remote})
                try:
                    connection.recv(_DISCARD_BYTES)  # what it sent, so that closing does not reset the answer
                except OSError:
                    pass
                await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(connection, self._plaintext_answer(first)),
                                       TLS_SHUTDOWN_TIMEOUT)
                connection.shutdown(socket.SHUT_WR)
        except (OSError, TimeoutError) as exc:
            self._log.debug("answering %s's plaintext failed: %s", remote, type(exc).__name__)


# Read and dropped from a plaintext connection before its answer: a request's
# head most often. What comes later may reset the connection as it closes.
_DISCARD_BYTES = 65536


async def _peek(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> bytes:
    """The first bytes ``connection`` has received, left unread; b"" if it closed first."""
    while True:
        try:
            return connection.recv(8, socket.MSG_PEEK)
        except BlockingIOError:
            pass
        readable = loop.create_future()
        fileno = connection.fileno()
        loop.add_reader(fileno, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(fileno)
