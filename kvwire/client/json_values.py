"""Stored values and versions as JSON, shared by ``kvwire-cli`` and the HTTP bridge.

msgpack has bytes and JSON has not, so bytes travel as ``{"$bytes": "<base64>"}``
in both directions, and bytes map keys (output only) as ``"$bytes:<base64>"``.
A version is ``{"counter": C, "node": N}``. The module is part of the client
library (public, but not re-exported by ``kvwire.client``) so that the bridge
and the CLI share it without the bridge importing the CLI.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from kvwire.protocol import Version

BYTES_TAG = "$bytes"

# Standard base64 with exact padding. Python 3.11's b64decode(validate=True)
# also takes padding after a complete quantum ("AAAA="): almost right, refused.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_BASE64 = re.compile(BASE64_PATTERN)


def decode_bytes(obj: dict[str, Any]) -> Any:
    """``json.loads`` object hook: ``{"$bytes": "<base64>"}`` becomes bytes; ValueError if malformed."""
    if len(obj) == 1 and BYTES_TAG in obj:
        encoded = obj[BYTES_TAG]
        if not isinstance(encoded, str) or not _BASE64.fullmatch(encoded):
            raise ValueError(f'{{"{BYTES_TAG}": ...}} must hold a base64 string, got {encoded!r}')
        return base64.b64decode(encoded, validate=True)
    return obj


def jsonable(value: Any) -> Any:
    """``value`` with bytes (values and map keys) in their JSON form."""
    if isinstance(value, (bytes, bytearray)):
        return {BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {_json_key(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def _json_key(key: Any) -> Any:
    if isinstance(key, (bytes, bytearray)):
        return f"{BYTES_TAG}:{base64.b64encode(key).decode('ascii')}"
    return key


def version_json(version: Version) -> dict[str, Any]:
    return {"counter": version.counter, "node": version.node}
