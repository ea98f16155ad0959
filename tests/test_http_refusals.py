"""Requests aiohttp's parser refuses are answered in JSON too (http_bridge/json_refusals.py).

Real ``kvwire bridge`` processes, raw bytes over TCP, on the fast path (which
hands such a connection to aiohttp) and with aiohttp serving everything.
"""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from kvwire.http_bridge.config import DEFAULT_MAX_BODY_BYTES as MAX_BODY_BYTES
from kvwire.http_bridge.json_refusals import refusal_message
from rest_helpers import PREFIX, BridgeProcess, http, raw_exchange

KEY = f"{PREFIX}/kv/refusals/"


@pytest.fixture(scope="module", params=["fast-path", "aiohttp"])
def bridge(request, shared_node, tmp_path_factory):
    args = ["--no-fast-path"] if request.param == "aiohttp" else []
    process = BridgeProcess([shared_node.address], log_path=tmp_path_factory.mktemp("bridge") / "bridge.log", args=args)
    with process:
        yield process
    assert "Traceback" not in process.log()


def put(headers: str, body: bytes = b'{"value": 1}') -> bytes:
    return f"PUT {KEY} HTTP/1.1\r\nHost: localhost\r\n{headers}".encode() + b"\r\n" + body


@pytest.mark.parametrize("request_bytes, fragment", [
    (f"get {KEY} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(), "Invalid method"),
    (f"BREW {KEY} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(), "malformed HTTP request"),
    (put("Content-Length: 12\r\nContent-Length: 12\r\n"), "Duplicate Content-Length"),
    (put("Content-Length: +12\r\n"), "malformed HTTP request"),
    (f"GET {KEY} HTTP/1.1\r\n\r\n".encode(), "Host"),
    (f"GET {KEY} HTTP/1.1\r\nHost: localhost\r\nX-Long: {'a' * 9000}\r\n\r\n".encode(), "malformed HTTP request"),
    (f"GET {KEY} HTTP/1.1\r\nHost: localhost\r\n folded\r\n\r\n".encode(), "malformed HTTP request"),
    (b"\x00\x00\x00\x05hello", "malformed HTTP request"),
    (f"GET {PREFIX}/kv/{'x' * 17000}/ HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(), "Got more than"),
    (f"GET {KEY} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {'s' * 17000}\r\n\r\n".encode(),
     "malformed HTTP request"),
])
def test_a_request_aiohttp_cannot_read_is_answered_in_json_and_others_go_on(bridge, request_bytes, fragment):
    (response,) = raw_exchange(bridge.port, request_bytes)
    assert response.status == 400
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    error = json.loads(response.body)["error"]
    assert fragment.lower() in error.lower(), error
    assert "\n" not in error and "Please install" not in error and "^" not in error
    # The client's own bytes stay out, a token's first characters among them (a REST probe's finding).
    assert "bytearray" not in error and "b'" not in error and "xxxxxxxx" not in error and "ssssssss" not in error
    assert http("PUT", f"{bridge.url}{KEY}", {"value": "after"}).status in (200, 201)


def test_a_put_body_with_a_member_besides_value_is_400_and_stores_nothing(bridge):
    # A typo or a "ttl" was dropped unnoticed and the value stored (a REST probe's finding).
    url = f"{bridge.url}{PREFIX}/kv/with-extras/"
    refused = http("PUT", url, {"value": 1, "ttl": 60, "tags": []})
    assert refused.status == 400, refused
    assert refused.json["error"] == ('the request body may hold only "value", not also \'tags\', \'ttl\': kvwire '
                                     "keeps a value per key and nothing else (no TTL, no metadata)")
    assert http("GET", url).status == 404


def test_the_refusal_is_one_line_without_the_echoed_bytes():
    assert refusal_message(400, "Invalid method encountered:\n\n  b'get'\n    ^") == \
        "malformed HTTP request: Invalid method encountered"
    assert refusal_message(400, "Can not decode content-encoding: brotli (br). Please install `Brotli`") == \
        "malformed HTTP request: Can not decode content-encoding: brotli (br)"
    assert refusal_message(400, "Got more than 16384 bytes when reading: bytearray(b'/kv-store/v1/kv/xx').") == \
        "malformed HTTP request: Got more than 16384 bytes when reading"
    assert refusal_message(400, None) == "malformed HTTP request (400 Bad Request)"
    assert refusal_message(500, "boom") == "internal error in the HTTP bridge; the bridge's log has the details"


@pytest.mark.parametrize("encoding", ["foo", "gzip, gzip", "compress", "br", "zstd"])
def test_a_content_encoding_the_bridge_cannot_decode_is_415_and_stores_nothing(bridge, encoding):
    key = f"{PREFIX}/kv/encoded-{encoding.replace(', ', '-')}/"
    reply = http("PUT", f"{bridge.url}{key}", raw=b'{"value": "coded"}', headers={"Content-Encoding": encoding})
    assert reply.status == 415, reply.text
    assert reply.json["error"] == f"unsupported Content-Encoding {encoding!r}; the bridge decodes deflate, gzip, identity"
    assert reply.headers["Accept-Encoding"] == "deflate, gzip, identity"
    assert http("GET", f"{bridge.url}{key}").status == 404


def _deflated(data: bytes, wbits: int, *, finish: bool = True) -> bytes:
    compressor = zlib.compressobj(wbits=wbits)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if finish else zlib.Z_SYNC_FLUSH)


JSON_BODY = b'{"value": "unzipped"}'
# gzip bodies are made with mtime=0: they are part of the tests' ids, which every
# pytest-xdist worker must collect alike (the current second differed between two).


@pytest.mark.parametrize("encoding, body", [
    ("gzip", gzip.compress(JSON_BODY, mtime=0)),
    ("GZip ", gzip.compress(JSON_BODY, mtime=0)),
    ("deflate", zlib.compress(JSON_BODY)),  # RFC 1950, as the standard says
    ("deflate", _deflated(JSON_BODY, -zlib.MAX_WBITS)),  # raw deflate, as some clients send it
    ("identity", JSON_BODY),
])
def test_a_coded_body_is_read(bridge, encoding, body):
    key = f"{bridge.url}{PREFIX}/kv/coded-{encoding.strip()}-{len(body)}/"
    assert http("PUT", key, raw=body, headers={"Content-Encoding": encoding}).status in (200, 201)
    assert http("GET", key).json["value"] == "unzipped"


@pytest.mark.parametrize("encoding, body, error", [
    ("gzip", b"notgzip", "the gzip body is corrupt: "),
    ("gzip", gzip.compress(JSON_BODY, mtime=0)[:-8], "the gzip body ends before its stream does"),  # no CRC, no length
    ("gzip", gzip.compress(JSON_BODY, mtime=0)[:-4], "the gzip body ends before its stream does"),
    ("gzip", gzip.compress(JSON_BODY, mtime=0)[:-1], "the gzip body ends before its stream does"),
    ("gzip", gzip.compress(JSON_BODY, mtime=0) + b"tail", "the gzip body goes on after its stream's end (4 bytes)"),
    ("gzip", gzip.compress(JSON_BODY, mtime=0) * 2, "the gzip body goes on after its stream's end"),
    ("gzip", b"", "the gzip body ends before its stream does"),
    ("deflate", _deflated(JSON_BODY, zlib.MAX_WBITS, finish=False), "the deflate body ends before its stream does"),
    ("deflate", zlib.compress(JSON_BODY)[:-1], "the deflate body ends before its stream does"),
])
def test_a_coded_body_that_is_not_one_whole_stream_is_400_and_stores_nothing(bridge, encoding, body, error):
    key = f"{bridge.url}{PREFIX}/kv/cut-{encoding}-{len(body)}/"
    reply = http("PUT", key, raw=body, headers={"Content-Encoding": encoding})
    assert reply.status == 400, reply.text
    assert reply.json["error"].startswith(error) and "\n" not in reply.json["error"], reply.json
    assert http("GET", key).status == 404
    assert http("PUT", f"{bridge.url}{KEY}", {"value": "after"}).status in (200, 201)


def test_a_small_body_that_inflates_past_the_limit_is_413(bridge):
    bomb = gzip.compress(b" " * (MAX_BODY_BYTES + 1))  # a few KiB on the wire
    key = f"{bridge.url}{PREFIX}/kv/bomb/"
    reply = http("PUT", key, raw=bomb, headers={"Content-Encoding": "gzip"})
    assert reply.status == 413, reply.text
    assert reply.json["error"] == f"the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
    within = gzip.compress(b'{"value": 1}' + b" " * (MAX_BODY_BYTES - 12))  # exactly the limit: taken
    assert http("PUT", key, raw=within, headers={"Content-Encoding": "gzip"}).status in (200, 201)


@pytest.mark.parametrize("segment, key", [("%2E", "."), ("%2e%2E", ".."), ("%2E%2E%2E", "...")])
def test_the_location_of_a_dot_key_names_it_and_not_the_path_above(bridge, segment, key):
    url = f"{bridge.url}{PREFIX}/kv/{segment}/"
    http("DELETE", url)
    reply = http("PUT", url, {"value": key})
    assert reply.status == 201, reply.text
    location = reply.headers["Location"]
    assert location == f"{PREFIX}/kv/{'%2E' * len(key)}/"
    # urllib resolves dot segments as a browser would: %2E is no dot segment.
    assert http("GET", f"{bridge.url}{location}").json == {"key": key, "value": key,
                                                           "version": reply.json["version"]}


@pytest.mark.parametrize("request_bytes", [
    f"GET {KEY} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),  # the fast path's answer (or aiohttp's)
    f"POST {KEY} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".encode(),  # aiohttp's 405
    f"GET {KEY} HTTP/1.1\r\nHost: attacker.example\r\n\r\n".encode(),  # the Host check's 421
    f"get {KEY} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),  # the parser's refusal
])
def test_every_answer_tells_browsers_not_to_sniff_it(bridge, request_bytes):
    (response,) = raw_exchange(bridge.port, request_bytes)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-content-type-options"] == "nosniff", response.headers


@pytest.mark.parametrize("path", [KEY, f"{PREFIX}/health/", f"{PREFIX}/nowhere"])
def test_an_expectation_other_than_100_continue_is_417_in_json_on_every_route(bridge, path):
    (response,) = raw_exchange(bridge.port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\nExpect: foo\r\n\r\n".encode())
    assert response.status == 417
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert json.loads(response.body) == {"error": "Unknown Expect: foo"}
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("request_bytes, error", [
    (f"GET {KEY}?consistency=one&consistency=bogus HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),
     "consistency is given 2 times; give it once"),
    (f"GET {KEY} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n".encode(),
     "Authorization is given 2 times; give it once"),
    (f"DELETE {KEY} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n".encode(),
     "Authorization is given 2 times; give it once"),
    (put("Content-Length: 12\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n"),
     "Idempotency-Key is given 2 times; give it once"),
    (put("Content-Length: 12\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\n"),
     "Content-Encoding is given 2 times; give it once"),
])
def test_a_field_given_twice_is_400_not_one_of_them_guessed(bridge, request_bytes, error):
    """Which of two counts is not to be guessed: a proxy in front may have gone by the other."""
    http("PUT", f"{bridge.url}{KEY}", {"value": "before"})
    (response,) = raw_exchange(bridge.port, request_bytes)
    assert response.status == 400 and json.loads(response.body)["error"] == error, response.body
    assert http("GET", f"{bridge.url}{KEY}").json["value"] == "before"  # nothing written or deleted
