"""The client of a node's own HTTP bridge: requests handed to the node in this process.

``kvwire serve --http-listen`` (and so ``kvwire up``) runs the HTTP bridge in
the node's own event loop. Through the client library, each REST request
would cross loopback TCP to the very process it came from: packed, written,
read and parsed on the way in, and again on the way out, the kernel running
both ends' sockets. ``InProcessClient`` has the client's methods the bridge
calls, and hands each request to ``Node.handle`` as a connection does, on a
session that said HELLO with the caller's token, so it gets the same grant,
the same errors and the same request metrics. etcd's JSON gateway is in its
member too (README, Performance).

It fails over as the bridge's client did, through the client library to the
peers, within the same call timeout: while this node is not serving (its
listeners bind before storage loads; at shutdown they close before the node
stops), and when the node answers with an error the retry policy sends to
another node (UNAVAILABLE, a NO_QUORUM), or refuses the caller's token (its auth
file may lag the others' in a rollout). A PUT with its caller's request id
carries it into both attempts, marked as a retry on the peers, so a peer
finishes the node's attempt rather than apply it twice (docs/protocol.md
6.4). A PUT without one goes to the node without one, as no connection can
lose it on the way, so no replica keeps a record of it; it goes on to the
peers only where the node says it wrote nothing, since a second attempt
without an id would be a second write (`python -m kvwire.sim --idless-puts`
checks such PUTs). The call's error never says "nothing was written" when
the node's attempt may have been.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from time import perf_counter
from typing import Any, Awaitable, Callable, NamedTuple

from msgspec import Raw

from ..client.aio import AsyncClient, PutResult, VersionedValue, with_other_attempts
from ..client.arguments import check_consistency, check_key, check_value, put_request_id
from ..client.json_values import OFF_LOOP_BYTES
from ..protocol.errors import (
    InternalServerError,
    KvwireConnectionError,
    KvwireError,
    KvwireTimeoutError,
    NoQuorumError,
    UnauthenticatedError,
    error_from_wire,
)
from ..protocol.messages import Consistency, Delete, ErrorReply, Get, Health, Hello, Put, Version
from ..protocol.values import pack_value, python_value
from .core.applied import StaleWriteRefused
from .node import Node, PendingReply, Session
from .tally import RESULT_LABELS

log = logging.getLogger("kvwire.http")

_SESSION_NAME = "this node's HTTP bridge"


class NodeSlot:
    """The node serving in this process: set once it serves, None before and after.
    ``drop_also``: what closes, unread, the connections of this process's other
    listeners (its HTTP bridge's) when the node drops its own after a long stall
    (DropConnections); each says how many it closed."""

    __slots__ = ("node", "drop_also")

    def __init__(self) -> None:
        self.node: Node | None = None
        self.drop_also: list[Callable[[], int]] = []


class InProcessClient:
    """The methods of :class:`~kvwire.client.AsyncClient` the bridge calls, answered
    by the node in ``slot`` (``fallback``, a client of the peers, when it cannot).
    The call timeout, the retry policy and the limits are the fallback's."""

    def __init__(self, slot: NodeSlot, token: str | None, *, fallback: AsyncClient) -> None:
        self._slot = slot
        self._token = token
        self._fallback = fallback
        self.timeout = fallback.timeout
        self._retry = fallback.retry
        self.limits = fallback.limits
        self._session: Session | None = None
        self._session_node: Node | None = None
        self._ids = itertools.count(1)
        self._waiting = 0  # calls waiting on the node

    @property
    def calls_in_progress(self) -> int:
        """Calls not yet returned, on the node or its peers (the bridge closes a
        client it let go only once none is: http_bridge.app.TokenClients)."""
        return self._waiting + self._fallback.calls_in_progress

    async def close(self) -> None:
        await self._fallback.close()

    # --- the operations the bridge calls ---------------------------------------------------

    async def get_with_version(self, key: str, *, consistency: str | Consistency | None = None,
                               timeout: float | None = None) -> VersionedValue:
        request = Get(next(self._ids), check_key(key, self.limits), check_consistency(consistency))
        deadline = self._deadline(timeout)
        reply = await self._ask(request, deadline, repeatable=True)
        if type(reply) is _Declined:
            return await self._fall_back(reply, deadline, lambda left: self._fallback.get_with_version(
                key, consistency=consistency, timeout=left))
        value = reply.value
        if type(value) is Raw:
            # Large ones are read off the node's loop, as the bridge writes their JSON (OFF_LOOP_BYTES).
            value = python_value(value) if len(value) <= OFF_LOOP_BYTES else await asyncio.to_thread(python_value, value)
        return VersionedValue(value, reply.version)

    async def put_with_result(self, key: str, value: Any, *, timeout: float | None = None,
                              request_id: str | None = None) -> PutResult:
        if type(value) is not Raw:
            check_value(value)
        # A Raw is what this node's own bridge, this class's one user, packed from JSON it read
        # and checked (http_bridge/values.py): reading it again here would hold the node's loop
        # (0.2 s for a value of a million maps), which the bridge does its JSON in a thread to avoid.
        given = request_id is not None
        # The value is packed once, here, as a client packs it: the node keeps those bytes.
        raw = value if type(value) is Raw else Raw(pack_value(value))
        # A caller's own id may have been sent before: the node looks for it first (6.4).
        # It is made as AsyncClient makes it (put_request_id), so the fallback below sends
        # the same. Without one, the PUT goes without one: an id lets a write be sent again
        # after a connection lost it, and no connection lies between this bridge and its node.
        request = Put(next(self._ids), check_key(key, self.limits), raw,
                      put_request_id(request_id, raw) if given else None, True if given else None)
        deadline = self._deadline(timeout)
        # Without an id, the peers may take it only where the node says it wrote nothing:
        # sent again after an attempt that may have applied, it could apply twice.
        reply = await self._ask(request, deadline, repeatable=given)
        if type(reply) is _Declined:
            # With the caller's id, marked as a retry: a peer finishes the node's attempt
            # if it got that far, rather than apply the PUT again.
            return await self._fall_back(reply, deadline, lambda left: self._fallback.put_with_result(
                key, value, timeout=left, request_id=request_id))
        return PutResult(reply.version, reply.created)

    async def delete(self, key: str, *, timeout: float | None = None) -> Version:
        deadline = self._deadline(timeout)
        reply = await self._ask(Delete(next(self._ids), check_key(key, self.limits)), deadline, repeatable=False)
        if type(reply) is _Declined:
            return await self._fall_back(reply, deadline, lambda left: self._fallback.delete(key, timeout=left))
        return reply.version

    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        deadline = self._deadline(timeout)
        reply = await self._ask(Health(next(self._ids)), deadline, repeatable=True)
        if type(reply) is _Declined:
            return await self._fall_back(reply, deadline, lambda left: self._fallback.health(timeout=left))
        return reply.health

    # --- handing a request to the node -----------------------------------------------------

    def _deadline(self, timeout: float | None) -> _Deadline:
        """When a call given ``timeout`` (None: the client's) ends, failing over included, as a client's does."""
        seconds = self.timeout if timeout is None else timeout
        return _Deadline(asyncio.get_running_loop().time() + seconds, seconds)

    async def _ask(self, request: Any, deadline: _Deadline, *, repeatable: bool) -> Any:
        """The node's reply to ``request``, or ``_Declined`` when the peers should be
        asked (no node serving, or an error the retry policy moves on from); raises other errors."""
        node = self._slot.node
        if node is None:
            return _Declined(None)
        try:
            session = self._session_for(node)
        except UnauthenticatedError as exc:
            # This node's --auth-file may lag the others' while a token is rolled out:
            # the peers are asked, as the client library asks its other nodes. Every
            # REST call with the new token answered 401 through a node not yet
            # restarted (an operations probe's finding). Refused at the HELLO, the
            # request never reached the node: nothing was written here (said so, a
            # refused write's 401 read "its first attempt, on this node, may have
            # been applied", a REST probe's finding).
            return _Declined(UnauthenticatedError(exc.message, maybe_applied=False))
        started = perf_counter()
        tally = node.metrics.tally_of_request(request)
        try:
            result = node.handle(request, session)
            if type(result) is PendingReply:
                self._waiting += 1
                try:
                    result = await self._wait(result, type(request).__name__.upper(), deadline)
                finally:
                    self._waiting -= 1
        except KvwireError as exc:
            tally.answer(RESULT_LABELS.get(exc.code, "internal"), perf_counter() - started)
            # The call's own deadline ends it, as it ends a client's call. A write read
            # just after a stall past a minute was sent before it, to this bridge, which
            # could not run either: its client is long gone, and sent to the peers, who
            # have forgotten its request id by now, it was applied again over newer
            # writes (a reviewer's finding).
            if (type(exc) is not _CallTimedOut and not isinstance(exc, StaleWriteRefused)
                    and self._retry.retries(exc, repeatable=repeatable)):
                return _Declined(exc)
            raise
        except Exception:
            # As a connection answers it: logged here, INTERNAL to the caller, counted.
            log.exception("internal error handling the HTTP bridge's %s", type(request).__name__.upper())
            tally.answer("internal", perf_counter() - started)
            raise InternalServerError("internal error; see the node's log") from None
        tally.answer_ok(perf_counter() - started)
        return result

    async def _fall_back(self, declined: _Declined, deadline: _Deadline, call: Callable[[float], Awaitable[Any]]) -> Any:
        """``call(seconds left)``: the same request to the peers, within the call's deadline.

        When none of them answers, this node's own error, which says more (NO_QUORUM,
        say, rather than a refused connection); when one answers with an error, that
        error, unless it says nothing was written where the node's attempt may have been.
        A NO_QUORUM from a node that reaches none of its peers is the answer at once:
        this bridge, in its process, would not reach them either, and dialling each
        cost a second (RetryPolicy.attempt_timeout), three in all, for every request
        to a node cut off from its peers. Not where a peer refused the node's handshake
        (another secret, say): a client's connection gets through, and did before (a
        reviewer's finding: every REST PUT to such a node answered 503).
        """
        node = self._slot.node
        if (isinstance(declined.error, NoQuorumError) and node is not None and not node.core.detector.up_peers()
                and not node.peers.any_handshake_refused()):
            raise declined.error
        left = deadline.at - asyncio.get_running_loop().time()
        if left <= 0:
            if declined.error is not None:
                raise declined.error
            raise _CallTimedOut(f"no reply within {deadline.seconds:g} s: this node is not serving yet")
        try:
            return await call(left)
        except (KvwireConnectionError, KvwireTimeoutError) as exc:
            if declined.error is None:
                raise
            raise with_other_attempts(declined.error, [exc], named="its attempt on a peer") from exc
        except KvwireError as exc:
            if declined.error is None:
                raise
            error = with_other_attempts(exc, [declined.error], named="its first attempt, on this node,")
            if error is exc:
                raise
            raise error from exc

    def _session_for(self, node: Node) -> Session:
        """This client's session with ``node``: its HELLO said once, with the token."""
        if self._session_node is not node:
            session = node.new_session(_SESSION_NAME)
            node.handle(Hello(0, token=self._token), session)  # a refused token raises, every call
            self._session, self._session_node = session, node
        return self._session

    async def _wait(self, pending: PendingReply, name: str, deadline: _Deadline) -> Any:
        loop = asyncio.get_running_loop()
        answered = loop.create_future()

        def on_reply(reply: Any) -> None:
            if not answered.done():  # not timed out, nor the caller gone
                answered.set_result(reply)

        pending.on_reply = on_reply
        timer = loop.call_at(deadline.at, _time_out, answered, name, deadline.seconds)
        try:
            reply = await answered
        finally:
            timer.cancel()
        if type(reply) is ErrorReply:
            raise error_from_wire(reply.code, reply.message, reply.maybe_applied)
        if isinstance(reply, KvwireError):
            raise reply.with_traceback(None)  # the core may answer with one error many times (Node.handle)
        if isinstance(reply, BaseException):
            log.error("internal error answering the HTTP bridge's %s", name, exc_info=reply)
            raise InternalServerError("internal error; see the node's log")
        return reply


class _Deadline(NamedTuple):
    """When a call ends (the loop's clock), and the timeout it was given, for its error."""

    at: float
    seconds: float


class _Declined(NamedTuple):
    """This node did not answer a request: the peers are asked. ``error``: what the node said, if it ran."""

    error: KvwireError | None


class _CallTimedOut(KvwireTimeoutError):
    """The call's deadline passed with the node's answer still to come."""


def _time_out(answered: asyncio.Future, name: str, timeout: float) -> None:
    if not answered.done():
        answered.set_exception(_CallTimedOut(f"{name} got no reply within {timeout:g} s"))
