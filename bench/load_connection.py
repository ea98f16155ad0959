"""One load connection of ``kvwire bench``: what it sends, how it reads the replies, what it counts.

Replies are matched by reading the id at its fixed offset after the op the node
writes (``bench.workload.reply_prefixes``); anything else, ERROR replies
included, goes through the real decoder, so errors are counted exactly.
NOT_FOUND is an answer, not a failure: a GET or DELETE of a key that a mix
deleted gets it, and it is counted apart as ``not_found``.

Closed loop: a connection sends a new request as soon as one is answered,
keeping ``--pipeline`` in flight. Open loop (``--rate``): it has a ``Schedule``
and its worker's 1 ms tick calls ``pump``, which sends what is due, at most
``--pipeline`` in flight; latency counts from the scheduled start
(``bench.recorder``). ``bench.load_worker`` drives the connections of one
worker process; ``bench.preload`` fills the keys before a run that reads.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import sys
import time
from collections.abc import Callable

from kvwire.bench.recorder import LatencyRecorder, Schedule
from kvwire.bench.settings import Settings
from kvwire.bench.workload import (
    OPS,
    encode_requests,
    reply_prefixes,
)
from kvwire.protocol import (
    DEFAULT_LIMITS,
    DeleteReply,
    ErrorCode,
    ErrorReply,
    GetReply,
    Hello,
    HelloReply,
    ProtocolError,
    PutReply,
    decode_payload,
    encode,
    parse_host_port,
)
from kvwire.protocol.codec import oversized_frame_message

_UINT32 = struct.Struct(">I").unpack_from
_HELLO_ID = 2**32  # no key index takes it
_CONNECT_TIMEOUT_S = 5.0


class HelloRefused(ConnectionError):
    """The node answered HELLO with a kvwire frame other than HELLO_REPLY (an ERROR, say):
    it speaks plain kvwire, so TLS is not what is missing; or it answered with what the
    codec names as another kind of server (HTTP, SSH, an echo), which TLS would not cure either."""


class Tables:
    """What every connection of a run reads: frames per op and key, the prefixes of good replies."""

    def __init__(self, settings: Settings, value: bytes) -> None:
        self.frames = [
            encode_requests(op, settings.keys, value, settings.consistency) if op in settings.mix else []
            for op in OPS
        ]
        self.prefixes = reply_prefixes()
        self.prefix_length = len(next(iter(self.prefixes)))


class WorkerTally:
    """What one worker counts, shared by its connections."""

    def __init__(self, settings: Settings, budget: int) -> None:
        self.settings = settings
        self.budget = budget  # requests this worker may still send
        self.sending = self.recording = self.budget_exhausted = False
        self.window: list[float] = []  # measured window's start and end, time.monotonic()
        self.recorders = [LatencyRecorder() for _ in OPS]
        self.completed = 0  # answered in the window, for the progress bar
        self.errors = self.not_found = self.connections_lost = self.connect_failures = 0
        self.off_fast_path = 0  # successes whose reply the fast path did not recognise: should stay 0
        self.late_unsent = 0  # open loop: requests long due by the window's end but never sent
        self.error_codes: dict[str, int] = {}
        self.on_budget_exhausted: Callable[[], None] = lambda: None
        self.reconnect: Callable[[LoadProtocol], None] = lambda protocol: None

    def error(self, what: str, count: int = 1) -> None:
        if self.recording:
            self.errors += count
            self.error_codes[what] = self.error_codes.get(what, 0) + count

    def answered(self, op: int, started: float, now: float) -> None:
        if self.recording:
            self.completed += 1
            self.recorders[op].record(started, now)


class LoadProtocol(asyncio.Protocol):
    def __init__(self, run: WorkerTally, tables: Tables, keys: list[int], ops: list[int], position: int,
                 schedule: Schedule | None = None) -> None:
        self.run, self.tables, self.pipeline = run, tables, run.settings.pipeline
        self.keys, self.ops = keys, ops  # sequences of equal power-of-two length
        self.position = position
        self.schedule = schedule  # open loop only
        self.inflight: dict[int, tuple[float, int]] = {}  # key index -> (intended start, op index)
        self.hello: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self._rest: list[bytes] = []  # the start of an incomplete reply frame
        self._rest_size = self._rest_needed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.hello = asyncio.get_running_loop().create_future()
        # Failed after connect_one gave up on it (another connection failed first), it is
        # read by no one: retrieved here, so asyncio does not print it on the way out.
        self.hello.add_done_callback(lambda hello: hello.cancelled() or hello.exception())
        transport.write(encode(Hello(_HELLO_ID, token=self.run.settings.token)))

    def start(self) -> None:
        if self.schedule is None:
            self.send_next(self.pipeline, time.perf_counter())
        else:
            self.pump(time.perf_counter())

    def pump(self, now: float) -> None:
        """Open loop: send what the schedule says is due, within the pipeline depth."""
        count = min(self.pipeline - len(self.inflight), self.schedule.due(now))
        if count > 0 and not self.transport.is_closing():
            self.send_next(count, now)

    def send_next(self, count: int, now: float) -> None:
        run = self.run
        if run.budget < count:
            count = run.budget
            if count <= 0:
                if not run.budget_exhausted:
                    run.budget_exhausted = True
                    run.on_budget_exhausted()
                return
        run.budget -= count
        frames, inflight, keys, ops, schedule = self.tables.frames, self.inflight, self.keys, self.ops, self.schedule
        mask, position, chunks = len(keys) - 1, self.position, []
        for _ in range(count):
            key = keys[position]
            while key in inflight:
                position = (position + 1) & mask
                key = keys[position]
            op = ops[position]
            position = (position + 1) & mask
            inflight[key] = (now if schedule is None else schedule.take(), op)
            chunks.append(frames[op][key])
        self.position = position
        self.transport.write(chunks[0] if count == 1 else b"".join(chunks))

    def data_received(self, data: bytes) -> None:
        if self._rest:  # joined only once the frame is complete, so large values are copied once
            self._rest.append(data)
            self._rest_size += len(data)
            if self._rest_size < self._rest_needed:
                return
            data, self._rest = b"".join(self._rest), []
        now = time.perf_counter()
        run, inflight, prefixes = self.run, self.inflight, self.tables.prefixes
        plen, size, pos, answered, needed = self.tables.prefix_length, len(data), 0, 0, 4
        while size - pos >= 4:
            (length,) = _UINT32(data, pos)
            start = pos + 4
            end = start + length
            if end > size:
                if length > DEFAULT_LIMITS.max_frame_bytes:
                    return self._broken(oversized_frame_message(data[pos : pos + 4], length,
                                                                DEFAULT_LIMITS.max_frame_bytes, replies=True))
                needed = 4 + length
                break
            pos = end
            request_id = -1
            if length > plen + 4 and data[start : start + plen] in prefixes:
                at = start + plen
                tag = data[at]
                if tag < 0x80:  # msgpack positive fixint
                    request_id = tag
                elif tag == 0xCD:  # uint16
                    request_id = (data[at + 1] << 8) | data[at + 2]
                elif tag == 0xCC:  # uint8
                    request_id = data[at + 1]
                elif tag == 0xCE:  # uint32
                    request_id = _UINT32(data, at + 1)[0]
            if request_id >= 0:
                sent = inflight.pop(request_id, None)
                if sent is None:
                    run.error("unmatched id")
                    continue
                run.answered(sent[1], sent[0], now)
            elif not self._slow_reply(data[start:end], now):
                continue
            answered += 1
        if pos < size:
            self._rest, self._rest_size, self._rest_needed = [data[pos:]], size - pos, needed
        if answered and run.sending and not self.transport.is_closing():
            if self.schedule is None:
                self.send_next(answered, now)
            else:
                self.pump(now)

    def _slow_reply(self, payload: bytes, now: float) -> bool:
        """Decode a reply off the fast path; whether it settled a request in flight
        (and another may be sent in its place)."""
        try:
            reply = decode_payload(payload, DEFAULT_LIMITS, replies=True)
        except ProtocolError as exc:
            self._broken(f"undecodable reply: {exc}")
            return False
        if not self.hello.done():
            if isinstance(reply, HelloReply):
                self.hello.set_result(reply)
            else:
                self.hello.set_exception(HelloRefused(refused_hello(reply)))
            return False
        if isinstance(reply, ErrorReply) and reply.id is None:
            self._connection_refused(reply)
            return False
        sent = self.inflight.pop(reply.id, None) if isinstance(reply.id, int) else None
        if sent is None:
            self.run.error(f"unexpected {type(reply).__name__}")
            return False
        if isinstance(reply, ErrorReply) and reply.code == ErrorCode.NOT_FOUND:
            if self.run.recording:
                self.run.not_found += 1
            self.run.answered(sent[1], sent[0], now)
        elif isinstance(reply, ErrorReply):
            self.run.error(code_name(reply.code))
        elif isinstance(reply, (GetReply, PutReply, DeleteReply)):  # a success written in another layout
            self.run.off_fast_path += 1
            self.run.answered(sent[1], sent[0], now)
        else:
            self.run.error(f"unexpected {type(reply).__name__}")
        return True

    def _connection_refused(self, reply: ErrorReply) -> None:
        """An ERROR without an id is the node's word on the whole connection (a frame over
        its limit, too many connections, a deadline), and the node closes it next: every
        request in flight is refused by it, counted once by its code as kvload counts it,
        not again as lost with the connection; nothing more is sent on it."""
        if self.inflight:
            self.run.error(code_name(reply.code), len(self.inflight))
        else:
            self.run.error(f"unexpected {type(reply).__name__}")
        self.inflight.clear()

    def _broken(self, why: str) -> None:
        self.transport.close()
        if not self.hello.done():
            # No node at all (an HTTP or SSH server, an echo): the run stops at its connect with
            # this one line, where every connection printed its own and the last line blamed TLS.
            self.hello.set_exception(HelloRefused(why))
            return
        self.run.error("protocol")
        print(f"bench.load: closing a connection: {why}", file=sys.stderr)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(f"node closed the connection before answering HELLO{why_lost(exc)}"))
        if not self.closing:
            self.run.connections_lost += 1
            if self.inflight:
                self.run.error("connection lost", len(self.inflight))
            self.inflight.clear()
            if self.run.sending:
                self.run.reconnect(self)


def code_name(code: int) -> str:
    """An error code as ``error_codes`` names it."""
    try:
        return ErrorCode(code).name
    except ValueError:  # a code this client does not know yet
        return f"code {code}"


def refused_hello(reply: object) -> str:
    """What a node answering HELLO with ``reply`` (not a HELLO_REPLY) said."""
    if isinstance(reply, ErrorReply):
        return f"node refused HELLO: {code_name(reply.code)}: {reply.message}"
    return f"node answered HELLO with {reply}"


def why_lost(exc: Exception | None) -> str:
    """What ``connection_lost(exc)`` says, to end a message: the error, or nothing for a clean close."""
    return f" ({exc})" if exc is not None else ""


async def connect_one(settings: Settings, number: int, make: Callable[[], LoadProtocol]) -> LoadProtocol:
    """Connection ``number``, round-robin over the endpoints, past its HELLO; a ConnectionError
    naming the endpoint and why when it can't be had."""
    loop = asyncio.get_running_loop()
    endpoint = settings.endpoints[number % len(settings.endpoints)]
    host, port = parse_host_port(endpoint)
    context = settings.ssl_context()
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(make, host, port, ssl=context, server_hostname=host if context else None),
            _CONNECT_TIMEOUT_S,
        )
    except ssl.SSLError as exc:
        raise ConnectionError(f"{endpoint}: TLS handshake failed: {exc.reason or exc}") from None
    except TimeoutError:
        raise ConnectionError(f"{endpoint}: no connection within {_CONNECT_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise ConnectionError(f"{endpoint}: {exc.strerror or exc}") from None
    try:
        await asyncio.wait_for(protocol.hello, _CONNECT_TIMEOUT_S)
    except (TimeoutError, ConnectionError) as exc:
        protocol.transport.close()
        why = f"no answer to HELLO within {_CONNECT_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError) else str(exc)
        # A kvwire answer, even a refusal, came in plain text: then TLS is no cure.
        hint = "; if it serves TLS, give --tls (or --tls-ca)" if context is None and not isinstance(exc, HelloRefused) else ""
        raise ConnectionError(f"{endpoint}: {why}{hint}") from None
    return protocol


async def connect_all(settings: Settings, numbers: range, make: Callable[[int], Callable[[], LoadProtocol]]) -> list[LoadProtocol]:
    """Connections ``numbers`` (``make(number)`` builds each one's protocol), all past their HELLO;
    if any can't be had, the first such ConnectionError, once every attempt has ended and those
    made are closed: a gather that raised at the first failure left the others running, their
    connections open and their failures unretrieved (asyncio printed them on the way out)."""
    outcomes = await asyncio.gather(*(connect_one(settings, n, make(n)) for n in numbers), return_exceptions=True)
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        close_all([outcome for outcome in outcomes if not isinstance(outcome, BaseException)])
        raise failures[0]
    return list(outcomes)


def close_all(protocols: list[LoadProtocol]) -> int:
    """Close every connection; the number of requests left unanswered."""
    for protocol in protocols:
        protocol.closing = True
        protocol.transport.close()
    return sum(len(protocol.inflight) for protocol in protocols)


