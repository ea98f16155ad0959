"""Helpers for the REST tests: a real ``kvwire bridge`` process and a small HTTP client."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

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


