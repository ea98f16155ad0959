"""A node in the test's own process whose every answer the test decides.

For tests of what a client, a bridge, the CLI or a real node does when the
node at the other end says something particular (a refusal, CONFLICT,
garbage, silence), with real TCP and the real codec, and nothing else of a
node behind them.

    async with ScriptedNode(lambda request: Pong(request.id), answers_hello=False) as node:
        client = AsyncClient([node.address])

    with ScriptedNode(answer) as node:      # blocking code: it runs on a thread of its own
        subprocess.run(["kvwire-cli", "--endpoints", node.address, "get", "k"])
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from typing import Any, Callable

from ..protocol import NEED_DATA, PROTOCOL_VERSION, Connection, Hello, HelloReply, Role, Side, encode
from ..protocol.peer_auth import ACCEPTOR, new_nonce, peer_proof
from ..protocol.messages import Message

# How long the blocking form waits for its thread to start or stop the listener.
_THREAD_TIMEOUT = 10.0


class ScriptedNode:
    """A listener speaking the protocol, answering each request with ``answer(request)``.

    What ``answer`` returns is sent back:

    - a message: encoded and sent;
    - ``bytes``: sent as they are (garbage, a broken frame, a reply with the
      wrong id), for tests of what a peer does with a bad reply;
    - None: nothing, except that HELLO gets the default HELLO_REPLY;
    - ``ScriptedNode.SILENT``: nothing at all, HELLO included;
    - an awaitable (``answer`` may be ``async def``): awaited in a task of its
      own, so a slow answer holds up no other request (a PING still gets its
      PONG), and its result is sent as above.

    The default HELLO_REPLY is that of node ``node_id`` of ``cluster``, with
    ``limits`` (a :meth:`Limits.to_wire` dict) if given, and, given the
    cluster ``secret``, the node's proof of it for a peer (so a real node
    with that secret links to it). With
    ``answers_hello=False``, HELLO always gets it and ``answer`` sees only the
    requests after it, so a one-line ``answer`` need not tell HELLO apart.
    With ``greeting``, every connection instead gets those bytes at once and is
    closed, as a node at its connection limit does.

    ``received`` lists every request, HELLO included; ``connections`` counts
    the connections accepted; ``address`` is ``"host:port"`` once started.

    Use it as ``async with`` on the test's event loop, or as ``with`` from
    blocking code: it then runs on an event loop in a thread of its own, and
    ``answer`` is called on that thread.
    """

    SILENT = object()

    def __init__(
        self,
        answer: Callable[[Message], Any] = lambda request: None,
        *,
        answers_hello: bool = True,
        node_id: str = "scripted",
        cluster: str = "kvwire",
        limits: dict | None = None,
        greeting: bytes | None = None,
        host: str = "127.0.0.1",
        secret: bytes | None = None,
    ) -> None:
        self._answer = answer
        self._answers_hello = answers_hello
        self._node_id, self._cluster, self._limits, self._secret = node_id, cluster, limits, secret
        self._greeting = greeting
        self._host = host
        self._server: asyncio.AbstractServer | None = None
        # Closed on exit: server.close() stops accepting but leaves open connections open.
        self._writers: set[asyncio.StreamWriter] = set()
        # Waited for on exit, so that no task outlives the node.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self.received: list[Message] = []
        self.connections = 0
        self.address = ""

    # --- serving ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._track(asyncio.current_task())
        if self._greeting is not None:
            writer.write(self._greeting)
            writer.close()
            return
        self._writers.add(writer)
        codec = Connection(Side.NODE)
        try:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    codec.receive_data(data)
                    while (request := codec.next_event()) is not NEED_DATA:
                        self.received.append(request)
                        self._respond(request, writer)
        finally:
            self._writers.discard(writer)
            writer.close()

    def _respond(self, request: Message, writer: asyncio.StreamWriter) -> None:
        if isinstance(request, Hello) and not self._answers_hello:
            reply: Any = None
        else:
            reply = self._answer(request)
        if inspect.isawaitable(reply):
            self._track(asyncio.ensure_future(self._respond_later(request, reply, writer)))
            return
        self._send(request, reply, writer)

    async def _respond_later(self, request: Message, reply: Any, writer: asyncio.StreamWriter) -> None:
        self._send(request, await reply, writer)

    def _send(self, request: Message, reply: Any, writer: asyncio.StreamWriter) -> None:
        if reply is None and isinstance(request, Hello):
            reply = self._hello(request)
        if reply is None or reply is self.SILENT or writer.is_closing():
            return
        writer.write(reply if isinstance(reply, bytes) else encode(reply))

    def _hello(self, request: Hello) -> HelloReply:
        """The default HELLO_REPLY; to a peer's first HELLO, with the acceptor's
        half of the handshake when the node was given the cluster ``secret``."""
        nonce = proof = None
        if self._secret is not None and request.role is Role.PEER and request.nonce is not None:
            nonce = new_nonce()
            proof = peer_proof(self._secret, ACCEPTOR, self._cluster, request.node or "", self._node_id,
                               request.nonce, nonce)
        return HelloReply(request.id, PROTOCOL_VERSION, self._node_id, self._cluster, self._limits, nonce, proof)

    def _track(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- on the test's event loop -------------------------------------------------------

    async def __aenter__(self) -> ScriptedNode:
        self._server = await asyncio.start_server(self._serve, self._host, 0)
        self.address = "%s:%d" % (self._host, self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()  # ends each connection's read loop
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_THREAD_TIMEOUT)

    # --- from blocking code, on a thread of its own ---------------------------------------

    def __enter__(self) -> ScriptedNode:
        loop = self._thread_loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name=f"scripted-node-{id(self):x}", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.__aenter__(), loop).result(_THREAD_TIMEOUT)
        except BaseException:
            self._stop_thread()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._thread_loop is not None, "__exit__ without __enter__"
        try:
            asyncio.run_coroutine_threadsafe(self.__aexit__(), self._thread_loop).result(_THREAD_TIMEOUT)
        finally:
            self._stop_thread()

    def _stop_thread(self) -> None:
        loop, thread = self._thread_loop, self._thread
        assert loop is not None and thread is not None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_THREAD_TIMEOUT)
        if not thread.is_alive():
            loop.close()
        self._thread_loop = self._thread = None
