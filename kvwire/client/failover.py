"""Which node gets each request, and noticing nodes that stopped answering.

A client sees a node fail in two ways. A dead node (``kill -9``, a crash)
resets or refuses connections at once, which the connection reports as
``KvwireConnectionError``. A hung node (SIGSTOP, a stalled machine) is worse:
its kernel still accepts connections and acknowledges bytes, but no reply ever
comes. Only a clock catches that, so each endpoint times the silence of its
connection while requests wait on it: after half of ``attempt_timeout`` it
sends a PING, and after the whole of it it gives up on the connection. A node
answers PING from its event loop at once, even while a quorum write waits for
peers, so a slow request on a live node is never taken for a hung node; the
call's own ``timeout`` bounds those.

A node that failed is avoided for ``RetryPolicy.cooldown`` seconds while
others are healthy, so calls after a failure don't each pay for discovering it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from kvwire.protocol import KvwireConnectionError, KvwireError, KvwireTimeoutError, NoQuorumError, Ping
from kvwire.protocol.errors import UnauthenticatedError

from ..backoff import backoff_delay
from ..protocol.address import format_endpoint
from .connection import CLOSED_BY_CLIENT, ClientConnection

log = logging.getLogger("kvwire.client")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call moves on to another node after a failure.

    ``attempts`` counts every try of one call, the first included; each retry
    goes to a node this call has not tried yet when there is one, healthy
    nodes first. Before try ``n`` (from 1) the call waits
    ``base_delay * 2 ** (n - 1)``, capped at ``max_delay``, so a call against a
    cluster that is briefly all down doesn't spin. The call's ``timeout``
    bounds the whole sequence.

    ``attempt_timeout`` is how long a node may stay silent while a request
    waits on it before it is presumed hung and the request is retried
    elsewhere (a PING sent halfway tells a slow node from a hung one); keep
    it well under the call's timeout, or a call has no time left to fail
    over (a call that times out still marks the node it waited on as
    failed, so the next call goes elsewhere). ``cooldown`` is how long a node
    that failed is passed over while other nodes are healthy.

    Retried are the failures that say nothing about the request itself, the
    errors whose class has ``try_another_node`` set (see
    :mod:`kvwire.protocol.errors`): a lost connection, a silent node, an
    UNAVAILABLE reply (a node shutting down or full). NO_QUORUM is retried
    too when sending the request again cannot apply it twice: a GET, a PUT
    (its request id makes a retry finish the first attempt's write, not make
    a second one), and a DELETE whose NO_QUORUM says nothing was written
    (``maybe_applied`` False). A node gives up on a majority after its own
    ``--write-timeout`` (1 s), and a disk that stalls that long, or a peer
    dying mid-write, should not fail a call that has time left: another node,
    or the same one a moment later, finishes it. ``retry_on``, a tuple of
    exception classes, replaces that rule with its own list when given. A
    refused request (bad key, not found) would be refused anywhere, so it is
    raised at once. So is CONFLICT (a DELETE that raced with a write of its
    key), and NO_QUORUM on a DELETE that may have been applied: only the
    caller can tell whether doing it again is right. So is a DELETE's lost
    connection or silent node once the DELETE was sent: the node may still
    apply it (a hung one resumes and reads it), and a retry elsewhere could
    then be followed by a write that the first attempt, applied late, erases.
    """

    attempts: int = 3
    base_delay: float = 0.05
    max_delay: float = 1.0
    # Nodes answer a PING in well under a millisecond on a LAN; a second of
    # silence while something is owed means the node is stuck, and leaves the
    # default 5 s call timeout room for two more tries.
    attempt_timeout: float = 1.0
    cooldown: float = 1.0
    # None: the error tree decides (try_another_node); kept for callers who need their own list.
    retry_on: tuple[type[BaseException], ...] | None = None

    def __post_init__(self) -> None:
        if type(self.attempts) is not int or self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be an integer >= 1, got {self.attempts!r}")
        for name in ("base_delay", "max_delay", "cooldown", "attempt_timeout"):
            require_number(f"RetryPolicy.{name}", getattr(self, name))
        for name in ("base_delay", "max_delay", "cooldown"):
            value = getattr(self, name)
            if not fits_a_float(value) or not 0 <= value < math.inf:
                raise ValueError(f"RetryPolicy.{name} must be a finite number >= 0, got {value!r}")
        if not fits_a_float(self.attempt_timeout) or not 0 < self.attempt_timeout < math.inf:
            raise ValueError(f"RetryPolicy.attempt_timeout must be a positive number of seconds, got {self.attempt_timeout!r}")
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"RetryPolicy.max_delay ({self.max_delay!r}) must be >= base_delay ({self.base_delay!r})"
            )
        if self.retry_on is not None and not _is_exception_tuple(self.retry_on):
            raise ValueError(f"RetryPolicy.retry_on must be None or a non-empty tuple of exception types, got {self.retry_on!r}")

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (the first try is 0); no jitter."""
        return backoff_delay(attempt, base=self.base_delay, cap=self.max_delay)

    def retries(self, error: BaseException, *, repeatable: bool = False) -> bool:
        """Whether a call that failed with ``error`` moves on to another node.

        ``repeatable``: the request can be sent again without being applied
        twice (a GET, HEALTH, PING, or a PUT with its request id), so a
        NO_QUORUM, a lost connection or a silent node is retried too; without
        it (a DELETE), only a failure that says nothing was written is: a
        connection that could not be opened, an UNAVAILABLE or NO_QUORUM
        reply with ``maybe_applied`` False.
        """
        if self.retry_on is not None:
            return isinstance(error, self.retry_on)
        if not isinstance(error, KvwireError):
            return False
        if error.try_another_node:
            # A lost connection or a silent node may yet apply what it was sent (a hung
            # node resumes): sent again elsewhere, a DELETE could take effect twice, the
            # second time over a write acknowledged after the first.
            return repeatable or error.maybe_applied is False
        return isinstance(error, NoQuorumError) and (repeatable or error.maybe_applied is False)


# Opens a connection to (host, port), HELLO included; the client binds its connection options into one.
Connect = Callable[[str, int], Awaitable[ClientConnection]]


class Endpoint:
    """One node: its connection (opened on first use and after failures), its health, and a watch on its silence.

    It knows nothing of the client that owns it: ``connect`` opens its
    connections and ``retry`` times its silence watch and cooldown.
    """

    def __init__(self, host: str, port: int, *, connect: Connect, retry: RetryPolicy) -> None:
        self.host = host
        self.port = port
        self.address = format_endpoint(host, port)
        self._connect = connect
        self._retry = retry
        self._closed = False
        self._connection: ClientConnection | None = None
        self._connecting: asyncio.Task[ClientConnection] | None = None
        # The connection abort() closed, which close() waits on until it has let go of its socket.
        self._aborted: ClientConnection | None = None
        # Loop time until which this node is passed over; 0 while healthy.
        self.unhealthy_until = 0.0
        # The silence watch: the connection timed, the timer, the last read from it, the probe.
        self._watched: ClientConnection | None = None
        self._watch_timer: asyncio.TimerHandle | None = None
        self._last_heard = 0.0
        self._probe: asyncio.Future[Any] | None = None
        # The last connection given up as hung, so its callers can say why they failed.
        self._abandoned: ClientConnection | None = None

    def __repr__(self) -> str:
        return f"<Endpoint {self.address}>"

    # --- health -------------------------------------------------------------------------

    def is_healthy(self, now: float) -> bool:
        return now >= self.unhealthy_until

    def mark_failed(self, now: float, error: BaseException) -> None:
        if self.is_healthy(now):  # log the transition once, not every failure
            # A refused token is no fault of the node, and anyone who reaches a REST
            # bridge picks the token it sends: its bridge, making a client for each new
            # token, logged this for every node and every made-up token, two or three
            # lines a request (a security probe's finding). The call's error says it.
            level = logging.DEBUG if isinstance(error, UnauthenticatedError) else logging.INFO
            log.log(level, "%s failed (%s); trying other nodes first for %g s", self.address, error,
                    self._retry.cooldown)
        self.unhealthy_until = now + self._retry.cooldown

    def mark_working(self) -> None:
        self.unhealthy_until = 0.0

    def gave_up_on(self, connection: ClientConnection) -> bool:
        """Whether ``connection`` was closed because the node stayed silent too long."""
        return connection is self._abandoned

    # --- the connection -----------------------------------------------------------------

    async def connection(self) -> ClientConnection:
        if self._closed:
            raise client_closed_error()
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
        try:
            connection = await self._connect(self.host, self.port)
        finally:
            self._connecting = None
        if self._closed:  # closed while we were connecting
            connection.abort()
            raise client_closed_error()
        connection.on_receive = self._heard
        self._connection = connection
        return connection

    async def close(self) -> None:
        self.abort()
        if self._connecting is not None:
            await asyncio.wait([self._connecting])
        if self._aborted is not None:
            await self._aborted.wait_closed()

    def abort(self) -> None:
        """``close`` up to its waits, on the connection's own loop: the socket is let go at
        the loop's next turn."""
        self._closed = True
        self._stop_watch()
        if self._connecting is not None:
            self._connecting.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            # abort, not close: its requests fail either way, so nothing buffered for
            # them is owed, and a graceful close waits for a hung node to read the
            # buffer (or, over TLS, to answer close_notify) before letting go.
            connection.abort(CLOSED_BY_CLIENT)
            self._aborted = connection

    def abandon(self) -> None:
        """``close``, once the event loop of the connection is closed: nothing to wait for."""
        self._closed = True
        self._watch_timer = None  # it was a timer of that loop, gone with it
        self._connecting = None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abandon()

    # --- the silence watch --------------------------------------------------------------

    def watch(self, connection: ClientConnection) -> None:
        """Time ``connection``'s silence from now on, unless it is already being timed.

        Called before each request; the watch ends by itself once nothing is owed.
        """
        if self._watch_timer is not None and self._watched is connection:
            if not connection.in_flight:
                # Owed nothing until this request: its silence starts now, not at the last
                # reply (the watch of an earlier request may still be armed), or a node
                # would be given up on after as little as half the attempt timeout.
                self._last_heard = asyncio.get_running_loop().time()
            return
        self._stop_watch()
        loop = asyncio.get_running_loop()
        self._watched = connection
        self._last_heard = loop.time()
        self._watch_timer = loop.call_at(self._last_heard + self._retry.attempt_timeout / 2, self._check_silence)

    def _heard(self) -> None:
        self._last_heard = asyncio.get_running_loop().time()

    def _stop_watch(self) -> None:
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        self._watch_timer = None
        self._watched = None

    def _check_silence(self) -> None:
        self._watch_timer = None
        connection = self._watched
        if connection is None or connection is not self._connection or not connection.is_open or not connection.in_flight:
            self._watched = None  # replaced, gone, or owed nothing: silence means nothing
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit = self._retry.attempt_timeout
        silent = now - self._last_heard
        if silent >= limit:
            self._give_up(connection, now, silent)
            return
        if silent >= limit / 2:
            self._send_probe(connection)
            wake_at = self._last_heard + limit
        else:
            wake_at = self._last_heard + limit / 2
        self._watch_timer = loop.call_at(wake_at, self._check_silence)

    def _send_probe(self, connection: ClientConnection) -> None:
        if self._probe is not None and not self._probe.done():
            return  # one unanswered PING says enough
        try:
            probe = connection.submit(Ping)
        except KvwireConnectionError:
            return  # the connection just failed; its callers hear of it themselves
        probe.add_done_callback(_retrieve_exception)
        self._probe = probe

    def _give_up(self, connection: ClientConnection, now: float, silent: float) -> None:
        log.info("%s: nothing heard for %.0f ms with requests waiting; closing its connection", self.address, silent * 1000)
        self._watched = None
        self._abandoned = connection
        self._connection = None
        self.mark_failed(now, KvwireTimeoutError(f"no reply for {silent:.1f} s"))
        # Every request waiting on it fails, and is retried elsewhere. abort, not close:
        # a graceful close would keep the socket until the hung node reads (or answers
        # TLS's close_notify), and this endpoint no longer holds it for close() to find.
        connection.abort()


class EndpointSet:
    """The client's nodes, and which one a try should go to.

    Calls go to one preferred node (the last that answered) so that they
    share one pipelined connection; after a failure the next try goes to a
    healthy node this call has not tried yet, in list order from the preferred one.
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.all = tuple(endpoints)
        self._preferred = 0

    def choose(self, tried: Sequence[Endpoint], now: float) -> Endpoint:
        """The endpoint for the next try of a call that has already tried ``tried``."""
        endpoints = self.all
        first = endpoints[self._preferred]
        if not tried and now >= first.unhealthy_until:
            return first  # the common case, kept cheap
        order = endpoints[self._preferred:] + endpoints[: self._preferred]
        candidates = [endpoint for endpoint in order if endpoint not in tried] or order
        for endpoint in candidates:
            if endpoint.is_healthy(now):
                return endpoint
        # All candidates failed lately: the one whose failure is oldest.
        return min(candidates, key=lambda endpoint: endpoint.unhealthy_until)

    def succeeded(self, endpoint: Endpoint) -> None:
        if endpoint.unhealthy_until:
            endpoint.mark_working()
        if self.all[self._preferred] is not endpoint:
            self._preferred = self.all.index(endpoint)

    def failed(self, endpoint: Endpoint, now: float, error: BaseException) -> None:
        endpoint.mark_failed(now, error)

    async def close(self) -> None:
        await asyncio.gather(*(endpoint.close() for endpoint in self.all))

    def abort(self) -> None:
        """``close`` without waiting (Endpoint.abort)."""
        for endpoint in self.all:
            endpoint.abort()

    def abandon(self) -> None:
        """Let go of every connection, their event loop being closed (Endpoint.abandon)."""
        for endpoint in self.all:
            endpoint.abandon()


def require_number(name: str, value: Any) -> None:
    """TypeError naming ``name`` unless ``value`` is an int or a float, not a bool: a
    number of the wrong kind (``timeout="1"``) is a wrong type, not a wrong value."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds (int or float), got {type(value).__name__} {value!r}")


def fits_a_float(value: int | float) -> bool:
    """Whether a float can hold ``value``, a number ``require_number`` passed (10**400
    passed, and raised OverflowError where it was used)."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _is_exception_tuple(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(cls, type) and issubclass(cls, BaseException) for cls in value)
    )


def client_closed_error() -> RuntimeError:
    """What every use of a closed client raises, whichever layer notices."""
    return RuntimeError("the kvwire client is closed")


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    # Every caller may have given up before a failed connect or probe
    # finished; reading the exception keeps asyncio from logging it.
    if not future.cancelled():
        future.exception()
