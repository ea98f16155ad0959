"""``AsyncClient``: the one implementation behind both Python clients.

It keeps one lazily opened, pipelined connection per endpoint and sends each
call to one healthy node; after a lost connection, a silent node or an
UNAVAILABLE reply it retries on another node with exponential backoff
(``RetryPolicy``, :mod:`kvwire.client.failover`). Arguments are checked
before anything is sent, so a mistake raises a plain ``TypeError`` or
``ValueError`` naming it instead of a protocol error from the node.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import ssl
import time
from typing import Any, Iterable, NamedTuple

from msgspec import Raw

from kvwire.protocol import (
    DEFAULT_LIMITS,
    Consistency,
    Delete,
    Get,
    Health,
    KvwireConnectionError,
    KvwireError,
    KvwireTimeoutError,
    Limits,
    NoQuorumError,
    Ping,
    ProtocolError,
    Put,
    ServerError,
    TooLargeError,
    Version,
)

from ..protocol.address import parse_endpoints
from ..tls import ARGUMENT_NAMES, optional_client_context
from .arguments import check_consistency, check_key, is_utf8, prepared_put
from .connection import ClientConnection
from .failover import Endpoint, EndpointSet, RetryPolicy, client_closed_error, fits_a_float, require_number

__all__ = ["AsyncClient", "DEFAULT_ENDPOINT", "RetryPolicy", "VersionedValue"]

DEFAULT_ENDPOINT = "127.0.0.1:7379"


class VersionedValue(NamedTuple):
    """What :meth:`AsyncClient.get_with_version` returns; unpacks as ``value, version``."""

    value: Any
    version: Version


class PutResult(NamedTuple):
    """What :meth:`AsyncClient.put_with_result` returns; unpacks as ``version, created``.

    ``created`` is True when the cluster held no live value for the key before
    this write (never written, or deleted), judged from the majority answers
    that gave the new version: exact against writes acknowledged before this
    one started, while two puts creating a key at once through different nodes
    may both say True. None from nodes that predate the field.
    """

    version: Version
    created: bool | None


class AsyncClient:
    """An asyncio client for a kvwire cluster.

    ``endpoints`` is a list of ``"host:port"`` strings or one comma-separated
    string; IPv6 hosts go in brackets (``"[::1]:7379"``). ``timeout`` (seconds)
    bounds each call, including connecting and failing over, and raises
    ``KvwireTimeoutError`` when it runs out; every method accepts its own
    ``timeout=`` too. ``connect_timeout`` bounds each connection attempt,
    HELLO included (default: ``retry.attempt_timeout``, or ``timeout`` if
    smaller). ``cluster`` makes every node prove it belongs to that cluster
    id.

    ``tls=True`` connects over TLS, checking each node's certificate against
    the CA file ``ca`` (default: the system's trusted CAs) and the host of its
    endpoint; ``cert`` and ``key`` are the client certificate that nodes given
    a CA require. Any of the three files turns TLS on too; ``tls`` may also be
    a ready ``ssl.SSLContext``.

    With several endpoints, calls go to one healthy node (the first listed,
    until it fails). A lost connection, a node silent for
    ``retry.attempt_timeout`` seconds, or an UNAVAILABLE reply sends the call
    to another node after a backoff; see :class:`RetryPolicy` for the knobs,
    and for why a retried PUT may be applied twice.

    Use it as ``async with AsyncClient(...) as client:``, or call
    :meth:`close`. Connections open on first use.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str] = DEFAULT_ENDPOINT,
        *,
        timeout: float = 5.0,
        connect_timeout: float | None = None,
        cluster: str | None = None,
        retry: RetryPolicy | None = None,
        limits: Limits = DEFAULT_LIMITS,
        token: str | None = None,
        tls: bool | ssl.SSLContext | None = False,
        ca: str | os.PathLike | None = None,
        cert: str | os.PathLike | None = None,
        key: str | os.PathLike | None = None,
    ) -> None:
        self.timeout = _check_timeout("timeout", timeout)
        if token is not None and (type(token) is not str or not token):
            raise ValueError("token must be a non-empty string or None")
        if token is not None and not is_utf8(token):
            raise ValueError("token must be text UTF-8 can carry (it holds a lone surrogate)")
        if cluster is not None and (type(cluster) is not str or not cluster):
            raise ValueError(f"cluster must be a non-empty string or None, got {cluster!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a kvwire.protocol.Limits, got {type(limits).__name__}")
        self.cluster = cluster
        self.retry = retry if retry is not None else RetryPolicy()
        # Connecting includes the HELLO round trip; a node that takes longer
        # than a silent node may take (SIGSTOP keeps accepting connections) is hung.
        self.connect_timeout = (
            min(self.timeout, self.retry.attempt_timeout)
            if connect_timeout is None
            else _check_timeout("connect_timeout", connect_timeout)
        )
        self.limits = limits
        # None for plain TCP; loaded here, so a bad file raises before any call.
        self.ssl_context = optional_client_context(tls, ca=ca, cert=cert, key=key, names=ARGUMENT_NAMES)
        connect = functools.partial(
            ClientConnection.open, connect_timeout=self.connect_timeout, limits=limits, cluster=cluster, token=token,
            ssl_context=self.ssl_context,
        )
        addresses = parse_endpoints(endpoints)
        self._new_endpoints = lambda: EndpointSet(
            [Endpoint(host, port, connect=connect, retry=self.retry) for host, port in addresses])
        self._endpoints = self._new_endpoints()
        self.endpoints: tuple[str, ...] = tuple(endpoint.address for endpoint in self._endpoints.all)
        # The event loop its connections belong to, from its first call on (_bind_to_loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Calls backing off between attempts: close() wakes them, to fail at once.
        self._backing_off: set[asyncio.Future[None]] = set()
        self._calls_in_progress = 0

    @property
    def calls_in_progress(self) -> int:
        """Calls started and not yet returned or raised (close() fails them)."""
        return self._calls_in_progress

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<AsyncClient {','.join(self.endpoints)} {state}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the operations ----------------------------------------------------------------

    async def get(self, key: str, *, consistency: str | Consistency | None = None, timeout: float | None = None) -> Any:
        """The value stored under ``key``; raises KeyNotFoundError (a KeyError) if there is none.

        ``consistency`` is ``"quorum"`` (the node's default: linearizable) or
        ``"one"`` (the contacted node's copy, which may be stale but needs no
        quorum).
        """
        reply = await self._call(Get, check_key(key, self.limits), check_consistency(consistency), timeout=timeout)
        return reply.value

    async def get_with_version(
        self, key: str, *, consistency: str | Consistency | None = None, timeout: float | None = None
    ) -> VersionedValue:
        """Like :meth:`get`, but returns ``(value, version)``."""
        reply = await self._call(Get, check_key(key, self.limits), check_consistency(consistency), timeout=timeout)
        return VersionedValue(reply.value, reply.version)

    async def put(self, key: str, value: Any, *, timeout: float | None = None, request_id: str | None = None) -> Version:
        """Store ``value`` under ``key``; returns the new version.

        ``value`` may be None, bool, int, float, str, bytes, or lists and dicts
        (with str or bytes keys) of those; tuples come back as lists. Each put
        carries a request id (``request_id``, or a random one), so that if the
        connection fails after it was sent and it is retried on another node,
        it is applied once (docs/protocol.md 6.4, "Retrying a PUT"): the retry
        completes the first attempt's write if that reached a node, within a
        minute. A NoQuorumError's ``maybe_applied`` says whether the put may
        have been applied (True) or was written nowhere (False); None: the
        node did not say.
        """
        return (await self.put_with_result(key, value, timeout=timeout, request_id=request_id)).version

    async def put_with_result(self, key: str, value: Any, *, timeout: float | None = None,
                              request_id: str | None = None) -> PutResult:
        """Like :meth:`put`, but returns ``(version, created)``: whether the key was absent before.

        A put retried after a failover may have been applied by the first
        attempt; the retry then reports ``created=False``.
        """
        return await self._put(key, prepared_put(value, request_id), timeout=timeout)

    async def _put(self, key: str, prepared: tuple[Raw, str, bool | None], *, timeout: float | None) -> PutResult:
        """The PUT of a value :func:`prepared_put` made ready (the blocking Client makes it in
        its caller's thread: checking a large value there holds no other thread's call)."""
        raw, request_id, retry = prepared
        reply = await self._call(Put, check_key(key, self.limits), raw, request_id, retry, timeout=timeout)
        return PutResult(reply.version, reply.created)

    async def delete(self, key: str, *, timeout: float | None = None) -> Version:
        """Delete ``key``; returns the version of the tombstone.

        Raises KeyNotFoundError (a KeyError) if there is nothing to delete (a
        DELETE is sent again only where its first try wrote nothing, unless
        ``RetryPolicy.retry_on`` says otherwise: then it may mean the first try
        deleted it); ConflictError
        if it raced with a write of the key and may or may not have taken
        effect; NoQuorumError as for :meth:`put`.
        """
        reply = await self._call(Delete, check_key(key, self.limits), timeout=timeout)
        return reply.version

    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The health report of the node that answers."""
        reply = await self._call(Health, timeout=timeout)
        return reply.health

    async def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip a PING; returns the seconds it took."""
        started = time.perf_counter()
        await self._call(Ping, timeout=timeout)
        return time.perf_counter() - started

    async def close(self) -> None:
        """Close every connection; calls still waiting fail with KvwireConnectionError.

        Connections are aborted, not closed gracefully: once this returns the client holds
        no socket, even to a hung node that would never read what is buffered for it.

        From another event loop than the one the client was used on, the closing is done on
        that loop: while it runs (in another thread), waited for up to the client's timeout
        (if that loop's ``asyncio.run`` ends meanwhile, its sockets are closed as that run
        shuts down);
        while it runs nothing (idle between two ``run_until_complete``), at its next turn, and
        this returns at once (its sockets are open until then); once it is closed, its sockets
        are closed at once (Endpoint.abandon)."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is None:
            return  # never used
        if loop.is_closed():
            self._endpoints.abandon()
            return
        if loop is asyncio.get_running_loop():
            await self._close_connections()
            return
        # The abort as a callback of its own, first: it runs at that loop's next turn even
        # if its run ends first, as asyncio.run's shutdown still turns it, where the task
        # waiting for the sockets is cancelled with every other task left.
        loop.call_soon_threadsafe(self._abort_connections)
        closing = asyncio.run_coroutine_threadsafe(self._close_connections(), loop)
        if not loop.is_running():
            # Idle: the close runs at its next turn, and waiting here, for the client's
            # timeout, would change nothing (a client probe waited 5 s). Not run from here:
            # a loop is its owner's to run, and a thread running it raced its owner's next
            # run_until_complete (a review).
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(closing), self.timeout)
        except TimeoutError:
            pass  # that loop stopped meanwhile: its connections close with it
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller was cancelled
            # That loop's asyncio.run ended and cancelled the wait for the sockets with its
            # other tasks, after the abort above: this raised CancelledError, as if our
            # caller had been cancelled, and the sockets stayed open (a client probe's finding).

    async def _close_connections(self) -> None:
        self._release_backing_off()
        await self._endpoints.close()

    def _abort_connections(self) -> None:
        self._release_backing_off()
        self._endpoints.abort()

    def _release_backing_off(self) -> None:
        for waiting in self._backing_off:
            _resolve(waiting)

    def _bind_to_loop(self) -> None:
        """Tie the client to the running event loop on its first call. Its connections belong
        to that loop: a call from another loop would write to them from the wrong thread (and
        the write may be applied while the call fails), so it is refused before anything is
        sent. Once that loop is closed (``asyncio.run`` called again, a test's own loop), the
        client starts afresh on the new one, its old connections dropped."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._loop is not None:
            if not self._loop.is_closed():
                raise RuntimeError("this AsyncClient is in use on another event loop, which its connections belong "
                                   "to; make one AsyncClient per event loop (nothing was sent)")
            self._endpoints.abandon()
            self._endpoints = self._new_endpoints()
            self._backing_off = set()
            self._calls_in_progress = 0  # those of the closed loop will never return
        self._loop = loop

    # --- sending, with timeout and failover --------------------------------------------

    async def _call(self, message_type: type, *fields: Any, timeout: float | None) -> Any:
        timeout = self.timeout if timeout is None else _check_timeout("timeout", timeout)
        if self.closed:
            raise client_closed_error()
        self._bind_to_loop()
        progress = _CallProgress()
        deadline = asyncio.timeout(timeout)
        self._calls_in_progress += 1
        counted_in = self._endpoints  # a move to another loop starts a new count (_bind_to_loop)
        try:
            async with deadline:
                return await self._send_with_failover(message_type, fields, progress)
        except TimeoutError:
            # Errors that are TimeoutErrors themselves (an attempt's, or a
            # node's TIMEOUT reply) pass through; only our deadline is translated.
            if not deadline.expired():
                raise
            error = KvwireTimeoutError(
                f"{message_type.__name__.upper()} got no reply within {timeout:g} s"
                f" (endpoints: {', '.join(self.endpoints)})"
                + (f"; before that: {progress.failures[-1]}" if progress.failures else ""),
                maybe_applied=_maybe_applied(message_type, progress),
            )
            if progress.waiting_on is not None:
                # With a call timeout shorter than the attempt timeout, this is
                # the only sign of a hung node: without it every call would
                # wait on the same node and none would ever fail over.
                self._endpoints.failed(progress.waiting_on, asyncio.get_running_loop().time(), error)
            raise error from None
        finally:
            if counted_in is self._endpoints:
                self._calls_in_progress -= 1

    async def _send_with_failover(self, message_type: type, fields: tuple[Any, ...], progress: _CallProgress) -> Any:
        policy = self.retry
        endpoints = self._endpoints
        loop = asyncio.get_running_loop()
        tried: list[Endpoint] = []
        failures = progress.failures
        # A DELETE carries no request id: sent again, it could apply twice.
        repeatable = message_type is not Delete
        for attempt in range(policy.attempts):
            if attempt:
                await self._back_off(policy.delay_before(attempt))
                if self.closed:  # close() came while this call waited to try again
                    raise KvwireConnectionError("the client was closed during this call") from failures[-1]
            endpoint = endpoints.choose(tried, loop.time())
            tried.append(endpoint)
            if attempt and message_type is Put:
                fields = (*fields[:3], True)  # sent before: the retry flag (docs/protocol.md 6.4)
            progress.waiting_on = endpoint
            try:
                reply = await self._send_to(endpoint, message_type, fields, progress)
            except ProtocolError as exc:
                # Only encoding raises one here: msgpack refused the caller's
                # input, which check_value should already have caught.
                error_type = TypeError if isinstance(exc.__cause__, TypeError) else ValueError
                raise error_type(f"cannot send {message_type.__name__.upper()}: {exc}") from exc
            except Exception as exc:
                if not policy.retries(exc, repeatable=repeatable):
                    error = with_other_attempts(exc, failures)
                    if error is exc:
                        raise
                    raise error from exc
                if self.closed:
                    raise  # close() failed the request; don't reconnect elsewhere
                progress.waiting_on = None
                failures.append(exc)
                if not isinstance(exc, NoQuorumError):
                    # NO_QUORUM is the cluster's state, not this node's: it stays healthy.
                    endpoints.failed(endpoint, loop.time(), exc)
                continue
            endpoints.succeeded(endpoint)
            return reply
        raise _verdict(failures)

    async def _back_off(self, seconds: float) -> None:
        """Wait ``seconds`` before the next attempt, or until close()."""
        loop = asyncio.get_running_loop()
        waiting = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiting)
        self._backing_off.add(waiting)
        try:
            await waiting
        finally:
            timer.cancel()
            self._backing_off.discard(waiting)

    async def _send_to(self, endpoint: Endpoint, message_type: type, fields: tuple[Any, ...],
                       progress: _CallProgress) -> Any:
        try:
            connection = await endpoint.connection()
        except (KvwireConnectionError, ServerError) as exc:
            if message_type not in _WRITES:
                raise
            # Not connected, no answer to HELLO, or its HELLO refused (a node of another
            # cluster, a token it does not know): the write was never sent.
            raise type(exc)(exc.message, maybe_applied=False) from exc
        progress.sent = True
        endpoint.watch(connection)
        try:
            return await connection.request(message_type, *fields)
        except TooLargeError as exc:
            if message_type not in _WRITES or exc.maybe_applied is not None:
                raise
            # Refused before it was sent (over the node's frame limit), or by the node
            # before it wrote anything (over its value limit): nothing was written.
            raise TooLargeError(exc.message, maybe_applied=False) from None
        except KvwireConnectionError:
            if endpoint.gave_up_on(connection):
                # A write it was sent may still be applied, once the node resumes.
                raise KvwireTimeoutError(
                    f"{endpoint.address}: no reply within {self.retry.attempt_timeout:g} s; the node looks hung",
                    maybe_applied=True if message_type in _WRITES else None,
                ) from None
            raise


def _maybe_applied(message_type: type, progress: _CallProgress) -> bool | None:
    """What a write's timeout says of it: False if no node was sent it (every connection
    still opening, or refused), else True, as a node sent it may apply it yet (a hung one
    resumes); None for a read."""
    if message_type not in _WRITES:
        return None
    return progress.sent


class _CallProgress:
    """What one call has been through, for the error its deadline raises."""

    __slots__ = ("failures", "waiting_on", "sent")

    def __init__(self) -> None:
        self.failures: list[BaseException] = []
        # Whether a connection was open to send the request on, in any attempt.
        self.sent = False
        # The node the call is waiting on right now; None between attempts.
        self.waiting_on: Endpoint | None = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_WRITES = (Put, Delete)


def _verdict(failures: list[BaseException]) -> BaseException:
    """The error a call whose every attempt failed (``failures``, in order) ends with.

    A node's answer (NO_QUORUM, UNAVAILABLE) is the cluster's word, and says
    more than the nodes that could not be reached: the last one is the
    verdict. When no node answered, one error says so, naming each failure,
    its ``maybe_applied`` False only if no attempt may have been applied."""
    answers = [error for error in failures if isinstance(error, ServerError)]  # ERROR replies
    if answers:
        last = answers[-1]
        named = "an earlier attempt of this call" if last is failures[-1] else "another attempt of this call"
        return with_other_attempts(last, [error for error in failures if error is not last], named=named)
    last = failures[-1]
    if len(failures) == 1:
        return last
    said = [getattr(error, "maybe_applied", None) for error in failures]
    maybe_applied = True if True in said else None if None in said else False
    summary = "; ".join(dict.fromkeys(str(exc) for exc in failures))
    error = type(last)(f"no node answered in {len(failures)} attempts: {summary}", maybe_applied=maybe_applied)
    error.__cause__ = last
    return error


def with_other_attempts(last: BaseException, others: list[BaseException], *,
                        named: str = "an earlier attempt of this call") -> BaseException:
    """``last``, unless it says nothing was written while another attempt (``named``) may have been.

    A write's last attempt can only speak for itself: after a NO_QUORUM that
    may have applied, or a connection lost after the request was sent, "nothing
    was written" would be a promise the call cannot keep.
    """
    if not isinstance(last, KvwireError) or last.maybe_applied is not False:
        return last
    unsure = [getattr(error, "maybe_applied", None) for error in others if getattr(error, "maybe_applied", None) is not False]
    if not unsure:
        return last
    error = type(last)(f"{last.message}; {named} may have been applied",
                       maybe_applied=True if True in unsure else None)
    error.__cause__ = last
    return error


def _check_timeout(name: str, value: Any) -> float:
    require_number(name, value)
    if not fits_a_float(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


