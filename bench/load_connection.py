"""The load side of one ``bench.load`` worker process: its connections and how it drives them.

Request frames are encoded once, before the run, by ``kvwire.protocol.encode``.
A request's id is its key's index, unique among one connection's requests in
flight because a connection never has two requests for one key outstanding.
Replies are matched by reading the id at its fixed offset after the op the node
writes; anything else, ERROR replies included, goes through the real decoder,
so errors are counted exactly.
"""

from __future__ import annotations

import asyncio
import random
import struct
import sys
import time
from array import array
from typing import TYPE_CHECKING, Any, Callable

import uvloop

from kvwire.protocol import (
    DEFAULT_LIMITS, ErrorCode, ErrorReply, Get, GetReply, Hello, HelloReply, ProtocolError, Put, PutReply,
    Version, decode_payload, encode, parse_host_port,
)

if TYPE_CHECKING:  # a runtime import would load bench.load a second time under ``python -m bench.load``
    from bench.load import Settings

_UINT32 = struct.Struct(">I").unpack_from
_HELLO_ID = 2**32  # no key index takes it
_CONNECT_TIMEOUT_S = 5.0
# Replies still out this long after the window closes are reported as unanswered.
DRAIN_TIMEOUT_S = 2.0
READY_TIMEOUT_S = 30.0
# Latency buckets keep 11 significant bits of microseconds: exact below 2.048 ms, within 0.05 % above.
_HISTOGRAM_BITS = 11

def key_name(index: int) -> str:
    return f"key:{index:08d}"


def request_frames(op: str, keys: int, value: bytes) -> list[bytes]:
    """One encoded request per key, its id being the key's index."""
    if op == "get":
        return [encode(Get(i, key_name(i))) for i in range(keys)]
    return [encode(Put(i, key_name(i), value)) for i in range(keys)]


def reply_prefix(op: str) -> bytes:
    """The bytes a successful reply's payload starts with, up to its id: as the codec writes them."""
    reply = GetReply(0, None, Version(1, "n")) if op == "get" else PutReply(0, Version(1, "n"))
    payload = encode(reply)[4:]
    prefix = payload[: payload.find(b"\xa2id") + 3]
    if payload[len(prefix)] != 0:  # the id, 0, as a positive fixint
        raise RuntimeError("kvwire.protocol no longer writes op and id first; update bench.load_connection")
    return prefix


# --- one connection --------------------------------------------------------------------


class _Run:
    """What one worker counts, shared by its connections."""

    def __init__(self, budget: int) -> None:
        self.budget = budget  # requests this worker may still send
        self.sending = self.recording = self.budget_exhausted = False
        self.window: list[float] = []  # measured window's start and end, time.monotonic()
        self.latencies = array("f")  # seconds, successful replies in the window
        self.errors = 0
        self.error_codes: dict[str, int] = {}
        self.connections_lost = 0
        self.on_budget_exhausted: Callable[[], None] = lambda: None

    def error(self, what: str) -> None:
        if self.recording:
            self.errors += 1
            self.error_codes[what] = self.error_codes.get(what, 0) + 1


class LoadProtocol(asyncio.Protocol):
    def __init__(self, run: _Run, frames: list[bytes], prefix: bytes, pipeline: int, key_order: list[int]) -> None:
        self.run, self.frames, self.prefix, self.pipeline = run, frames, prefix, pipeline
        self.key_order = key_order  # random key indices; its length is a power of two
        self.position = random.randrange(len(key_order))
        self.inflight: dict[int, float] = {}  # request id -> time.perf_counter() when sent
        self.hello: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self._rest: list[bytes] = []  # the start of an incomplete reply frame
        self._rest_size = self._rest_needed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.hello = asyncio.get_running_loop().create_future()
        transport.write(encode(Hello(_HELLO_ID)))

    def start(self) -> None:
        self.send_next(self.pipeline, time.perf_counter())

    def send_next(self, count: int, now: float) -> None:
        run = self.run
        if run.budget < count:
            count = run.budget
            if count <= 0:
                run.budget_exhausted = True
                run.on_budget_exhausted()
                return
        run.budget -= count
        frames, inflight, order = self.frames, self.inflight, self.key_order
        mask, position, chunks = len(order) - 1, self.position, []
        for _ in range(count):
            key = order[position]
            position = (position + 1) & mask
            while key in inflight:
                key = order[position]
                position = (position + 1) & mask
            inflight[key] = now
            chunks.append(frames[key])
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
        run, inflight, prefix = self.run, self.inflight, self.prefix
        plen, size, pos, answered, needed = len(prefix), len(data), 0, 0, 4
        while size - pos >= 4:
            (length,) = _UINT32(data, pos)
            start = pos + 4
            end = start + length
            if end > size:
                if length > DEFAULT_LIMITS.max_frame_bytes:
                    return self._broken(f"reply frame of {length} bytes")
                needed = 4 + length
                break
            pos = end
            request_id = -1
            if length > plen + 4 and data[start : start + plen] == prefix:
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
                if run.recording:
                    run.latencies.append(now - sent)
            else:
                request_id = self._slow_reply(data[start:end], now)
                if request_id is None or inflight.pop(request_id, None) is None:
                    continue
            answered += 1
        if pos < size:
            self._rest, self._rest_size, self._rest_needed = [data[pos:]], size - pos, needed
        if answered and run.sending and not self.transport.is_closing():
            self.send_next(answered, now)

    def _slow_reply(self, payload: bytes, now: float) -> int | None:
        """Decode a reply off the fast path; the id of the request it settles, if any."""
        try:
            reply = decode_payload(payload, DEFAULT_LIMITS, replies=True)
        except ProtocolError as exc:
            self._broken(f"undecodable reply: {exc}")
            return None
        if not self.hello.done():
            if isinstance(reply, HelloReply):
                self.hello.set_result(reply)
            else:
                self.hello.set_exception(ConnectionError(f"node answered HELLO with {reply}"))
            return None
        if isinstance(reply, ErrorReply):
            try:
                self.run.error(ErrorCode(reply.code).name)
            except ValueError:  # a code this client does not know yet
                self.run.error(f"code {reply.code}")
        elif isinstance(reply, (GetReply, PutReply)):  # a success written in another layout
            sent = self.inflight.get(reply.id)
            if sent is not None and self.run.recording:
                self.run.latencies.append(now - sent)
        else:
            self.run.error(f"unexpected {type(reply).__name__}")
        return reply.id

    def _broken(self, why: str) -> None:
        self.run.error("protocol")
        print(f"bench.load: closing a connection: {why}", file=sys.stderr)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(f"node closed the connection before answering HELLO ({exc})"))
        if not self.closing:
            self.run.connections_lost += 1
            for _ in self.inflight:
                self.run.error("connection lost")
            self.inflight.clear()


class _PreloadProtocol(LoadProtocol):
    """PUTs keys from a shared iterator; ``done`` resolves once it has nothing left to send or await."""

    def __init__(self, run: _Run, frames: list[bytes], todo: Any) -> None:
        super().__init__(run, frames, reply_prefix("put"), 32, [0])
        self.todo = todo
        self.done = asyncio.get_running_loop().create_future()

    def send_next(self, count: int, now: float) -> None:
        chunks = []
        for key in self.todo:
            self.inflight[key] = now
            chunks.append(self.frames[key])
            if len(chunks) == count:
                break
        if chunks:
            self.transport.write(b"".join(chunks))
        elif not self.inflight and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost during the preload ({exc})"))


async def _connect(settings: Settings, count: int, first: int, make: Callable[[], LoadProtocol]) -> list[LoadProtocol]:
    """``count`` connections, round-robin over the endpoints, each past its HELLO."""
    loop = asyncio.get_running_loop()

    async def one(number: int) -> LoadProtocol:
        host, port = parse_host_port(settings.endpoints[number % len(settings.endpoints)])
        _, protocol = await asyncio.wait_for(loop.create_connection(make, host, port), _CONNECT_TIMEOUT_S)
        await asyncio.wait_for(protocol.hello, _CONNECT_TIMEOUT_S)
        return protocol

    return list(await asyncio.gather(*(one(first + n) for n in range(count))))


def _close(protocols: list[LoadProtocol]) -> int:
    """Close every connection; the number of requests left unanswered."""
    for protocol in protocols:
        protocol.closing = True
        protocol.transport.close()
    return sum(len(protocol.inflight) for protocol in protocols)


async def preload(settings: Settings, value: bytes) -> float:
    """PUT every key once, so that GETs find them; the seconds it took. Raises on any error."""
    run = _Run(budget=settings.keys)
    run.sending = run.recording = True
    frames, todo, started = request_frames("put", settings.keys, value), iter(range(settings.keys)), time.monotonic()
    protocols = await _connect(settings, min(settings.connections, 16), 0, lambda: _PreloadProtocol(run, frames, todo))
    try:
        for protocol in protocols:
            protocol.start()
        # 1k PUTs/s is far below what a healthy node commits even with fsync on.
        await asyncio.wait_for(asyncio.gather(*(p.done for p in protocols)), 30 + settings.keys / 1000)
    finally:
        _close(protocols)
    if run.errors:
        raise RuntimeError(f"preload: {run.errors} PUTs failed: {run.error_codes}")
    return time.monotonic() - started


# --- one worker process ----------------------------------------------------------------


async def _drive(settings: Settings, index: int, connections: int, pipe: Any, frames: list[bytes]) -> dict:
    loop = asyncio.get_running_loop()
    run = _Run(budget=settings.max_requests // settings.workers)
    prefix = reply_prefix(settings.op)
    rng = random.Random(index)
    order = [rng.randrange(settings.keys) for _ in range(1 << 16)]
    protocols = await _connect(
        settings, connections, index * connections, lambda: LoadProtocol(run, frames, prefix, settings.pipeline, order)
    )
    pipe.send(("ready", None))
    if not await loop.run_in_executor(None, pipe.poll, READY_TIMEOUT_S):
        raise TimeoutError("no start signal from the parent process")
    _, t0 = pipe.recv()
    finished, cpu = loop.create_future(), []

    def at(when: float, callback: Callable[[], None]) -> None:
        loop.call_later(max(0.0, when - time.monotonic()), callback)

    def mark() -> None:
        run.window.append(time.monotonic())
        cpu.append(time.process_time())

    def start() -> None:
        run.sending = True
        for protocol in protocols:
            protocol.start()
        at(t0 + settings.warmup, begin)

    def begin() -> None:
        if not run.window:  # else the request budget ran out in the warm-up
            run.recording = True
            mark()
            at(t0 + settings.warmup + settings.duration, end)

    def end() -> None:
        if run.recording or not run.window:
            run.recording = run.sending = False
            mark()
            if not finished.done():
                finished.set_result(None)

    run.on_budget_exhausted = end
    at(t0, start)
    try:
        await asyncio.wait_for(finished, settings.warmup + settings.duration + 10)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while any(p.inflight for p in protocols) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        unanswered = _close(protocols)
    measured = len(run.window) == 2
    return {
        "ops": len(run.latencies),
        "window_s": run.window[1] - run.window[0] if measured else 0.0,
        "client_cpu_s": cpu[1] - cpu[0] if measured else 0.0,
        "histogram": _histogram(run.latencies),
        "errors": run.errors,
        "error_codes": run.error_codes,
        "unanswered": unanswered,
        "connections_lost": run.connections_lost,
        "budget_exhausted": run.budget_exhausted,
    }


def worker_main(settings: Settings, index: int, connections: int, pipe: Any, frames: list[bytes]) -> None:
    try:
        pipe.send(("result", uvloop.run(_drive(settings, index, connections, pipe, frames))))
    except BaseException as exc:  # the parent reports it; a worker prints no traceback
        try:
            pipe.send(("error", f"worker {index}: {type(exc).__name__}: {exc}"))
        except OSError:  # the parent has gone
            pass
    finally:
        pipe.close()


def _histogram(latencies: array) -> dict[int, int]:
    counts: dict[int, int] = {}
    for seconds in latencies:
        micros = int(seconds * 1e6)
        shift = micros.bit_length() - _HISTOGRAM_BITS
        if shift > 0:
            micros = (micros >> shift) << shift
        counts[micros] = counts.get(micros, 0) + 1
    return counts

