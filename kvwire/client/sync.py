"""``Client``: the blocking client, a thin shell around ``AsyncClient``.

It runs a private event loop in a daemon thread and hands each call to it with
``run_coroutine_threadsafe``, so connections, pipelining, timeouts and
failover are the async client's code, not a second copy. Calls from several
threads at once are fine: they share the loop and its connections.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import ssl
import threading
import warnings
import weakref
from typing import Any, Coroutine, Iterable, TypeVar

from kvwire.protocol import DEFAULT_LIMITS, Consistency, Limits, Version

from .aio import DEFAULT_ENDPOINT, AsyncClient, PutResult, RetryPolicy, VersionedValue
from .arguments import prepared_put
from .failover import client_closed_error

T = TypeVar("T")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # a runtime dependency, but the client works without it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        # Calls are handed to the loop under this lock, and ``stop`` says so under it:
        # every call handed over before is on the loop's queue ahead of its stop.
        self._handing_over = threading.Lock()
        self._stopping = False
        self.loop = _new_event_loop()
        self.thread = threading.Thread(target=self._run, name="kvwire-client-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # A call another thread handed over just before the stop would otherwise wait
            # forever on a loop that no longer runs: uvloop stops in the middle of a pass
            # over its queue, and what it leaves there may be a call's task not yet started,
            # or the hand-back of one that has finished to its thread. So the loop runs
            # once more (run_until_complete does, even with nothing to wait for), and the
            # calls still running are cancelled. Here, on the loop's own thread: the thread
            # that stops it may be running an event loop of its own (close() inside
            # asyncio.run, or a dropped Client collected there), where this cannot run.
            leftover = asyncio.all_tasks(self.loop)
            for task in leftover:
                task.cancel()
            self.loop.run_until_complete(_settled(leftover))
            self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError("a blocking kvwire Client cannot be called from its own event loop")
        if not self.in_its_process():
            # fork() copies the client but not its loop's thread: the call would wait forever.
            coroutine.close()
            raise RuntimeError("this kvwire Client was made before fork(), and its event loop runs only in the "
                               "parent process; make a Client in the child (after the fork), and nothing was sent")
        with self._handing_over:
            if self._stopping:
                coroutine.close()
                raise client_closed_error()
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._stopping:  # cancelled by stop(): the client was closed during this call
                raise client_closed_error() from None
            raise
        except BaseException:
            # KeyboardInterrupt and friends: don't leave the call running behind our back.
            future.cancel()
            raise

    def in_its_process(self) -> bool:
        """False in a child made by fork(), where the loop's thread does not run."""
        return os.getpid() == self._pid

    def stop(self) -> None:
        """Stop the loop; its thread then cancels what still runs, closes it, and ends
        (waited for, unless this is that thread)."""
        with self._handing_over:
            self._stopping = True
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join()


def _close_abandoned(runner: _LoopThread, client: AsyncClient) -> None:
    """A Client collected (or left at exit) without close(): close it now."""
    if not runner.in_its_process():
        return
    warnings.warn(f"kvwire Client of {', '.join(client.endpoints)} was never closed; use `with Client(...)` or "
                  "call close()", ResourceWarning, stacklevel=2)
    _close_on(runner, client)


def _close_on(runner: _LoopThread, client: AsyncClient) -> None:
    """Close ``client``'s connections on ``runner``'s loop, then stop that loop."""
    if threading.current_thread() is runner.thread:
        # Called on that loop (collected there), which cannot wait for itself: close
        # there, then stop.
        runner.loop.create_task(client.close()).add_done_callback(lambda _closed: runner.stop())
        return
    try:
        runner.run(client.close())
    finally:
        runner.stop()


async def _settled(tasks: set[asyncio.Task]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


class Client:
    """A blocking client for a kvwire cluster, with the methods of :class:`AsyncClient`.

    ``endpoints`` is a list of ``"host:port"`` strings or one comma-separated
    string. ``timeout`` (seconds) bounds each call, including connecting and
    failing over, and raises ``KvwireTimeoutError``; every method accepts its
    own ``timeout=`` too. ``connect_timeout`` bounds each connection attempt,
    HELLO included (default: ``retry.attempt_timeout``, or ``timeout`` if
    smaller). ``cluster`` makes every node prove it belongs to that cluster
    id. ``tls``, ``ca``, ``cert`` and ``key`` are the async client's: TLS,
    the CA that signed the nodes' certificates, and a client certificate.
    Failover is the async client's: after a lost connection, a silent
    node or an UNAVAILABLE reply a call is retried on another node, as
    ``retry`` (a :class:`RetryPolicy`) says.

    Use it as ``with Client(...) as client:``, or call :meth:`close`, which
    also stops the client's background thread.
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
        # Built first so bad arguments raise before a thread exists.
        self._async = AsyncClient(
            endpoints, timeout=timeout, connect_timeout=connect_timeout, cluster=cluster, retry=retry, limits=limits,
            token=token, tls=tls, ca=ca, cert=cert, key=key,
        )
        self._lock = threading.Lock()
        self._runner: _LoopThread | None = _LoopThread()
        # A client dropped without close() would keep its thread, its event loop and
        # its sockets for the life of the process (a client probe made 30 in a loop:
        # 31 threads): closed when collected, with a ResourceWarning, as asyncio's
        # transports and subprocess.Popen warn.
        self._finalizer = weakref.finalize(self, _close_abandoned, self._runner, self._async)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._async.endpoints

    @property
    def closed(self) -> bool:
        return self._runner is None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Client {','.join(self.endpoints)} {state}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        runner = self._runner
        if runner is None:
            coroutine.close()
            raise client_closed_error()
        return runner.run(coroutine)

    # Each method states its signature and docstring for help(); the body
    # only hands the matching AsyncClient call to the loop thread.

    def get(self, key: str, *, consistency: str | Consistency | None = None, timeout: float | None = None) -> Any:
        """The value stored under ``key``; raises KeyNotFoundError (a KeyError) if there is none.

        ``consistency`` is ``"quorum"`` (the node's default: linearizable) or
        ``"one"`` (the contacted node's copy, which may be stale but needs no
        quorum).
        """
        return self._run(self._async.get(key, consistency=consistency, timeout=timeout))

    def get_with_version(
        self, key: str, *, consistency: str | Consistency | None = None, timeout: float | None = None
    ) -> VersionedValue:
        """Like :meth:`get`, but returns ``(value, version)``."""
        return self._run(self._async.get_with_version(key, consistency=consistency, timeout=timeout))

    def put(self, key: str, value: Any, *, timeout: float | None = None, request_id: str | None = None) -> Version:
        """Store ``value`` under ``key``; returns the new version.

        ``value`` may be None, bool, int, float, str, bytes, or lists and dicts
        (with str or bytes keys) of those; tuples come back as lists. Each put
        carries a request id (``request_id``, or a random one), so that if the
        connection fails after it was sent and it is retried on another node,
        it is applied once (docs/protocol.md 6.4, "Retrying a PUT"). A
        NoQuorumError's ``maybe_applied`` says whether the put may have been
        applied (True) or was written nowhere (False); None: the node did not say.
        """
        return self.put_with_result(key, value, timeout=timeout, request_id=request_id).version

    def put_with_result(self, key: str, value: Any, *, timeout: float | None = None,
                        request_id: str | None = None) -> PutResult:
        """Like :meth:`put`, but returns ``(version, created)``: whether the key was absent before.

        A put retried after a failover may have been applied by the first
        attempt; the retry then reports ``created=False``.
        """
        # Checked and packed here, in the caller's thread: on the loop thread every
        # call of this client shares, a large value held the others' calls.
        return self._run(self._async._put(key, prepared_put(value, request_id), timeout=timeout))

    def delete(self, key: str, *, timeout: float | None = None) -> Version:
        """Delete ``key``; returns the version of the tombstone.

        Raises KeyNotFoundError (a KeyError) if there is nothing to delete (a
        DELETE is sent again only where its first try wrote nothing, unless
        ``RetryPolicy.retry_on`` says otherwise: then it may mean the first try
        deleted it); ConflictError
        if it raced with a write of the key and may or may not have taken
        effect; NoQuorumError as for :meth:`put`.
        """
        return self._run(self._async.delete(key, timeout=timeout))

    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The health report of the node that answers."""
        return self._run(self._async.health(timeout=timeout))

    def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip a PING; returns the seconds it took."""
        return self._run(self._async.ping(timeout=timeout))

    def close(self) -> None:
        """Close every connection (at once, as :meth:`AsyncClient.close` does) and stop the
        background thread; safe to call twice."""
        with self._lock:
            runner, self._runner = self._runner, None
        self._finalizer.detach()
        if runner is None or not runner.in_its_process():
            return  # closed already, or a copy made by fork(): the parent's client is the parent's to close
        _close_on(runner, self._async)
