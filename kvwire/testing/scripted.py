"""A node in the test's own process whose every answer the test decides.

For tests of what a client, a bridge or a real node does when the node at the
other end says something particular (a refusal, CONFLICT, silence), with real
TCP and the real codec, and nothing else of a node behind them.

    async with ScriptedNode(lambda request: Pong(request.id)) as node:
        client = AsyncClient([node.address])
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable

from ..protocol import NEED_DATA, Connection, Hello, HelloReply, PROTOCOL_VERSION, Side, encode
from ..protocol.messages import Message


class ScriptedNode:
    """Answers each request with ``answer(request)``: a reply, or None (the default
    answer: nothing, except for HELLO), or ``ScriptedNode.SILENT`` (nothing at all).

    HELLO, unless ``answer`` returns something for it, gets the HELLO_REPLY of
    node ``node_id`` of ``cluster`` (with ``limits``, if given). With
    ``greeting``, every connection instead gets those bytes at once and is
    closed, as a node at its connection limit does. ``received`` lists every
    request; ``connections`` counts the connections accepted.
    """

    SILENT = object()

    def __init__(
        self,
        answer: Callable[[Message], Message | None] = lambda request: None,
        *,
        node_id: str = "scripted",
        cluster: str = "kvwire",
        limits: dict | None = None,
        greeting: bytes | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self._answer = answer
        self._hello = lambda request: HelloReply(request.id, PROTOCOL_VERSION, node_id, cluster, limits)
        self._greeting = greeting
        self._host = host
        self._server: asyncio.AbstractServer | None = None
        self.received: list[Message] = []
        self.connections = 0
        self.address = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._greeting is not None:
            writer.write(self._greeting)
            writer.close()
            return
        codec = Connection(Side.NODE)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                codec.receive_data(data)
                while (request := codec.next_event()) is not NEED_DATA:
                    self.received.append(request)
                    reply: Any = self._answer(request)
                    if reply is None and isinstance(request, Hello):
                        reply = self._hello(request)
                    if reply is not None and reply is not self.SILENT:
                        writer.write(encode(reply))
        writer.close()

    async def __aenter__(self) -> ScriptedNode:
        self._server = await asyncio.start_server(self._serve, self._host, 0)
        self.address = "%s:%d" % (self._host, self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
