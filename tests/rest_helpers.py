"""Helpers for the REST tests: a real ``kvwire bridge`` process and a small HTTP client."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Sequence

from kvwire.testing.bridge import REST_PREFIX, BridgeProcess, rest_answers, with_http  # noqa: F401 - the REST tests import it from here

PREFIX = REST_PREFIX


@dataclass
class Reply:
    status: int
    headers: Any
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


def http(method: str, url: str, body: Any = None, *, raw: bytes | None = None, headers: dict | None = None,
         timeout: float = 15.0, ssl_context: ssl.SSLContext | None = None) -> Reply:
    """One request; any status comes back as a Reply (urllib raises for >= 400). HTTPS trusts ``ssl_context``."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=ssl_context) as response:
            return Reply(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read().decode())


answers = rest_answers




@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


def read_response(stream, *, head: bool = False) -> RawResponse:
    """One HTTP/1.1 response from ``stream`` (a socket's ``makefile("rb")``); ``head``: it answers a HEAD."""
    line = stream.readline()
    if not line:
        raise ConnectionError("the connection closed before a response")
    status = int(line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if head or 100 <= status < 200 or status in (204, 304):
        body = b""
    elif "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while (size := int(stream.readline().split(b";")[0], 16)) > 0:
            parts.append(stream.read(size))
            stream.readline()
        stream.readline()
        body = b"".join(parts)
    else:
        body = stream.read()  # until the server closes
    return RawResponse(status, headers, body)


def raw_exchange(port: int, data: bytes, *, heads: Sequence[bool] = (False,), shut_write: bool = False,
                 timeout: float = 15.0) -> list[RawResponse]:
    """Send ``data`` (one request or several, pipelined) on a new connection to 127.0.0.1:``port``;
    read one response for each item of ``heads`` (True where that request is a HEAD), skipping
    interim 1xx responses. ``shut_write``: half-close after sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        stream = sock.makefile("rb")
        responses = []
        for head in heads:
            response = read_response(stream, head=head)
            while 100 <= response.status < 200:
                response = read_response(stream, head=head)
            responses.append(response)
        return responses
