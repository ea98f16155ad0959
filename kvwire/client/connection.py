"""One TCP connection to a node, carrying many pipelined requests.

A thin ``asyncio.Protocol`` (uvicorn's habit) around the sans-I/O
``kvwire.protocol.Connection``: bytes from the socket feed the codec, and each
complete reply resolves the future waiting on its request id. Requests issued
in the same event-loop iteration go out in one write (docs/design.md section 5:
joining writes is worth about 4x under pipelining).

This module is the client's I/O boundary: ``OSError`` and connect timeouts
become ``KvwireConnectionError`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import ssl
from typing import Any, Callable, cast

from kvwire.protocol import (
    CLOSED,
    DEFAULT_LIMITS,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    ErrorCode,
    ErrorReply,
    ForbiddenError,
    Hello,
    HelloReply,
    KvwireConnectionError,
    Limits,
    ProtocolError,
    Role,
    Side,
    TooLargeError,
    UnauthenticatedError,
    WrongClusterError,
    error_from_wire,
)
from kvwire.protocol.errors import WrongNodeError
from kvwire.protocol.codec import HEADER_SIZE as FRAME_HEADER_BYTES
from kvwire.protocol.limits import FRAME_OVERHEAD_BYTES
from kvwire.protocol.messages import REPLY_BIT, Op, Request

from ..protocol.address import format_endpoint
from ..tls import HANDSHAKE_LIMIT_HINT, describe_tls_error, dialler_hint
from ..protocol.peer_auth import ACCEPTOR, DIALER, new_nonce, peer_proof, proof_matches

log = logging.getLogger("kvwire.client")


class WriteFlowControl:
    """Holds writers back between ``pause_writing`` and ``resume_writing``."""

    def __init__(self) -> None:
        self._paused = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake_all()

    async def wait_writable(self) -> None:
        if not self._paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            # A cancelled waiter must not stay queued; a resumed one is already gone.
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release_all(self) -> None:
        """Let every waiter go on, e.g. to find that the connection is gone."""
        self._paused = False
        self._wake_all()

    def _wake_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class ClientConnection(asyncio.Protocol):
    """A connection to one node; open it with :meth:`open`."""

    def __init__(self, address: str, limits: Limits = DEFAULT_LIMITS, *, raw_values: bool = False) -> None:
        self.address = address
        # Learned from the HELLO reply; None until then, or if HELLO was skipped.
        self.node_id: str | None = None
        self.cluster_id: str | None = None
        # The node's own limits, to check sizes before sending: a frame over its
        # max_frame_bytes usually ends in a connection reset, not an ERROR
        # (docs/protocol.md 9). Also None from nodes that predate the field.
        self.server_limits: Limits | None = None
        # The longest frame the node takes on this connection, from server_limits and
        # the role HELLO gave it (docs/protocol.md 9); None: unknown, not checked.
        self._frame_limit: int | None = None
        # The node's HELLO_REPLY to a peer said it is still joining (it cannot vote yet).
        self.peer_joining = False
        # To a peer: the node's process (new at each start) and its --cluster's member ids.
        self.peer_instance: bytes | None = None
        self.peer_members: dict[str, str] | None = None
        self._codec = Connection(Side.CLIENT, limits, raw_values=raw_values)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        # request id -> (future of the reply or None, the op a reply to it must
        # carry, the callback of ``send`` or None)
        self._pending: dict[int, tuple[asyncio.Future[Any] | None, int, Callable[[Any], None] | None]] = {}
        # Called on every read from the node: for a peer link, proof of life.
        self.on_receive: Callable[[], None] | None = None
        self._next_id = 1
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._flow = WriteFlowControl()
        # Set once the connection can carry no more requests; says why.
        self._failure: str | None = None
        # Set with the failure when the node said it read none of what it has not answered.
        self._unread: Callable[[], Exception] | None = None
        self._failure_cause: BaseException | None = None
        self._lost: asyncio.Future[None] = self._loop.create_future()

    # --- opening and closing ----------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        limits: Limits = DEFAULT_LIMITS,
        hello: bool = True,
        cluster: str | None = None,
        role: Role = Role.CLIENT,
        node: str | None = None,
        token: str | None = None,
        secret: bytes | None = None,
        expect_node: str | None = None,
        instance: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        raw_values: bool = False,
    ) -> ClientConnection:
        """Connect, and by default introduce ourselves with HELLO.

        With ``ssl_context`` (see kvwire.tls.client_context) the connection is
        TLS, and the node's certificate must name ``host``.

        Raises KvwireConnectionError when the node can't be reached or doesn't
        answer HELLO within ``connect_timeout``; ForbiddenError when it belongs
        to another cluster than ``cluster``, refuses ``token``, or (for a peer
        with the cluster ``secret``) fails the handshake either way, or answers
        as another node than ``expect_node``. A peer says its process's ``instance``.
        """
        loop = asyncio.get_running_loop()
        address = format_endpoint(host, port)
        deadline = asyncio.timeout(connect_timeout)
        try:
            async with deadline:
                _, connection = await loop.create_connection(
                    lambda: cls(address, limits, raw_values=raw_values), host, port,
                    ssl=ssl_context, server_hostname=host if ssl_context is not None else None,
                )
        except ssl.SSLError as exc:
            raise KvwireConnectionError(
                f"TLS handshake with {address} failed: {describe_tls_error(exc)}{dialler_hint(exc)}"
            ) from exc
        except OSError as exc:
            if deadline.expired():
                raise KvwireConnectionError(
                    f"cannot connect to {address}: no answer within {connect_timeout:g} s"
                ) from None
            if ssl_context is not None and isinstance(exc, ConnectionResetError):
                # Said bare, often with no errno ("ConnectionResetError"), it named no cause.
                raise KvwireConnectionError(f"cannot connect to {address}: {_CUT_HANDSHAKE}") from exc
            raise KvwireConnectionError(f"cannot connect to {address}: {_describe_os_error(exc)}") from exc
        if not hello:
            return connection
        deadline = asyncio.timeout(connect_timeout)
        try:
            async with deadline:
                await connection.hello(cluster, role=role, node=node, token=token, secret=secret,
                                       expect_node=expect_node, instance=instance)
        except BaseException as exc:
            connection.abort()  # a hung node would never let a graceful close finish
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise KvwireConnectionError(
                    f"node at {address} accepted the connection but did not answer HELLO "
                    f"within {connect_timeout:g} s"
                ) from None
            refused = connection.closed_by_node or (ssl_context is not None and connection.reset_by_node)
            if isinstance(exc, KvwireConnectionError) and refused:
                # Closing before answering HELLO is how a node refuses a TLS
                # handshake it could not complete (its log says why). Over TLS 1.3
                # the refusal can also arrive as a reset: the client's HELLO
                # reaches a socket the node has already closed.
                hint = _TLS_REFUSAL_HINT if ssl_context is not None else _PLAIN_REFUSAL_HINT
                raise RefusedBeforeHello(f"{exc}{hint}") from exc
            raise
        return connection

    async def hello(
        self,
        cluster: str | None = None,
        *,
        role: Role = Role.CLIENT,
        node: str | None = None,
        token: str | None = None,
        secret: bytes | None = None,
        expect_node: str | None = None,
        instance: bytes | None = None,
    ) -> HelloReply:
        """Send HELLO (as a client, with ``token`` if given, or as peer ``node``),
        and remember the node, cluster and limits it names.

        A peer with the cluster ``secret`` runs the handshake of
        kvwire.protocol.peer_auth: it checks the node's proof before giving its own.
        ``expect_node``: the node dialled; one answering as another is refused
        (WrongNodeError) before any proof of ours is sent.
        """
        nonce = new_nonce() if role is Role.PEER and secret is not None else None
        try:
            reply = await self.request(Hello, PROTOCOL_VERSION, role, cluster, node, token, nonce, None, instance)
        except ForbiddenError as exc:
            # A client's HELLO is refused FORBIDDEN for one reason only, checked before its
            # token (which is UNAUTHENTICATED): the node is of another cluster.
            if type(exc) is ForbiddenError and role is Role.CLIENT and cluster is not None:
                self.close()
                raise WrongClusterError(f"{self.address}: {exc.message}") from None
            if type(exc) is UnauthenticatedError:
                # Named, as the client tries its other nodes (one's auth file may lag).
                self.close()
                raise UnauthenticatedError(f"{self.address}: {exc.message}") from None
            raise
        if reply.proto != PROTOCOL_VERSION:
            self._fail(f"node speaks protocol version {reply.proto}, we speak {PROTOCOL_VERSION}")
            self.close()
            raise self._connection_error()
        if cluster is not None and reply.cluster != cluster:
            # The node should refuse this itself; checking here too means a
            # misconfigured node can't quietly take our writes.
            self.close()
            raise WrongClusterError(
                f"node {reply.node!r} at {self.address} belongs to cluster {reply.cluster!r}, not {cluster!r}"
            )
        if expect_node is not None and reply.node != expect_node:
            # Checked before our proof, which would otherwise be good for the node
            # that answered: whoever took a stopped member's address could relay our
            # HELLO to another member and its answer back to us, then hand that
            # member our proof and hold a proven peer link of its own without the
            # secret (a security probe did: it wrote keys that way).
            self.close()
            raise WrongNodeError(f"{self.address} answers as node {reply.node!r}, not {expect_node!r}; check --cluster")
        # A peer learns the node's process and member list from the reply that grants it
        # the role: the last one, after its proof.
        granted = reply
        if nonce is not None:
            granted = await self._prove_peer(reply, reply.cluster, node, secret, nonce, instance)
        self.node_id = reply.node
        self.cluster_id = reply.cluster
        # The codec has checked the map as Limits.from_wire does.
        self.server_limits = Limits.from_wire(reply.limits) if reply.limits is not None else None
        if self.server_limits is not None:
            # A client's frame is refused past the largest request (key + value + 1 KiB),
            # and the connection with it: checked against max_frame_bytes, a standalone
            # bridge given a larger --max-value-bytes than its nodes sent such PUTs, each
            # node dropped the connection, and every request in flight on it failed
            # (a REST probe's finding).
            self._frame_limit = (self.server_limits.max_frame_bytes if role is Role.PEER
                                 else self.server_limits.client_frame_bytes)
            # A node given larger limits than this client's answers with values as
            # large as they allow: read them, rather than drop the connection and
            # report the node lost. What this client sends is still checked by its own.
            self._codec.limits = self._codec.limits.widened_to(self.server_limits)
        self.peer_joining = reply.joining is True
        self.peer_instance = granted.instance
        self.peer_members = granted.members
        return reply

    async def _prove_peer(self, reply: HelloReply, cluster: str, node: str, secret: bytes, nonce: bytes,
                          instance: bytes | None) -> HelloReply:
        """Check the node's proof of the cluster secret, then send ours (the handshake's steps
        3 and 4); the node's reply to it."""
        if reply.nonce is None or reply.proof is None:
            self.close()
            raise ForbiddenError(
                f"node {reply.node!r} at {self.address} did not prove the cluster secret: "
                "it runs without one (--insecure?)")
        expected = peer_proof(secret, ACCEPTOR, cluster, node, reply.node, nonce, reply.nonce)
        if not proof_matches(expected, reply.proof):
            self.close()
            raise ForbiddenError(
                f"node {reply.node!r} at {self.address} failed to prove the cluster secret: "
                "the two nodes do not hold the same --cluster-secret-file")
        our_proof = peer_proof(secret, DIALER, cluster, node, reply.node, nonce, reply.nonce)
        return await self.request(Hello, PROTOCOL_VERSION, Role.PEER, cluster, node, None, None, our_proof, instance)

    @property
    def closed_by_node(self) -> bool:
        """Whether the node ended the connection (EOF) rather than an error or the client."""
        return self._failure == _CLOSED_BY_NODE

    @property
    def reset_by_node(self) -> bool:
        """Whether the connection was reset (ECONNRESET) from the node's side."""
        return isinstance(self._failure_cause, ConnectionResetError)

    @property
    def is_open(self) -> bool:
        """Whether new requests can still be sent on this connection."""
        return self._failure is None and self._transport is not None and not self._transport.is_closing()

    @property
    def writing_paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark; new requests wait."""
        return self._flow.paused

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    def close(self) -> None:
        """Close the connection; requests still waiting fail with KvwireConnectionError.

        The socket stays open until the node has read what is buffered for it and,
        over TLS, answered close_notify: use :meth:`abort` for a node that may be hung."""
        if self._failure is None:
            self._fail(CLOSED_BY_CLIENT)
        self._outgoing.clear()  # their requests have just failed
        if self._transport is not None:
            self._transport.close()

    def abort(self, reason: str = "connection aborted by the client") -> None:
        """Drop the connection at once, discarding unsent bytes: unlike ``close``, it
        does not wait for the write buffer to drain (or for TLS's close_notify),
        which on a connection into a partition could take TCP's whole
        retransmission backoff, and to a hung node forever. Requests still waiting
        fail with KvwireConnectionError saying ``reason``."""
        if self._failure is None:
            self._fail(reason)
        self._outgoing.clear()
        if self._transport is not None:
            self._transport.abort()

    def abandon(self) -> None:
        """``abort`` for a connection whose event loop is closed (the client moved on to
        another loop, or was closed from one). uvloop closed its sockets with the loop;
        asyncio's own loop cannot close a transport once it is closed (its abort raises
        RuntimeError), and the socket would stay open, to the node too, until the
        garbage collector found it."""
        # Not _fail: resolving a waiter's future schedules its task's wake-up on the closed
        # loop, which raises. Nothing can wait on that loop any more: the waiters are dropped.
        if self._failure is None:
            self._failure = CLOSED_BY_CLIENT
        self._pending.clear()
        self._outgoing.clear()
        transport, self._transport = self._transport, None
        if transport is None:
            return
        try:
            transport.abort()
        except RuntimeError:
            wrapped = transport.get_extra_info("socket")
            # asyncio hands out its socket wrapped (asyncio.trsock.TransportSocket), without close().
            sock = getattr(wrapped, "_sock", wrapped)
            if isinstance(sock, socket.socket):
                sock.close()  # the transport's own close later finds it closed, and does nothing

    async def wait_closed(self) -> None:
        """Wait until the transport has let go of the socket."""
        await asyncio.shield(self._lost)

    # --- requests -----------------------------------------------------------------------

    async def request(self, message_type: type[Request], *fields: Any) -> Any:
        """Send ``message_type(request_id, *fields)`` and return its reply.

        An ERROR reply is raised as the exception its code stands for; an
        invalid reply, or a lost connection, as KvwireConnectionError. Encoding
        errors (a value msgpack can't carry) raise a non-fatal ProtocolError
        before anything is sent. Cancelling the caller abandons the request: a late
        reply is then dropped.
        """
        if self._flow.paused:
            await self._flow.wait_writable()
        reply_future = self.submit(message_type, *fields)
        try:
            return await reply_future
        finally:
            if not reply_future.done():
                reply_future.cancel()  # abandoned: a late reply is dropped

    def submit(self, message_type: type[Request], *fields: Any) -> asyncio.Future[Any]:
        """Send now and return the future of the reply, without a task per request.

        For callers that fan one request out to many nodes (a coordinator's
        replication) or must not wait on write flow control (heartbeats): the
        future fails as :meth:`request` would raise.
        """
        reply_future: asyncio.Future[Any] = self._loop.create_future()
        # A cancelled request stays pending, its reply dropped when it comes: the node
        # still owes it, and the client's silence watch must count it. Dropped at once,
        # a caller's own timeouts (asyncio.wait_for) shorter than half the attempt
        # timeout left nothing owed at each check: a hung node was never given up on.
        self._send(message_type, fields, reply_future, None)
        return reply_future

    def send(self, message_type: type[Request], fields: tuple, on_reply: Callable[[Any], None]) -> None:
        """Send now; ``on_reply`` is called once with the reply, or with the
        exception that :meth:`request` would raise.

        For a node's peer links: no future, and no loop turn between a reply
        and its handling, which runs inside this connection's reading. A lost
        connection's failures come a loop turn later, as a future's would. An
        exception ``on_reply`` raises is logged and the connection reads on.
        Raises as :meth:`submit` does, before anything is sent.
        """
        self._send(message_type, fields, None, on_reply)

    def _send(self, message_type: type[Request], fields: tuple, future: asyncio.Future[Any] | None,
              on_reply: Callable[[Any], None] | None) -> int:
        if self._failure is not None:
            raise self.refusal(message_type) or self._connection_error()
        request_id = self._next_id
        data = self._codec.send(message_type(request_id, *fields))
        limit = self._frame_limit
        if limit is not None and len(data) - FRAME_HEADER_BYTES > limit:
            # The node would drop the connection at the header (docs/protocol.md 9), which
            # reads as a lost node and is retried elsewhere; this request is the fault.
            raise TooLargeError(f"the request is {len(data) - FRAME_HEADER_BYTES} bytes as a frame; {self.address} "
                                f"takes at most {limit}{self._frame_limit_reason()}")
        self._next_id += 1
        self._pending[request_id] = (future, message_type.op | REPLY_BIT, on_reply)
        self._write(data)
        return request_id

    def _frame_limit_reason(self) -> str:
        limits = self.server_limits
        if limits is None or self._frame_limit == limits.max_frame_bytes:
            return ""
        return (f" from a client, its max_key_bytes ({limits.max_key_bytes}) + max_value_bytes "
                f"({limits.max_value_bytes}) + {FRAME_OVERHEAD_BYTES}")

    def _write(self, data: bytes) -> None:
        self._outgoing.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outgoing:
            return
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # --- asyncio.Protocol callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # create_connection gives a stream transport

    def data_received(self, data: bytes) -> None:
        if self.on_receive is not None:
            self.on_receive()
        self._codec.receive_data(data)
        self._handle_events()

    def eof_received(self) -> bool | None:
        self._codec.receive_data(b"")
        self._handle_events()
        if self._failure is None:
            self._fail(_CLOSED_BY_NODE)
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._failure is None:
            reason = f"connection lost: {_describe_os_error(exc)}" if exc else _CLOSED_BY_NODE
            self._fail(reason, exc)
        self._flow.release_all()
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()

    # --- replies ------------------------------------------------------------------------

    def _handle_events(self) -> None:
        codec = self._codec
        pending = self._pending
        while True:
            try:
                event = codec.next_event()
            except ProtocolError as exc:
                # A node that sends a bad reply can't be trusted with the rest
                # of the stream either, even when the codec could skip the frame.
                self._fail(f"the node sent an invalid reply: {exc}", exc)
                if self._transport is not None:
                    self._transport.abort()
                return
            if event is NEED_DATA or event is CLOSED:
                return
            if event.id is None and isinstance(event, ErrorReply):
                if event.code == ErrorCode.UNAVAILABLE and event.maybe_applied is False:
                    # The node is stopping and read none of the requests it has not
                    # answered (docs/protocol.md 8): each may go to another node, a
                    # DELETE included, so each fails saying nothing was applied.
                    message = f"{self.address}: {event.message}"
                    self._fail(f"the node reported: {event.message}",
                               unread=lambda reply_op=None: error_from_wire(
                                   event.code, message, None if reply_op in _READ_REPLY_OPS else False))
                    if self._transport is not None:
                        self._transport.close()  # the node waits for this side's end
                    return
                # An ERROR without an id answers no request: the node could not
                # parse something we sent, and is about to close the connection.
                self._fail(
                    f"the node reported: {event.message}",
                    error_from_wire(event.code, event.message, event.maybe_applied),
                )
                return
            waiting = pending.pop(event.id, None)
            if waiting is None:
                continue
            future, expected_op, on_reply = waiting
            if future is not None and future.done():
                continue  # the caller gave up (timeout or cancel) before the reply came
            if isinstance(event, ErrorReply):
                _deliver(future, on_reply, error_from_wire(event.code, event.message, event.maybe_applied))
            elif event.op != expected_op:
                # Like an unparsable frame: this node's stream can't be trusted.
                error = ProtocolError(f"a request expecting op {expected_op:#x} was answered with op {event.op:#x}")
                _deliver(future, on_reply,
                         KvwireConnectionError(f"{self.address}: the node sent an invalid reply: {error}"))
                self._fail(f"the node sent an invalid reply: {error}", error)
                if self._transport is not None:
                    self._transport.abort()
                return
            elif on_reply is not None:
                _call(on_reply, event)
            else:
                future.set_result(event)

    def _fail(self, reason: str, cause: BaseException | None = None,
              unread: Callable[..., Exception] | None = None) -> None:
        """Mark the connection unusable and fail every request waiting on it: with
        ``unread(reply_op)`` where the node said it read none of them (``maybe_applied``
        False, left out for a read's), else with a connection error (a write among
        them may have been applied)."""
        if self._failure is not None:
            return
        self._failure = reason
        self._failure_cause = cause
        self._unread = unread
        pending = list(self._pending.values())
        self._pending.clear()
        for future, reply_op, on_reply in pending:
            error = unread(reply_op) if unread is not None else self._connection_error()
            if on_reply is not None:
                # Later, as a future's callbacks would run: this may be called
                # inside the caller's own work (a node aborting a silent link
                # while it performs its effects), which must not be re-entered.
                self._loop.call_soon(_call, on_reply, error)
            elif not future.done():
                future.set_exception(error)
        self._flow.release_all()

    def refusal(self, message_type: type[Request] | None = None) -> Exception | None:
        """Once the node said it reads nothing more here (it is stopping), the error a
        request (of ``message_type``) not sent on this connection fails with: the refusal
        the node gives every request it reads while it stops (docs/protocol.md 8), with
        ``maybe_applied`` left out for a read. Else None."""
        if self._unread is None:
            return None
        return self._unread(message_type.op | REPLY_BIT if message_type is not None else None)

    def _connection_error(self) -> KvwireConnectionError:
        # A fresh exception per waiter: one instance raised in many tasks
        # would collect all of their tracebacks.
        error = KvwireConnectionError(f"{self.address}: {self._failure}")
        error.__cause__ = self._failure_cause
        return error


# The replies of the requests that write nothing: a refusal of one leaves out maybe_applied.
_READ_REPLY_OPS = frozenset(op | REPLY_BIT for op in (Op.HELLO, Op.PING, Op.GET, Op.HEALTH, Op.LOOKUP, Op.FETCH,
                                                     Op.DIGESTS, Op.SYNC, Op.REQUESTS))


class RefusedBeforeHello(KvwireConnectionError):
    """The node closed (or, over TLS 1.3, reset) the connection before answering HELLO:
    over TLS, most often its refusal of our client certificate, which no retry fixes."""


_CLOSED_BY_NODE = "the node closed the connection"
_CUT_HANDSHAKE = f"the node reset the connection during the TLS handshake; {HANDSHAKE_LIMIT_HINT}"
CLOSED_BY_CLIENT = "connection closed by the client"
_TLS_REFUSAL_HINT = (
    " before answering HELLO; over TLS that usually means it refused our client certificate, or wanted one"
    " (--tls-cert/--tls-key, cert=/key=; its log names the reason)"
)
_PLAIN_REFUSAL_HINT = (
    " before answering HELLO; if it serves TLS, connect with --tls (tls=True);"
    " if it is a load balancer, it may have no node UP behind it"
)


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the system's
        return describe_tls_error(exc)
    if isinstance(exc, socket.gaierror):  # its errno is getaddrinfo's (-2: "Unknown error -2" to strerror)
        return f"cannot resolve the host name: {exc.strerror}"
    # "Connection refused", not asyncio's "[Errno 111] Connect call failed ('127.0.0.1', 1)".
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _deliver(future: asyncio.Future[Any] | None, on_reply: Callable[[Any], None] | None, error: Exception) -> None:
    """A request's failure, to its future or its ``send`` callback."""
    if on_reply is not None:
        _call(on_reply, error)
    else:
        future.set_exception(error)


def _call(on_reply: Callable[[Any], None], reply: Any) -> None:
    # As the event loop treats a future's done callback: a failing callback is
    # logged, and neither the connection nor the other replies suffer from it.
    try:
        on_reply(reply)
    except Exception:  # noqa: BLE001
        log.exception("a reply's callback failed")
