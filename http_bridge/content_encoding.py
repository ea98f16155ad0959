"""A PUT body's ``Content-Encoding``, decoded by the bridge: one whole stream, or refused.

aiohttp's own decoding (``auto_decompress``) stored a gzip body cut short
before its trailer (no CRC, no length) as if it were whole, and refused a
deflate stream without its final block from deep in its parser, as a
"malformed HTTP request: deflate" that closed the connection. So the bridge
reads a body as it was sent and decodes it here: it must be exactly one
complete gzip member or deflate stream, with nothing after it, and it is
inflated to at most ``--max-body-bytes`` (a small body that inflates past the
limit is a 413 that costs no more memory than the limit).
"""

from __future__ import annotations

import zlib

from aiohttp import web

from kvwire.protocol.errors import BadRequestError

CONTENT_ENCODINGS = frozenset({"identity", "gzip", "deflate"})
# A zlib stream's first byte names the deflate method (CM = 8, RFC 1950); some
# clients send raw deflate (RFC 1951) as "deflate" instead, as aiohttp accepts too.
_DEFLATE_METHOD = 8


def decoded_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """``body`` decoded as its ``Content-Encoding`` header says (one the bridge
    accepts, CONTENT_ENCODINGS); BadRequestError when it is not one complete
    stream, 413 when it inflates past ``limit`` bytes."""
    name = "identity" if encoding is None else encoding.strip().lower()
    if name == "identity":
        return body
    if name == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    else:
        wbits = zlib.MAX_WBITS if body[:1] and body[0] & 0x0F == _DEFLATE_METHOD else -zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequestError(f"the {name} body is corrupt: {exc}") from None
    if len(data) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(data))
    if not decompressor.eof:
        raise BadRequestError(f"the {name} body ends before its stream does (cut short, or not {name} at all)")
    if decompressor.unused_data:
        raise BadRequestError(f"the {name} body goes on after its stream's end "
                              f"({len(decompressor.unused_data)} bytes); send one stream")
    return data
