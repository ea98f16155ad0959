"""``AsyncClient``: the one implementation behind both Python clients.

It keeps one lazily opened connection per endpoint and sends every request
to a preferred endpoint, moving on to the next one when a connection fails
(``RetryPolicy``). Arguments are checked before anything is sent, so a
mistake raises a plain ``TypeError`` or ``ValueError`` naming it instead of a
protocol error from the node.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from kvwire.protocol import (
    DEFAULT_LIMITS,
    Consistency,
    Delete,
    Get,
    Health,
    KvwireConnectionError,
    KvwireTimeoutError,
    Limits,
    Ping,
    ProtocolError,
    Put,
    Version,
)

from .connection import ClientConnection
from .arguments import check_key, check_value, format_endpoint, parse_endpoints

DEFAULT_ENDPOINT = "127.0.0.1:7379"
# Connecting includes the HELLO round trip, a millisecond on a LAN; a node that
# takes a second is hung (SIGSTOP keeps accepting connections), and giving up
# on it leaves the call's time to try the next endpoint.
DEFAULT_CONNECT_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call moves on to another endpoint after a failure.

    ``attempts`` counts every try of one call, the first included; each try
    goes to the next endpoint in turn. Before try ``n`` (from 1) the call waits
    ``base_delay * 2 ** (n - 1)``, capped at ``max_delay``, so a call against a
    cluster that is briefly all down doesn't spin. The call's timeout bounds
    the whole sequence.
    """

    attempts: int = 3
    base_delay: float = 0.05
    max_delay: float = 1.0
    # Only failures that say nothing about the request itself are retried;
    # a refused request (bad key, not found) would be refused anywhere.
    retry_on: tuple[type[BaseException], ...] = (KvwireConnectionError,)

    def __post_init__(self) -> None:
        if type(self.attempts) is not int or self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be an integer >= 1, got {self.attempts!r}")
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if not _is_real(value) or not 0 <= value < math.inf:
                raise ValueError(f"RetryPolicy.{name} must be a finite number >= 0, got {value!r}")
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"RetryPolicy.max_delay ({self.max_delay!r}) must be >= base_delay ({self.base_delay!r})"
            )
        if not self.retry_on or not all(
            isinstance(cls, type) and issubclass(cls, BaseException) for cls in self.retry_on
        ):
            raise ValueError(f"RetryPolicy.retry_on must be a non-empty tuple of exception types, got {self.retry_on!r}")

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (the first try is 0)."""
        if attempt <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1))


class VersionedValue(NamedTuple):
    """What :meth:`AsyncClient.get_with_version` returns; unpacks as ``value, version``."""

    value: Any
    version: Version


class _Endpoint:
    """One node address and its connection, opened on first use and after failures."""

    def __init__(self, host: str, port: int, client: AsyncClient) -> None:
        self.host = host
        self.port = port
        self.address = format_endpoint(host, port)
        self._client = client
        self._connection: ClientConnection | None = None
        self._connecting: asyncio.Task[ClientConnection] | None = None

    async def connection(self) -> ClientConnection:
        connection = self._connection
        if connection is not None and connection.is_open:
            return connection
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.ensure_future(self._open())
            task.add_done_callback(_retrieve_exception)
        try:
            # Shielded: many callers share one connect, and one caller timing
            # out must not cancel it for the others.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # close() cancelled the connect, not anyone cancelling us.
                raise KvwireConnectionError(f"{self.address}: the client was closed while connecting") from None
            raise

    async def _open(self) -> ClientConnection:
        client = self._client
        try:
            connection = await ClientConnection.open(
                self.host,
                self.port,
                connect_timeout=client.connect_timeout,
                limits=client.limits,
                cluster=client.cluster,
            )
        finally:
            self._connecting = None
        if client.closed:  # closed while we were connecting
            connection.close()
            raise _closed_error()
        self._connection = connection
        return connection

    async def close(self) -> None:
        task = self._connecting
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            await connection.wait_closed()


class AsyncClient:
    """An asyncio client for a kvwire cluster.

    ``endpoints`` is a list of ``"host:port"`` strings or one comma-separated
    string; IPv6 hosts go in brackets (``"[::1]:7379"``). ``timeout`` (seconds)
    bounds each call, including connecting and failing over, and raises
    ``KvwireTimeoutError`` when it runs out; every method accepts its own
    ``timeout=`` too. ``connect_timeout`` bounds each connection attempt,
    HELLO included (default: 1 s, or ``timeout`` if smaller). ``cluster``
    makes every node prove it belongs to that cluster id; ``retry`` says how
    a call moves on to the next endpoint after a connection failure.

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
    ) -> None:
        self.timeout = _check_timeout("timeout", timeout)
        self.connect_timeout = (
            min(self.timeout, DEFAULT_CONNECT_TIMEOUT)
            if connect_timeout is None
            else _check_timeout("connect_timeout", connect_timeout)
        )
        if cluster is not None and (type(cluster) is not str or not cluster):
            raise ValueError(f"cluster must be a non-empty string or None, got {cluster!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a kvwire.protocol.Limits, got {type(limits).__name__}")
        self.cluster = cluster
        self.retry = retry if retry is not None else RetryPolicy()
        self.limits = limits
        self._endpoints = [_Endpoint(host, port, self) for host, port in parse_endpoints(endpoints)]
        self.endpoints: tuple[str, ...] = tuple(endpoint.address for endpoint in self._endpoints)
        self._preferred = 0  # index of the endpoint new calls go to first
        self._closed = False

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
        reply = await self._call(Get, check_key(key, self.limits), _check_consistency(consistency), timeout=timeout)
        return reply.value

    async def get_with_version(
        self, key: str, *, consistency: str | Consistency | None = None, timeout: float | None = None
    ) -> VersionedValue:
        """Like :meth:`get`, but returns ``(value, version)``."""
        reply = await self._call(Get, check_key(key, self.limits), _check_consistency(consistency), timeout=timeout)
        return VersionedValue(reply.value, reply.version)

    async def put(self, key: str, value: Any, *, timeout: float | None = None) -> Version:
        """Store ``value`` under ``key``; returns the new version.

        ``value`` may be None, bool, int, float, str, bytes, or lists and dicts
        (with str or bytes keys) of those; tuples come back as lists. If the
        connection fails after the request was sent, the put is retried on
        another endpoint and may then be applied twice (same value, two versions).
        """
        check_value(value)
        reply = await self._call(Put, check_key(key, self.limits), value, timeout=timeout)
        return reply.version

    async def delete(self, key: str, *, timeout: float | None = None) -> Version:
        """Delete ``key``; returns the version of the tombstone.

        Raises KeyNotFoundError (a KeyError) if there is nothing to delete.
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
        """Close every connection; calls still waiting fail with KvwireConnectionError."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(endpoint.close() for endpoint in self._endpoints))

    # --- sending, with timeout and failover --------------------------------------------

    async def _call(self, message_type: type, *fields: Any, timeout: float | None) -> Any:
        timeout = self.timeout if timeout is None else _check_timeout("timeout", timeout)
        if self.closed:
            raise _closed_error()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._send_with_failover(message_type, fields)
        except TimeoutError:
            # Errors that are TimeoutErrors themselves (ours, or a node's
            # TIMEOUT reply) pass through; only our own deadline is translated.
            if not deadline.expired():
                raise
            raise KvwireTimeoutError(
                f"{message_type.__name__.upper()} got no reply within {timeout:g} s"
                f" (endpoints: {', '.join(self.endpoints)})"
            ) from None

    async def _send_with_failover(self, message_type: type, fields: tuple[Any, ...]) -> Any:
        policy = self.retry
        failures: list[BaseException] = []
        for attempt in range(policy.attempts):
            if attempt:
                await asyncio.sleep(policy.delay_before(attempt))
            index = self._preferred
            endpoint = self._endpoints[index]
            try:
                connection = await endpoint.connection()
                return await connection.request(message_type, *fields)
            except ProtocolError as exc:
                # Only encoding raises one here: msgpack refused the caller's
                # input, which check_value should already have caught.
                error_type = TypeError if isinstance(exc.__cause__, TypeError) else ValueError
                raise error_type(f"cannot send {message_type.__name__.upper()}: {exc}") from exc
            except policy.retry_on as exc:
                if self.closed:
                    raise  # close() failed the request; don't reconnect elsewhere
                failures.append(exc)
                # Concurrent calls fail together; only the first moves the preference on.
                if self._preferred == index:
                    self._preferred = (index + 1) % len(self._endpoints)
        if all(isinstance(exc, KvwireConnectionError) for exc in failures) and len(failures) > 1:
            summary = "; ".join(dict.fromkeys(str(exc) for exc in failures))
            raise KvwireConnectionError(f"no node reachable after {len(failures)} attempts: {summary}") from failures[-1]
        raise failures[-1]


def _check_timeout(name: str, value: Any) -> float:
    if not _is_real(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_consistency(consistency: Any) -> Consistency | None:
    if consistency is None:
        return None
    try:
        return Consistency(consistency)
    except ValueError:
        allowed = " or ".join(repr(level.value) for level in Consistency)
        raise ValueError(f"consistency must be {allowed}, got {consistency!r}") from None


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _closed_error() -> RuntimeError:
    return RuntimeError("the kvwire client is closed")


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # Every caller may have timed out before a failed connect finished;
    # reading the exception keeps asyncio from logging it as unhandled.
    if not task.cancelled():
        task.exception()
