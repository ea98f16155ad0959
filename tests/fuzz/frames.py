"""The fuzzer's bytes as a kvwire byte stream: mostly frames a sender could write.

Random bytes almost never get past the length check and msgpack, so the fuzz
input mostly steers a builder instead: each frame is usually a msgpack map
with a real op code, its real field names (read from the message classes, so
fields added later are fuzzed too) and values of about the right type, written
in any msgpack form (docs/protocol.md 10.1). A minority of the choices break
something: a wrong type, a missing or repeated field, nil, an int out of
range, invalid UTF-8, an extension type, nesting near the 1024 limit, a wrong
or huge length, a truncated frame, or plain random bytes.

Every choice reads the fuzz input through ``FuzzedDataProvider``, which gives
0 once the input is used up; choice 0 is always the ordinary, valid one, so a
short input builds valid frames and the fuzzer spends bytes on breaking them.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, fields

import atheris

from kvwire.protocol import DEFAULT_LIMITS, Limits, Side, frame, messages
from kvwire.protocol.codec import HEADER

# Small enough that keys and values cross the limits often (the node's
# TOO_LARGE paths); the frame limit is the least Limits allows for them.
SMALL_LIMITS = Limits(max_frame_bytes=1100, max_key_bytes=8, max_value_bytes=64)

# Every message class, by op code, and its fields after ``id`` in wire order.
_CLASSES = {
    cls.op: cls
    for cls in vars(messages).values()
    if isinstance(cls, type) and isinstance(getattr(cls, "op", None), messages.Op)
}
FIELDS: dict[int, tuple[str, ...]] = {
    int(op): tuple(f.name for f in fields(cls) if f.name != "id") for op, cls in _CLASSES.items()
}
REQUEST_OPS = sorted(op for op in FIELDS if op < messages.REPLY_BIT)
REPLY_OPS = sorted(op for op in FIELDS if op >= messages.REPLY_BIT)
_ALL_FIELD_NAMES = sorted({name for names in FIELDS.values() for name in names})

# Inputs build at most this many frames, and values nest at most this deep
# (apart from the deliberate deep chains): enough for pipelining and nesting,
# while one input stays well under a millisecond of building.
MAX_FRAMES = 12
_MAX_VALUE_DEPTH = 4

# The pools below are lists because FuzzedDataProvider.PickValueInList takes no tuple.
# A few keys, so that PUT, GET, DELETE and REPLICATE of one input meet; the
# longer ones straddle SMALL_LIMITS.max_key_bytes (8 bytes; "clé" is 4).
_KEYS = ["k", "user:42", "clé", "a", "12345678", "123456789", "ключ"]
_NODE_IDS = ["n1", "n2", "n3", ""]
_COUNTERS = [0, 1, 2, 3, 7, 2**31, 2**63 - 1]
_OUT_OF_RANGE_COUNTERS = [-1, 2**63, 2**64 - 1, -(2**63)]
_BIG_IDS = [2**64 - 1, 2**63, 2**32, 2**32 - 1]
# Nesting depths of a value around the limit of 1024 containers in a payload,
# the message map included (docs/protocol.md 4.3), and around Python's default
# recursion limit of 1000 frames, which code walking a value recursively can
# reach at a third of that (the codec's search for timestamps did, at 331).
_DEEP = [100, 330, 340, 600, 990, 998, 1000, 1021, 1022, 1023, 1024, 1030]
_UNKNOWN_FIELDS = ["auth", "nonce", "mac", "x", "ttl"]
# An HTTP peer's first 4 bytes, where a frame's length belongs (docs/protocol.md 2).
_HTTP_HEADERS = [b"GET ", b"POST", b"HTTP", b"DELE", b"PATC"]

# msgpack integer forms: (first byte, struct format, lowest, highest), shortest first.
_INT_FORMS = (
    (0xCC, ">B", 0, 2**8 - 1),
    (0xD0, ">b", -(2**7), 2**7 - 1),
    (0xCD, ">H", 0, 2**16 - 1),
    (0xD1, ">h", -(2**15), 2**15 - 1),
    (0xCE, ">I", 0, 2**32 - 1),
    (0xD2, ">i", -(2**31), 2**31 - 1),
    (0xCF, ">Q", 0, 2**64 - 1),
    (0xD3, ">q", -(2**63), 2**63 - 1),
)
# Length-prefixed forms: (first byte, struct format, highest length), shortest first.
_STR_FORMS = ((0xD9, ">B", 2**8 - 1), (0xDA, ">H", 2**16 - 1), (0xDB, ">I", 2**32 - 1))
_BIN_FORMS = ((0xC4, ">B", 2**8 - 1), (0xC5, ">H", 2**16 - 1), (0xC6, ">I", 2**32 - 1))
_ARRAY_FORMS = ((0xDC, ">H", 2**16 - 1), (0xDD, ">I", 2**32 - 1))
_MAP_FORMS = ((0xDE, ">H", 2**16 - 1), (0xDF, ">I", 2**32 - 1))


# --- one fuzz input ------------------------------------------------------------------------

# The first byte of an input holds these flags, the second seeds the chunking,
# and the rest steers the builder (or, for RAW inputs, is the stream itself,
# which is how the spec's vectors become seeds).
RAW = 0x07  # the three low bits all set: one input in eight
SMALL = 0x08  # the receiver runs with SMALL_LIMITS
EOF = 0x10  # the stream ends after the last byte (a clean close only between frames)
OTHER_HALF = 0x20  # the codec target receives as the client; the node target's session is a peer
IN_CLUSTER = 0x40  # the node target's node is one of three, its two peers down


@dataclass(slots=True)
class FuzzInput:
    flags: int
    limits: Limits
    stream: bytes
    frames: int  # frames built; a RAW stream counts as one
    chunks: list[bytes]
    eof: bool


def plan(data: bytes, side: Side) -> FuzzInput:
    """The byte stream, its chunking and the receiver's settings for one fuzz input.

    ``side`` is the receiver: a node is mostly sent requests, a client replies.
    """
    flags = data[0] if data else 0
    chunk_seed = data[1] if len(data) > 1 else 0
    limits = SMALL_LIMITS if flags & SMALL else DEFAULT_LIMITS
    if flags & RAW == RAW:
        stream, count = bytes(data[2:]), 1
    else:
        stream, count = StreamBuilder(data[2:], side, limits).build()
    return FuzzInput(flags, limits, stream, count, split(stream, chunk_seed), bool(flags & EOF))


def seed(flags: int, stream: bytes) -> bytes:
    """The fuzz input that replays ``stream`` as it is, in one chunk."""
    return bytes([flags | RAW, 0]) + stream


def split(stream: bytes, chunk_seed: int) -> list[bytes]:
    """``stream`` in non-empty chunks as TCP might deliver it: whole, byte by byte, or cut at random.

    Never an empty chunk: ``receive_data(b"")`` means the end of the stream.
    """
    mode = chunk_seed % 4
    if not stream:
        return []
    if mode == 0:
        return [stream]
    if mode == 1 and len(stream) <= 512:  # byte by byte costs a call per byte: short streams only
        return [stream[i : i + 1] for i in range(len(stream))]
    rng = random.Random(chunk_seed)
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, 1 + chunk_seed % 8)))
    bounds = [0, *cuts, len(stream)]
    return [stream[start:end] for start, end in zip(bounds, bounds[1:])]


# --- msgpack, in any form ------------------------------------------------------------------


class StreamBuilder:
    def __init__(self, data: bytes, side: Side, limits: Limits) -> None:
        self.fdp = atheris.FuzzedDataProvider(data)
        self.limits = limits
        self.own_ops, self.other_ops = (REQUEST_OPS, REPLY_OPS) if side is Side.NODE else (REPLY_OPS, REQUEST_OPS)

    def build(self) -> tuple[bytes, int]:
        """The stream and the number of frames in it."""
        fdp = self.fdp
        out = []
        for _ in range(fdp.ConsumeIntInRange(1, MAX_FRAMES)):
            out.append(self._frame())
            if not fdp.remaining_bytes():  # the rest would all be the same default frame
                break
        return b"".join(out), len(out)

    # --- choices ---

    def _rare(self, one_in: int) -> bool:
        """True once in ``one_in`` draws; False when the input is used up."""
        return self.fdp.ConsumeIntInRange(0, one_in - 1) == one_in - 1

    def _form(self, candidates: list) -> object:
        """Usually the shortest form, as the reference encoder writes; any other now and then."""
        return candidates[0] if not self._rare(8) else self.fdp.PickValueInList(candidates)

    # --- msgpack primitives ---

    def int_(self, value: int) -> bytes:
        candidates = []
        if 0 <= value <= 0x7F or -32 <= value < 0:
            candidates.append(struct.pack(">b", value) if value < 0 else bytes([value]))
        candidates += [bytes([first]) + struct.pack(fmt, value) for first, fmt, lo, hi in _INT_FORMS if lo <= value <= hi]
        return self._form(candidates)

    def str_(self, data: bytes | str) -> bytes:
        data = data.encode() if isinstance(data, str) else data
        candidates = [bytes([0xA0 | len(data)])] if len(data) <= 31 else []
        candidates += [bytes([first]) + struct.pack(fmt, len(data)) for first, fmt, hi in _STR_FORMS if len(data) <= hi]
        return self._form(candidates) + data

    def bin_(self, data: bytes) -> bytes:
        candidates = [bytes([first]) + struct.pack(fmt, len(data)) for first, fmt, hi in _BIN_FORMS if len(data) <= hi]
        return self._form(candidates) + data

    def array_header(self, count: int) -> bytes:
        candidates = [bytes([0x90 | count])] if count <= 15 else []
        return self._form(candidates + [bytes([first]) + struct.pack(fmt, count) for first, fmt, hi in _ARRAY_FORMS])

    def map_header(self, count: int) -> bytes:
        candidates = [bytes([0x80 | count])] if count <= 15 else []
        return self._form(candidates + [bytes([first]) + struct.pack(fmt, count) for first, fmt, hi in _MAP_FORMS])

    def float_(self, value: float) -> bytes:
        if self._rare(4):
            try:
                return b"\xca" + struct.pack(">f", value)
            except OverflowError:  # too large for float 32
                pass
        return b"\xcb" + struct.pack(">d", value)

    def map_(self, entries: list[tuple[bytes, bytes]]) -> bytes:
        return self.map_header(len(entries)) + b"".join(key + value for key, value in entries)

    # --- values (docs/protocol.md 4.3) ---

    def value(self, depth: int = 0) -> bytes:
        fdp = self.fdp
        if self._rare(64):
            return self._bad_value(depth)
        kind = fdp.ConsumeIntInRange(0, 9)
        if kind == 0:
            return b"\xc0"
        if kind == 1:
            return b"\xc3" if fdp.ConsumeBool() else b"\xc2"
        if kind == 2:
            return self.int_(fdp.ConsumeIntInRange(-(2**63), 2**64 - 1))
        if kind == 3:
            return self.int_(fdp.PickValueInList([0, 1, -1, 127, 128, -32, -33, 255, 256, 2**63 - 1, -(2**63), 2**64 - 1]))
        if kind == 4:
            return self.float_(fdp.ConsumeFloat())  # NaN, infinities and -0.0 included
        if kind == 5:
            return self.str_(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)))
        if kind == 6:
            return self.bin_(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)))
        if kind == 7:  # long enough to cross SMALL_LIMITS.max_value_bytes, or a frame limit
            return self.str_("v" * fdp.PickValueInList([50, 63, 64, 65, 300, 1100, 5000]))
        if depth >= _MAX_VALUE_DEPTH:
            return b"\xc0"
        count = fdp.ConsumeIntInRange(0, 4)
        if kind == 8:
            return self.array_header(count) + b"".join(self.value(depth + 1) for _ in range(count))
        return self.map_([(self._map_key(), self.value(depth + 1)) for _ in range(count)])

    def _map_key(self) -> bytes:
        fdp = self.fdp
        if self._rare(32):
            return self.fdp.PickValueInList([self.int_(1), b"\xc0", b"\x90", b"\xcb" + bytes(8)])  # not str or bin
        if fdp.ConsumeBool():
            return self.bin_(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 3)))
        # Short keys from a small alphabet, so that maps repeat keys now and then.
        return self.str_(fdp.PickValueInList(["a", "b", "id", "op", "é", ""]))

    def _bad_value(self, depth: int) -> bytes:
        """Something no value may be, or a value at the edge of a limit."""
        fdp = self.fdp
        kind = fdp.ConsumeIntInRange(0, 7)
        if kind == 0:  # an extension type, of any type code and length
            length = fdp.PickValueInList([1, 2, 4, 8, 16, 0, 3, 12])
            first = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}.get(length)
            head = first or b"\xc7" + bytes([length])
            return head + struct.pack(">b", fdp.ConsumeIntInRange(-128, 127)) + fdp.ConsumeBytes(length).ljust(length, b"\0")
        if kind == 1:  # the timestamp type (-1), which msgpack decodes itself, in its three encodings
            return fdp.PickValueInList([b"\xd6\xff" + bytes(4), b"\xd7\xff" + bytes(8), b"\xc7\x0c\xff" + bytes(12)])
        if kind == 2:  # a chain of containers around the nesting limit
            levels = fdp.PickValueInList(_DEEP) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 1100)
            link = b"\x91" if fdp.ConsumeBool() else b"\x81\xa1a"
            return link * levels + self.value(_MAX_VALUE_DEPTH)
        if kind == 3:  # a string that is not UTF-8
            return self.str_(fdp.PickValueInList([b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x80b"]) + fdp.ConsumeBytes(3))
        if kind == 4:  # a byte msgpack never uses
            return b"\xc1"
        if kind == 5:  # a container announcing more than the payload holds
            return fdp.PickValueInList([b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff"])
        if kind == 6:  # a map repeating a key
            key, item = self._map_key(), self.value(depth + 1)
            return self.map_([(key, item), (key, self.value(depth + 1))])
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))  # anything at all

    # --- fields (docs/protocol.md 6) ---

    def field(self, name: str) -> bytes:
        """A value of about the right type for the field ``name``."""
        fdp = self.fdp
        if name == "key":
            return self._key()
        if name in ("version", "expect"):
            return self._version()
        if name in ("deleted", "created", "applied", "maybe_applied"):
            return b"\xc3" if fdp.ConsumeBool() else b"\xc2"
        if name == "proto":
            return self.int_(messages.PROTOCOL_VERSION if not self._rare(8) else fdp.ConsumeIntInRange(0, 300))
        if name == "role":
            return self._one_of(["client", "peer"], ["Peer", "admin", ""])
        if name == "consistency":
            return self._one_of(["quorum", "one"], ["all", "ONE", ""])
        if name in ("cluster", "node"):
            return self._one_of(["kvwire", "n1", "n2"], ["other", ""])
        if name == "code":
            return self.int_(fdp.ConsumeIntInRange(1, 10) if not self._rare(8) else fdp.ConsumeIntInRange(0, 2**64 - 1))
        if name == "message":
            return self.str_(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)))
        if name == "limits":
            return self._limits()
        if name == "token":
            return self._one_of(["t" * 16, "t" * 64], ["", "short"])
        if name in ("nonce", "proof"):  # bin of 16 to 64 and of 32 bytes (kvwire.protocol.peer_auth)
            valid = [16, 32, 64] if name == "nonce" else [32]
            length = fdp.PickValueInList(valid if not self._rare(8) else [0, 15, 31, 33, 65])
            return self.bin_(fdp.ConsumeBytes(length).ljust(length, b"\0"))
        if name == "health":
            return self.map_([(self.str_(fdp.PickValueInList(["status", "node_id", "x"])), self.value(1))
                              for _ in range(fdp.ConsumeIntInRange(0, 3))])
        return self.value()  # "value", and any field added since this was written

    def _key(self) -> bytes:
        fdp = self.fdp
        kind = fdp.ConsumeIntInRange(0, 31)
        if kind <= 23:
            return self.str_(fdp.PickValueInList(_KEYS))
        if kind <= 26:
            return self.str_(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 12)))
        if kind == 27:
            return self.str_("")
        if kind == 28:  # around the default limit of 1024 UTF-8 bytes; "é" is 2 of them
            return self.str_(fdp.PickValueInList(["k", "é"]) * fdp.ConsumeIntInRange(510, 1030))
        if kind == 29:
            return self.bin_(b"k")
        return self.value()  # anything, usually of the wrong type

    def _one_of(self, valid: list[str], invalid: list[str]) -> bytes:
        """One of the strings a field allows, or once in eight draws one it does not."""
        return self.str_(self.fdp.PickValueInList(valid if not self._rare(8) else invalid))

    def _version(self) -> bytes:
        fdp = self.fdp
        counter = fdp.PickValueInList(_COUNTERS) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 20)
        node = fdp.PickValueInList(_NODE_IDS)
        kind = fdp.ConsumeIntInRange(0, 31)
        if kind <= 27:
            return self.array_header(2) + self.int_(counter) + self.str_(node)
        if kind == 28:
            return self.array_header(2) + self.int_(fdp.PickValueInList(_OUT_OF_RANGE_COUNTERS)) + self.str_(node)
        if kind == 29:  # one element too few or too many
            return fdp.PickValueInList([self.array_header(1) + self.int_(counter),
                                        self.array_header(3) + self.int_(counter) + self.str_(node) + b"\xc0"])
        if kind == 30:  # the node id as bin, or the counter as a float
            return self.array_header(2) + fdp.PickValueInList([self.int_(counter) + self.bin_(node.encode()),
                                                               self.float_(float(counter)) + self.str_(node)])
        return self.value()

    def _limits(self) -> bytes:
        fdp = self.fdp
        chosen = fdp.PickValueInList([DEFAULT_LIMITS, SMALL_LIMITS]).to_wire()
        entries = []
        for name, number in chosen.items():
            kind = fdp.ConsumeIntInRange(0, 15)
            if kind == 15:
                continue  # missing
            if kind == 14:
                number = fdp.PickValueInList([0, -1, 2**32, 2**64 - 1, 1])
            entries.append((self.str_(name), self.int_(number) if kind != 13 else self.value()))
        if self._rare(4):
            entries.append((self.str_("max_nesting"), self.int_(1024)))  # an entry of a later version
        return self.map_(entries)

    # --- messages and frames (docs/protocol.md 2 and 3) ---

    def message(self) -> bytes:
        """One payload: usually a message map, sometimes broken in one of many ways."""
        fdp = self.fdp
        entries: list[tuple[bytes, bytes]] = []
        # The op: usually one this side accepts; else one of the other half
        # (28), any number (29), not a number (30), or none (31). The fields
        # are those of a real op either way.
        kind = fdp.ConsumeIntInRange(0, 31)
        op = fdp.PickValueInList(self.own_ops) if kind <= 27 else fdp.PickValueInList(self.other_ops)
        op_entry = (self.str_("op"), self.int_(op))
        if kind == 29:
            op_entry = (self.str_("op"), self.int_(fdp.ConsumeIntInRange(0, 300)))
        elif kind == 30:
            op_entry = (self.str_("op"), self.value())
        if kind != 31:  # else no op at all
            entries.append(op_entry)
        entries += self._id_entries()
        for name in FIELDS[op]:
            entries += self._field_entries(name)
        if self._rare(8):  # fields unknown to this version, which a receiver ignores
            name = fdp.PickValueInList(_UNKNOWN_FIELDS + _ALL_FIELD_NAMES)
            entries.append((self.str_(name), self.field(name)))
        if self._rare(8):  # field order is free (docs/protocol.md 3.2)
            random.Random(fdp.ConsumeIntInRange(0, 255)).shuffle(entries)
        count = len(entries) + (fdp.PickValueInList([1, -1]) if self._rare(64) else 0)
        payload = self.map_header(max(count, 0)) + b"".join(key + value for key, value in entries)
        if self._rare(128):
            payload = self.array_header(len(entries)) + b"".join(value for _, value in entries)  # not a map
        if self._rare(128):
            payload += self.value()  # trailing bytes after the map
        return payload

    def _id_entries(self) -> list[tuple[bytes, bytes]]:
        fdp = self.fdp
        name = self.str_("id")
        kind = fdp.ConsumeIntInRange(0, 127)
        if kind <= 121:  # small ids repeat, as a careless client's might
            return [(name, self.int_(fdp.ConsumeIntInRange(0, 40)))]
        if kind == 122:
            return [(name, self.int_(fdp.PickValueInList(_BIG_IDS)))]
        if kind == 123:
            return [(name, b"\xc0")]  # nil: valid in an ERROR only
        if kind == 124:
            return [(name, self.int_(fdp.ConsumeIntInRange(-(2**63), -1)))]
        if kind == 125:
            return [(name, self.value())]
        if kind == 126:
            return []
        return [(name, self.int_(1)), (name, self.int_(fdp.ConsumeIntInRange(0, 2)))]

    def _field_entries(self, name: str) -> list[tuple[bytes, bytes]]:
        fdp = self.fdp
        kind = fdp.ConsumeIntInRange(0, 31)
        key = self.str_(name) if not self._rare(64) else self.bin_(name.encode())  # bin is not that field
        if kind <= 26:
            return [(key, self.field(name))]
        if kind == 27:
            return []
        if kind == 28:
            return [(key, b"\xc0")]  # nil, refused in every field but a value
        if kind == 29:
            return [(key, self.value())]
        if kind == 30:
            return [(key, self.field(name)), (key, self.field(name))]
        return [(key, self.field(name)), (self.str_(fdp.PickValueInList(_UNKNOWN_FIELDS)), self.value())]

    def _frame(self) -> bytes:
        fdp = self.fdp
        kind = fdp.ConsumeIntInRange(0, 63)
        payload = self.message()
        if kind <= 57:
            return frame(payload)
        if kind == 58:  # a well-framed payload of random bytes
            return frame(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64)))
        if kind == 59:  # random bytes where a frame belongs
            return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
        if kind == 60:  # a length that is not the payload's
            length = fdp.PickValueInList([0, len(payload) - 1, len(payload) + 1, self.limits.max_frame_bytes,
                                          self.limits.max_frame_bytes + 1, 2**32 - 1])
            return HEADER.pack(max(length, 0)) + payload
        if kind == 61:  # cut short: the stream ends or the next frame begins inside it
            whole = frame(payload)
            return whole[: fdp.ConsumeIntInRange(0, len(whole) - 1)]
        if kind == 62:  # one byte changed
            whole = bytearray(frame(payload))
            whole[fdp.ConsumeIntInRange(0, len(whole) - 1)] = fdp.ConsumeIntInRange(0, 255)
            return bytes(whole)
        return fdp.PickValueInList(_HTTP_HEADERS) + b"/ HTTP/1.1\r\nHost: kvwire\r\n\r\n"
