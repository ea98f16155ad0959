"""One client or peer connection: bytes in, replies out, nothing more.

``data_received`` feeds the sans-I/O codec, handles every complete request,
and writes all the replies it could produce at once in a single write; replies
that wait on storage are gathered and written together on the next loop turn.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from time import perf_counter

from ..protocol.codec import encode
from ..protocol.connection import CLOSED, NEED_DATA, Connection, Side
from ..protocol.errors import ErrorCode, KvwireError, ProtocolError
from ..protocol.messages import Consistency, ErrorReply, Get
from .flow import FlowControl
from .node import Node, Session
from .tally import LATENCY_BOUNDS, OpTally

log = logging.getLogger("kvwire.connection")

# ErrorCode -> the metrics' result label.
_RESULTS = {code: code.name.lower() for code in ErrorCode}
_ONE = Consistency.ONE


class NodeProtocol(asyncio.Protocol):
    def __init__(self, node: Node, registry: set[NodeProtocol]) -> None:
        self._loop = asyncio.get_running_loop()
        self._node = node
        self._registry = registry
        self._codec = Connection(Side.NODE, node.config.limits)
        self._transport: asyncio.Transport | None = None
        self._flow: FlowControl | None = None
        self._session: Session | None = None
        self._later: list[bytes] = []
        self._flush_scheduled = False
        self._closed = False
        self._eof = False
        self.pending: set[asyncio.Future] = set()

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        peername = transport.get_extra_info("peername")
        self._session = Session(peer=f"{peername[0]}:{peername[1]}" if peername else "?")
        self._flow = FlowControl(transport, self._node.config.max_inflight_per_connection)
        if len(self._registry) >= self._node.config.max_connections:
            log.warning("refusing %s: %d connections open, the limit", self._session.peer, len(self._registry))
            self._node.metrics.connections_refused += 1
            transport.write(encode(ErrorReply(None, ErrorCode.UNAVAILABLE, "too many connections; try another node or later")))
            self._close()
            return
        self._registry.add(self)
        self._node.connections = len(self._registry)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._codec.receive_data(data)
        replies = self._handle_buffered()
        if replies:
            self._transport.write(replies)

    def eof_received(self) -> bool | None:
        self._eof = True
        self._codec.receive_data(b"")
        replies = self._handle_buffered()
        if replies:
            self._transport.write(replies)
        # Returning True keeps our side open until the replies to requests
        # still waiting on storage have been written.
        return self._flow.inflight > 0 and not self._closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._registry.discard(self)
        self._node.connections = len(self._registry)

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    # --- requests ----------------------------------------------------------------------

    def _handle_buffered(self) -> bytes:
        """Handle every complete request in the buffer; the replies ready now, joined."""
        replies: list[bytes] = []
        node, codec, session = self._node, self._codec, self._session
        metrics = node.metrics
        get_one, get_quorum = metrics.get_one, metrics.get_quorum
        # Latency counts from the bytes' arrival: every request in them arrived now.
        clock = perf_counter
        started = clock()
        while not self._closed:
            try:
                request = codec.next_event()
            except ProtocolError as exc:
                # A frame that could not be read as a request has no op.
                metrics.tally("unknown").answer(_RESULTS.get(exc.code, "internal"), perf_counter() - started)
                replies.append(encode(ErrorReply(exc.request_id, exc.code, exc.message)))
                if exc.fatal:
                    log.info("closing %s: %s", session.peer, exc.message)
                    self._transport.write(b"".join(replies))
                    self._close()
                    return b""
                continue
            if request is NEED_DATA:
                break
            if request is CLOSED:
                if self._flow.inflight == 0:
                    self._close()
                break
            kind = type(request)
            if kind is Get:
                tally = get_one if request.consistency is _ONE else get_quorum
            else:
                tally = metrics.tally_of_type(kind)
            try:
                result = node.handle(request, session)
            except KvwireError as exc:
                tally.answer(_RESULTS.get(exc.code, "internal"), perf_counter() - started)
                replies.append(encode(ErrorReply(request.id, exc.code, exc.message, exc.maybe_applied)))
                continue
            except Exception:
                log.exception("internal error handling %s from %s", type(request).__name__, session.peer)
                tally.answer("internal", perf_counter() - started)
                replies.append(encode(ErrorReply(request.id, ErrorCode.INTERNAL, "internal error; see the node's log")))
                continue
            if isinstance(result, asyncio.Future):
                self._flow.request_started()
                self.pending.add(result)
                result.add_done_callback(
                    lambda done, request_id=request.id, tally=tally, started=started:
                    self._finish(request_id, done, tally, started)
                )
            else:
                # OpTally.answer_ok, inlined: this runs for every request answered
                # at once, and the call alone was a tenth of the metrics' cost
                # (callgrind, README "What the metrics cost").
                seconds = clock() - started
                tally.ok += 1
                tally.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
                tally.total += seconds
                replies.append(encode(result))
        return b"".join(replies)

    def _finish(self, request_id: int, done: asyncio.Future, tally: OpTally, started: float) -> None:
        self.pending.discard(done)
        self._flow.request_finished()
        if done.cancelled():
            reply = ErrorReply(request_id, ErrorCode.UNAVAILABLE, "request cancelled: node is shutting down")
        elif (exc := done.exception()) is None:
            reply = done.result()
        elif isinstance(exc, KvwireError):
            reply = ErrorReply(request_id, exc.code, exc.message, exc.maybe_applied)
        else:
            log.error("internal error answering request %d from %s", request_id, self._session.peer, exc_info=exc)
            reply = ErrorReply(request_id, ErrorCode.INTERNAL, "internal error; see the node's log")
        if type(reply) is ErrorReply:
            tally.answer(_RESULTS.get(reply.code, "internal"), perf_counter() - started)
        else:
            tally.answer_ok(perf_counter() - started)
        if self._closed:
            return  # the client left; the write itself still completed
        self._later.append(encode(reply))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_scheduled = False
        if self._later and not self._closed:
            self._transport.write(b"".join(self._later))
        self._later.clear()
        if self._eof and self._flow.inflight == 0:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.close()

    # --- shutdown ----------------------------------------------------------------------

    def close(self) -> None:
        self._close()
