"""One client or peer connection: bytes in, replies out, nothing more.

``data_received`` feeds the sans-I/O codec and handles every complete request
(a read that is one GET answerable from memory is answered by its bytes,
without the codec: ``_answer_cached_get``); the replies it could produce at
once, and those that waited on storage, are gathered and written in one write
after the loop turn's reads (``Outbox``).
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from time import perf_counter
from typing import Any

from msgspec import Raw

from ..buffer_budget import ClientBuffers
from ..protocol.codec import encode
from ..tls import like_tcp
from ..protocol.connection import CLOSED, NEED_DATA, Connection, Side
from ..protocol.errors import ErrorCode, KvwireError, ProtocolError
from ..protocol.get_frames import CONSISTENCY_ONE_END, get_reply_frame, parse_get_frame
from ..protocol.limits import UNAUTHENTICATED_FRAME_BYTES
from ..protocol.messages import Consistency, Delete, ErrorReply, Get, GetReply, Hello, Role
from .access import ANONYMOUS, BEYOND_THE_LIMIT, PEER, TOO_MANY_CONNECTIONS
from .flow import FlowControl
from .node import Node, PendingReply, Session
from .outbox import Outbox
from .tally import LATENCY_BOUNDS, RESULT_LABELS, OpTally

log = logging.getLogger("kvwire.connection")

# Replies one pass over the buffered requests may produce before it stops
# reading and waits for them to drain: without it, a client pipelining GETs of
# large values without reading replies makes the node buffer replies without
# bound (20 bytes of request, a megabyte of reply).
MAX_REPLY_BYTES_PER_PASS = 1 << 20
# Requests one pass handles before the rest wait for the next loop turn: libuv may
# hand a connection 32 reads of 256 KiB in one turn, and a flood of small requests
# (100,000 HELLOs with unknown tokens, 4.5 MB) held the event loop for 2 s, past
# the peers' failure timeout: two such clients took a cluster's quorum. A pass of
# these costs about 10 ms at most; heartbeats and other clients run in between.
MAX_REQUESTS_PER_PASS = 512
# Bytes of frames one pass reads before the rest wait for the next loop turn, when
# the node reads nothing more from the connection until then (FlowControl's
# pause_for_a_turn: not the backlog's hold, which waits for half of --max-inflight-
# bytes to drain; at the end of the stream, the backlog). Reading a frame costs
# up to about 0.3 s a MiB (a million empty maps), and libuv hands a connection up to
# 32 reads in one turn: five such frames sent back to back held the event loop 2.2 s
# in one block, and two connections sending them took a cluster's quorum (a security
# probe's finding). A pass always reads one frame, however large.
MAX_REQUEST_BYTES_PER_PASS = 256 * 1024
# Replies queued for the end of the loop turn (kvwire.server.outbox) past this
# are written at once: libuv may hand one connection up to 32 full reads in a
# turn, and flow control only sees what has been written.
MAX_QUEUED_REPLY_BYTES = 64 * 1024

_ONE = Consistency.ONE
# The refusal of a connection past --max-connections (docs/protocol.md 8): id nil, so
# that a client reads it as the connection's, not a request's, and tries another node.
_TOO_MANY_CONNECTIONS = encode(ErrorReply(None, ErrorCode.UNAVAILABLE, TOO_MANY_CONNECTIONS))

# What a stopping node tells each connection once it has answered every request it
# read there (``go_away``), as an ERROR UNAVAILABLE whose id is nil and whose
# maybe_applied is false: the requests still unanswered were not read, so a client
# may send them to another node (docs/protocol.md 8).
GOING_AWAY = ("the node is shutting down; it read none of the requests on this connection that it "
              "has not answered: send them to another node")


class NodeProtocol(asyncio.Protocol):
    # Slots, not a __dict__: past 30 attributes CPython 3.11 gives an instance's
    # __dict__ no shared keys, and every attribute read of the hot path gets slower
    # (a GET answered from memory took 2.70 µs of Python in-process with 32 of them,
    # 2.48 with 27; docs/design.md 5).
    __slots__ = (
        "_answerable_end", "_auth", "_backlog", "_buffers", "_closed", "_codec", "_core", "_drain_scheduled", "_eof", "_flow",
        "_flush_scheduled", "_going_away", "_held_in", "_held_out", "_later", "_later_bytes", "_loop", "_lost",
        "_max_key_bytes", "_node", "_opened_at", "_outbox", "_partial_since", "_quiet_since", "_registry",
        "_requests_read", "_requests_seen", "_session", "_shutting_down", "_transport", "_turn_scheduled",
        "_value_room", "_write",
        "_writing_paused_at", "__weakref__",
    )

    def __init__(self, node: Node, registry: set[NodeProtocol], outbox: Outbox) -> None:
        self._loop = asyncio.get_running_loop()
        self._node = node
        self._registry = registry
        self._outbox = outbox
        # Values stay the bytes the client packed, never rebuilt (protocol.values).
        self._codec = Connection(Side.NODE, node.config.limits, raw_values=True)
        # Until it is a peer link, no frame longer than the largest request: a frame
        # of the costliest msgpack holds the event loop about 0.2 s a MiB while it is
        # read, with no token needed (a probe, 2026-12-07: 4 MiB frames from two
        # clients, 1.2 s each, made the peers mark two nodes DOWN, and the cluster
        # lost its quorum). With an auth file, a connection without a token may send
        # nothing larger than a HELLO needs (UNAUTHENTICATED_FRAME_BYTES). Each HELLO
        # sets it anew (_rights_changed); the peer role lifts it for good.
        self._auth = node.config.auth is not None
        self._set_frame_limit(peer=False, authenticated=not self._auth)
        # What this connection holds, counted against the node's budget for all
        # clients (--max-buffered-bytes; not a peer link's): requests read but not
        # handled, and replies its client has not read while the transport's
        # buffer is over its high-water mark (below it, a few dozen KiB at most).
        self._buffers: ClientBuffers | None = node.client_buffers
        self._held_in = 0
        self._held_out = 0
        self._core = node.core
        self._max_key_bytes = node.config.limits.max_key_bytes
        # What a client's waiting GET or DELETE is charged in flow control beyond
        # its frame: room for the largest value it may bring in (a peer's
        # FETCH_REPLY, a Load, the reply's frame), not known when it starts.
        self._value_room = node.config.limits.max_value_bytes
        # A cluster's node answers only GETs of consistency=one from memory.
        self._answerable_end = CONSISTENCY_ONE_END if node.core.quorum > 1 else b""
        self._transport: asyncio.Transport | None = None
        self._flow: FlowControl | None = None
        self._session: Session | None = None
        self._later: list[bytes] = []
        self._later_bytes = 0
        self._flush_scheduled = False
        self._closed = False
        self._lost = False  # connection_lost came: the transport is gone
        self._eof = False
        # For the deadlines (``overdue``): when the connection opened, requests
        # read so far, and when the frame still incomplete in the buffer began.
        self._opened_at = self._loop.time()
        self._requests_read = 0
        # With an auth file, what a connection without rights last did (``overdue``).
        self._requests_seen = 0
        self._quiet_since = self._opened_at
        self._partial_since: float | None = None
        # Since when the replies written wait unread (the transport's buffer full).
        self._writing_paused_at: float | None = None
        # Requests read but left in the codec's buffer because one pass made
        # replies enough (MAX_REPLY_BYTES_PER_PASS), or --max-inflight requests
        # wait: handled once the replies drain and fewer than half of those wait.
        self._backlog = False
        self._drain_scheduled = False
        # A pass read MAX_REQUEST_BYTES_PER_PASS: the rest waits for the loop's next turn.
        self._turn_scheduled = False
        # The node is stopping (begin_shutdown): requests held back are refused, not started.
        self._shutting_down = False
        # The node has said it reads nothing more here (go_away): bytes are discarded.
        self._going_away = False

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        peername = transport.get_extra_info("peername")
        self._session = self._node.new_session(f"{peername[0]}:{peername[1]}" if peername else "?")
        self._session.drop = self.drop
        self._session.rights_changed = self._rights_changed
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._session.certificate = ssl_object.getpeercert()  # checked at a peer's HELLO
        self._write = like_tcp(transport)  # over TLS, what is unread is counted as over TCP
        config = self._node.config
        self._flow = FlowControl(transport, config.max_inflight_per_connection, config.max_inflight_bytes_per_connection)
        open_now = len(self._registry)
        # Peer links count among the connections, and a peer whose link dropped (a
        # restart, a blip) while clients held every slot was refused for as long as
        # they did: its heartbeats stopped, and the node took it for DOWN. Past the
        # limit there is room for one link per peer, kept only once it proves the
        # peer role (Node._hello); anything else there is refused and closed.
        if open_now >= config.max_connections + len(self._core.peer_ids):
            self._refuse_at_the_limit(open_now)
            transport.write(_TOO_MANY_CONNECTIONS)
            self._close()
            return
        if open_now >= config.max_connections:
            self._session.beyond_limit = True
            self._session.grant = BEYOND_THE_LIMIT
            self._set_frame_limit(peer=False, authenticated=False)  # what a HELLO needs
        self._registry.add(self)
        self._node.connections = len(self._registry)

    def _rights_changed(self) -> None:
        if self._codec.frame_limit is None:
            return  # a peer link's, for good: a later HELLO, even refused, changes nothing of it
        grant = self._session.grant
        self._set_frame_limit(peer=grant is PEER, authenticated=(not self._auth or grant is not ANONYMOUS)
                              and grant is not BEYOND_THE_LIMIT)
        if grant is PEER and self._buffers is not None:  # not for a second peer HELLO on the link
            self._buffers.hold(self, 0)  # a peer link's frames are not counted against clients' budget
            self._buffers = None

    def _set_frame_limit(self, *, peer: bool, authenticated: bool) -> None:
        """A peer link takes frames up to max_frame_bytes (DIGESTS, SYNC and REQUESTS pages),
        a client the largest request, and a connection the auth file has not let in yet what
        HELLO, PING and HEALTH need: one frame of 1 MiB of empty maps, then five in a row,
        each sent with no token, held a node's event loop 1.4-2.2 s (a security probe's finding)."""
        codec = self._codec
        if peer:
            codec.frame_limit, codec.frame_limit_reason = None, None
        elif authenticated:
            codec.frame_limit, codec.frame_limit_reason = self._node.config.limits.client_frame_bytes, None
        else:
            codec.frame_limit = UNAUTHENTICATED_FRAME_BYTES
            codec.frame_limit_reason = (f"this node has an auth file, and until a HELLO gives a token it accepts a "
                                        f"frame holds at most {UNAUTHENTICATED_FRAME_BYTES} bytes")

    def data_received(self, data: bytes) -> None:
        if self._closed or self._going_away:
            return
        if self._shutting_down:
            # The node waits only for the requests it started before it began to stop,
            # and closes every connection after: one started now could be applied with
            # its answer never written (a DELETE applied, its client told the connection
            # closed). Refused, it was applied nowhere and may be sent elsewhere.
            self._codec.receive_data(data)
            self._refuse_backlog("the node is shutting down")
            return
        if not self._codec.buffered_bytes and self._answer_cached_get(data):
            return
        read_before = self._requests_read
        self._codec.receive_data(data)
        self._handle_read(read_before)

    def _handle_read(self, read_before: int) -> None:
        """Handle what the codec holds, and account for what it still holds."""
        replies = self._handle_buffered()
        if self._backlog:
            self._write_now(replies)  # a megabyte of replies: flow control must see them before reading on
            self._hold_backlog()
        elif replies:
            self._queue(replies)
        buffered = self._codec.buffered_bytes
        if buffered != self._held_in:
            self._hold(buffered)
        if not buffered:
            self._partial_since = None
        elif self._partial_since is None or self._requests_read != read_before:
            self._partial_since = self._loop.time()  # a new frame began in these bytes

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._going_away:
            return False  # the other side has taken the notice and ended its stream: close
        self._codec.receive_data(b"")
        self._write_now(self._handle_buffered())  # returning False below closes the transport
        # Returning True keeps our side open until the replies to requests
        # still waiting on storage, or still in the backlog, have been written.
        # A TLS transport cannot (uvloop closes it after the close_notify, and
        # logs a warning at a True): the replies to requests waiting on storage
        # are lost there, and those held back are refused rather than started
        # with no one to answer (docs/protocol.md 8).
        tls = self._transport.get_extra_info("ssl_object") is not None
        if self._backlog:
            if tls:
                self._refuse_backlog("the connection is closing")
            else:
                self._hold_backlog()
        return (self._flow.inflight > 0 or self._backlog) and not self._closed and not tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._lost = True
        self._hold(0)  # what it held goes with it
        self._session.drop = None  # the session held this protocol: no cycle left for the collector
        self._registry.discard(self)
        self._node.connections = len(self._registry)

    def pause_writing(self) -> None:
        self._writing_paused_at = self._loop.time()
        self._flow.pause_writing()
        self._hold_replies(self._transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._writing_paused_at = None
        self._flow.resume_writing()
        self._hold_replies(0)
        if self._backlog:
            self._schedule_drain()

    # --- a client that asks faster than it reads ---------------------------------------

    def _hold_backlog(self) -> None:
        """Read no more until the requests already read are handled; handle them
        as soon as the replies so far are taken by the kernel (resume_writing)
        and fewer than half of --max-inflight requests wait, holding less than
        half of --max-inflight-bytes (_finish)."""
        if self._shutting_down:
            self._refuse_backlog("the node is shutting down")
            return
        self._flow.hold()
        self._schedule_drain()

    def _refuse_backlog(self, why: str) -> None:
        """Answer each whole request held back UNAVAILABLE, without starting it,
        and read on. The node will not wait for them (it is stopping, or the
        connection is): started, a write among them could be applied with its
        reply lost; refused, it was applied nowhere and may be sent elsewhere."""
        self._backlog = False
        refused: list[bytes] = []
        message = f"{why}; request not started"
        while not self._closed:
            try:
                request = self._codec.next_event()
            except ProtocolError as exc:
                if self._refuse_frame(exc, refused, perf_counter()):
                    return
                continue
            if request is NEED_DATA or request is CLOSED:
                break
            self._node.metrics.tally_of_request(request).answer("unavailable", 0.0)
            refused.append(encode(ErrorReply(request.id, ErrorCode.UNAVAILABLE, message, False)))
        self._write_now(b"".join(refused))
        self._hold(self._codec.buffered_bytes)
        self._flow.release()
        self._close_if_finished()

    def _wait_a_turn(self) -> None:
        """Read no more from this connection, and handle none of what it holds, until the
        event loop has polled once more for the others (MAX_REQUEST_BYTES_PER_PASS)."""
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self._flow.pause_for_a_turn()
            self._loop.call_soon(self._after_the_next_poll)

    def _after_the_next_poll(self) -> None:
        # A callback scheduled now runs in the loop turn after this one, once that turn has
        # polled: the reads of other clients and the peers' heartbeats come in first. Read
        # again here, and this connection's next frame, costly too, could come first again.
        self._loop.call_soon(self._go_on)

    def _go_on(self) -> None:
        self._turn_scheduled = False
        if self._closed:
            return
        self._flow.resume_after_a_turn()
        if self._going_away or self._backlog or not self._codec.buffered_bytes:
            return  # discarding, or the backlog's own drain goes on, or nothing held
        if self._shutting_down:
            self._refuse_backlog("the node is shutting down")  # as what is held back is
            return
        self._handle_read(self._requests_read)

    def _schedule_drain(self) -> None:
        if self._flow.may_go_on and not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain_backlog)

    def _drain_backlog(self) -> None:
        self._drain_scheduled = False
        if self._closed or not self._backlog or not self._flow.may_go_on:
            return
        self._backlog = False
        self._write_now(self._handle_buffered())
        if self._backlog:
            self._hold_backlog()
        else:
            self._flow.release()
        # What data_received took for a frame begun was whole requests held
        # back; left as it was, an idle client would be closed at frame_timeout.
        self._partial_since = self._loop.time() if self._codec.buffered_bytes else None
        self._hold(self._codec.buffered_bytes)

    def _hold(self, buffered: int) -> None:
        """Count the bytes of requests this connection now holds read but not handled."""
        self._held_in = buffered
        self._count_held()

    def _hold_replies(self, unread: int) -> None:
        """Count the bytes of replies its client has not read, held in the transport."""
        self._held_out = unread
        self._count_held()

    def _count_held(self) -> None:
        """Past the node's budget for all clients, close the one holding the most. A
        closed connection holds no requests, and once lost no replies either: until
        then its transport holds what it has not written (a close waits for it)."""
        if self._closed:
            self._held_in = 0
        if self._lost:
            self._held_out = 0
        if self._buffers is not None:
            biggest = self._buffers.hold(self, self._held_in + self._held_out)
            if biggest is not None:
                biggest.evict()

    def evict(self) -> None:
        """Close this connection, the client holding the most of the node's budget."""
        limit = self._buffers.limit
        self._buffers.hold(self, 0)
        self._buffers = None  # counted no more: the notice's write must not find it over again
        self._node.limited_log.log(
            logging.WARNING, "connections closed at --max-buffered-bytes",
            "closing %s: it holds %d bytes of requests not yet read whole or handled and %d of replies not yet "
            "read, the most of any client, and all clients hold more than --max-buffered-bytes (%d)",
            self._session.peer, self._held_in, self._held_out, limit, logger=log)
        self._node.metrics.connections_evicted += 1
        self._close_saying(ErrorCode.UNAVAILABLE, "closing the connection: the node holds more unfinished requests "
                           "than it allows all clients (--max-buffered-bytes), this one's the most; try again")

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
        produced = 0
        flow = self._flow
        # Compared inline, not through a property: this runs for every request
        # (bench/results/2026-12-04/inflight_ab.md has the paired runs).
        max_inflight, max_inflight_bytes = flow.max_inflight, flow.max_inflight_bytes
        frames_left = MAX_REQUESTS_PER_PASS  # frames read as requests or refused alike
        bytes_left = MAX_REQUEST_BYTES_PER_PASS
        while not self._closed:
            # One read can hold thousands of requests: stopping the reads at
            # the cap (FlowControl) does not stop this loop from starting them.
            if (produced > MAX_REPLY_BYTES_PER_PASS or not frames_left
                    or flow.inflight >= max_inflight or flow.inflight_bytes >= max_inflight_bytes):
                self._backlog = codec.buffered_bytes > 0  # nothing left: nothing to hold back
                break
            if bytes_left <= 0:
                # Even with no whole frame left: the reads still to come in this loop
                # turn would each bring the next one.
                if self._eof:
                    self._backlog = True  # no read to stop: drained as a backlog is
                else:
                    self._wait_a_turn()
                break
            frames_left -= 1
            try:
                request = codec.next_event()
            except ProtocolError as exc:
                bytes_left -= codec.last_frame_bytes
                if self._refuse_frame(exc, replies, started):
                    return b""
                produced += len(replies[-1])
                continue
            if request is NEED_DATA:
                break
            bytes_left -= codec.last_frame_bytes
            if request is CLOSED:
                if self._flow.inflight == 0:
                    self._later.extend(replies)  # _close writes them first
                    replies.clear()
                    self._close()
                break
            self._requests_read += 1
            kind = type(request)
            if kind is Get:
                tally = get_one if request.consistency is _ONE else get_quorum
            elif kind is Delete and session.grant is PEER:
                tally = metrics.forwarded_delete  # its client's DELETE is counted on the peer it asked
            else:
                tally = metrics.tally_of_type(kind)
            try:
                result = node.handle(request, session)
            except KvwireError as exc:
                tally.answer(RESULT_LABELS.get(exc.code, "internal"), perf_counter() - started)
                encoded = encode(ErrorReply(request.id, exc.code, exc.message, exc.maybe_applied))
                produced += len(encoded)
                replies.append(encoded)
                if session.beyond_limit:  # not a peer's HELLO, or a refused one: its room is a peer's
                    if kind is not Hello or request.role is not Role.PEER:
                        replies[-1] = _TOO_MANY_CONNECTIONS  # what it would have met at the limit
                    self._close_past_the_limit(replies)
                    return b""
                continue
            except Exception:
                log.exception("internal error handling %s from %s", type(request).__name__, session.peer)
                tally.answer("internal", perf_counter() - started)
                encoded = encode(ErrorReply(request.id, ErrorCode.INTERNAL, "internal error; see the node's log"))
                produced += len(encoded)
                replies.append(encoded)
                continue
            if type(result) is PendingReply:
                charged = codec.last_frame_bytes
                if (kind is Get or kind is Delete) and session.grant is not PEER:
                    charged += self._value_room  # a forwarded DELETE is counted at its client's node
                flow.request_started(charged)
                result.on_reply = (lambda reply, request_id=request.id, tally=tally, started=started, charged=charged:
                                   self._finish(request_id, reply, tally, started, charged))
            else:
                # OpTally.answer_ok, inlined: this runs for every request answered
                # at once, and the call alone was a tenth of the metrics' cost
                # (callgrind, README "What the metrics cost").
                seconds = clock() - started
                tally.ok += 1
                tally.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
                tally.total += seconds
                encoded = encode(result)
                produced += len(encoded)
                replies.append(encoded)
        return b"".join(replies)

    def _answer_cached_get(self, frame: bytes) -> bool:
        """Answer ``frame`` when it is one whole GET that this connection may make
        and whose value is cached here, without the codec (the hot path, in
        kvwire.protocol.get_frames), and return True; else return False,
        having changed nothing."""
        if not frame.endswith(self._answerable_end):
            return False
        # No --max-inflight(-bytes) check: a connection at its cap has stopped reading
        # (FlowControl), so no read comes here until it is below the cap again.
        get = parse_get_frame(frame, self._max_key_bytes)
        if get is None:
            return False
        grant = self._session.grant
        if Get not in grant.ops or grant.prefix:
            return False
        started = perf_counter()
        request_id, key, consistency = get
        found = self._core.cached_value(key, consistency)
        if type(found) is not tuple:  # absent, or not cached: the codec's way says so
            return False
        value, version = found
        if type(value) is Raw:
            reply = get_reply_frame(request_id, value, version)
        else:
            reply = encode(GetReply(request_id, value, version))
        self._requests_read += 1
        self._partial_since = None
        metrics = self._node.metrics
        tally = metrics.get_one if consistency is _ONE else metrics.get_quorum
        tally.answer_ok(perf_counter() - started)
        self._queue(reply)
        return True

    def _refuse_at_the_limit(self, others: int) -> None:
        self._node.limited_log.log(logging.WARNING, "connections refused at the limit", "refusing %s: %d connections "
                                   "open, the limit", self._session.peer, others, logger=log)
        self._node.metrics.connections_refused += 1

    def _close_past_the_limit(self, replies: list[bytes]) -> None:
        """A connection past --max-connections that did not prove the peer role: ``replies``
        (its last the refusal), then the close, as at the limit (docs/protocol.md 8)."""
        self._refuse_at_the_limit(len(self._registry) - 1)
        self._later.extend(replies)  # _close writes them first
        self._close()

    def _refuse_frame(self, exc: ProtocolError, replies: list[bytes], started: float) -> bool:
        """The ERROR for a frame that could not be read as a request (it has no op);
        True when the error is fatal and the connection is closed, ``replies`` written first."""
        self._node.metrics.tally("unknown").answer(RESULT_LABELS.get(exc.code, "internal"), perf_counter() - started)
        if self._session.beyond_limit:
            replies.append(_TOO_MANY_CONNECTIONS)
            self._close_past_the_limit(replies)
            return True
        replies.append(encode(ErrorReply(exc.request_id, exc.code, exc.message)))
        if not exc.fatal:
            return False
        self._node.limited_log.log(logging.INFO, "connections closed for a fatal error", "closing %s: %s",
                                self._session.peer, exc.message, logger=log)
        self._later.extend(replies)
        self._close()
        return True

    def _finish(self, request_id: int, reply: Any, tally: OpTally, started: float, charged: int) -> None:
        """The node's answer to a request it left pending (``PendingReply``), as soon as it is given;
        ``charged``: the bytes flow control counted for it while it waited (its frame, and for a
        client's GET or DELETE room for a value)."""
        self._flow.request_finished(charged)
        if self._backlog:
            self._schedule_drain()
        if isinstance(reply, KvwireError):
            reply = ErrorReply(request_id, reply.code, reply.message, reply.maybe_applied)
        elif isinstance(reply, BaseException):
            log.error("internal error answering request %d from %s", request_id, self._session.peer, exc_info=reply)
            reply = ErrorReply(request_id, ErrorCode.INTERNAL, "internal error; see the node's log")
        if type(reply) is ErrorReply:
            tally.answer(RESULT_LABELS.get(reply.code, "internal"), perf_counter() - started)
        else:
            tally.answer_ok(perf_counter() - started)
        if self._closed:
            return  # the client left; the write itself still completed
        self._queue(encode(reply))

    def _queue(self, replies: bytes) -> None:
        self._later.append(replies)
        self._later_bytes += len(replies)
        if self._later_bytes > MAX_QUEUED_REPLY_BYTES:
            self._write_later()
            self._close_if_finished()  # no flush() may follow to do it
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._outbox.add(self)

    def flush(self) -> None:
        """Write the replies gathered so far (the Outbox calls it once a loop turn)."""
        self._flush_scheduled = False
        self._write_later()
        self._close_if_finished()

    def _close_if_finished(self) -> None:
        """Close once a client that has closed its side has had every reply."""
        if self._eof and self._flow.inflight == 0 and not self._backlog:
            self._close()

    def _write_now(self, replies: bytes) -> None:
        """``replies``, after those already queued, without waiting for the turn's end."""
        if replies:
            self._later.append(replies)
        self._write_later()

    def _write_later(self) -> None:
        if self._later and not self._closed:
            self._write(b"".join(self._later))
            if self._writing_paused_at is not None:
                self._hold_replies(self._transport.get_write_buffer_size())
        self._later.clear()
        self._later_bytes = 0

    def _close(self) -> None:
        if not self._closed:
            self._write_later()  # replies still waiting for the loop turn's end go first
            self._closed = True
            self._hold(0)
            self._transport.close()

    # --- deadlines -----------------------------------------------------------------------

    def overdue(self, now: float) -> str | None:
        """Why this connection should be closed at ``now``, or None: it has not said
        who it is within hello_timeout (with an auth file: it has no token or peer
        role, and has been idle that long), or a frame it began has not arrived whole
        within frame_timeout (a slow loris holding one of max_connections), or the
        replies it was sent wait unread that long (one pipelining requests it never
        reads the answers to held its slot for good; a REST probe found the same on
        the bridge)."""
        config = self._node.config
        if self._writing_paused_at is not None and now - self._writing_paused_at > config.frame_timeout \
                and not self._lost:
            # Closed too, as a close waits for the replies to be read: for good, from a
            # client that reads none.
            return f"it read none of the replies sent it for {config.frame_timeout:g} s"
        if self._closed:
            return None
        if self._session.beyond_limit and now - self._opened_at > config.hello_timeout:
            return f"opened past --max-connections, it proved no peer role within {config.hello_timeout:g} s"
        if config.auth is None:
            if now - self._opened_at > config.hello_timeout and self._requests_read == 0:
                return f"no request within {config.hello_timeout:g} s"
        elif self._session.grant is ANONYMOUS:
            # No token, no peer proof: it may PING and ask HEALTH, and keeps its slot
            # (of --max-connections) only while it does, a request every hello_timeout
            # at least. A tokenless HELLO and then silence held one for good.
            if self._requests_read != self._requests_seen:
                self._requests_seen = self._requests_read
                self._quiet_since = now
            if now - self._quiet_since > config.hello_timeout and self._flow.inflight == 0:
                if not self._session.said_hello:
                    return f"no accepted HELLO within {config.hello_timeout:g} s"
                return f"no token or peer proof, and no request for {config.hello_timeout:g} s"
        if self._partial_since is not None:
            if self._flow.reading_paused:
                self._partial_since = now  # we stopped reading, not the client
            elif now - self._partial_since > config.frame_timeout:
                return f"a frame begun {now - self._partial_since:.1f} s ago is still incomplete"
        return None

    def close_overdue(self, reason: str) -> None:
        self._node.limited_log.log(logging.INFO, "connections closed past a deadline", "closing %s: %s",
                                self._session.peer, reason, logger=log)
        self._node.metrics.connections_timed_out += 1
        self._close_saying(ErrorCode.TIMEOUT, f"closing the connection: {reason}")

    def _close_saying(self, code: ErrorCode, message: str) -> None:
        if self._writing_paused_at is not None:
            self.drop()  # a notice, or a close that waits for the replies to drain, would wait for good
            return
        self._later.append(encode(ErrorReply(None, code, message)))
        self._close()

    # --- shutdown ----------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """The node is stopping and waits only for the requests already started:
        those held back, and those read from now on, are refused (_refuse_backlog),
        not started."""
        self._shutting_down = True
        if self._backlog and not self._closed:
            self._refuse_backlog("the node is shutting down")

    def go_away(self) -> None:
        """The node stops. If every request read here is answered, say that the rest
        were not read (``GOING_AWAY``), end this side's stream, and read on only to
        discard, until the other side closes or the node closes what is left
        (``close``). A close with unread bytes makes the kernel reset the connection,
        and the reset can destroy the replies the other side has not read yet.

        Without the notice, a request on its way as the node closed was lost with
        no word: a DELETE, which no one may send twice, then failed as undecided
        though it was never read."""
        if self._closed:
            return
        if self._flow.inflight:
            # Past the shutdown timeout, a request started here is unanswered and may
            # yet be applied: the notice would be false.
            self._close()
            return
        if self._codec.buffered_bytes:
            self._refuse_backlog("the node is shutting down")  # whole frames read, not yet handled
            if self._closed:
                return
        self._going_away = True
        self._later.append(encode(ErrorReply(None, ErrorCode.UNAVAILABLE, GOING_AWAY, False)))
        self._write_later()
        if self._eof:
            self._close()
            return
        if self._transport.can_write_eof():  # not over TLS: its close_notify comes with the close
            self._transport.write_eof()
        self._flow.release()  # read on, to discard, unless the other side is not reading either

    def close(self) -> None:
        self._close()

    def drop(self) -> None:
        """Close at once, unread and unanswered (DropConnections): what the socket
        holds is discarded with it, and so are the replies not yet written."""
        if not self._lost:  # closed, it may still wait to write what its client does not read
            self._closed = True
            self._backlog = False
            self._hold(0)
            self._transport.abort()
