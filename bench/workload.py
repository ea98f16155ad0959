"""What a load run asks for: the op mix, the keys and their distribution, the encoded frames.

Frames are encoded once, before the run, by ``kvwire.protocol.encode``; a
request's id is its key's index (``bench.load_connection`` keeps one request
per key in flight on a connection, so ids stay unique).
"""

from __future__ import annotations

import bisect
import itertools
import random
from array import array

from kvwire.protocol import (
    Consistency,
    Delete,
    DeleteReply,
    Get,
    GetReply,
    Put,
    PutReply,
    Version,
    encode,
)

OPS = ("get", "put", "delete")
DISTRIBUTIONS = ("uniform", "zipfian")
# YCSB's constant: the hottest 1 % of 10,000 keys take about half of the requests.
ZIPF_THETA = 0.99
# Each worker draws (op, key) pairs up front and cycles through them: random
# enough, and free of per-request random calls. At least twice --keys, so that
# every key can come up; a power of two, so that a mask wraps the position.
MIN_SEQUENCE_LENGTH = 1 << 16
MAX_KEYS = 1_000_000


def sequence_length(keys: int) -> int:
    return max(MIN_SEQUENCE_LENGTH, 1 << (2 * keys - 1).bit_length())


def parse_mix(text: str) -> dict[str, int]:
    """``"get=90,put=10"`` -> {"get": 90, "put": 10}; a bare op is 100 % of it."""
    text = text.strip().lower()
    if text in OPS:
        return {text: 1}
    mix: dict[str, int] = {}
    for part in text.split(","):
        op, sep, weight = part.strip().partition("=")
        if op not in OPS or not sep:
            raise ValueError(f"--mix wants OP=WEIGHT[,OP=WEIGHT...] with OP in {', '.join(OPS)}, got {text!r}")
        if op in mix:
            raise ValueError(f"--mix names {op} twice")
        try:
            mix[op] = int(weight)
        except ValueError:
            raise ValueError(f"--mix weight for {op} must be a whole number, got {weight!r}") from None
        if mix[op] < 0:
            raise ValueError(f"--mix weight for {op} must not be negative")
    if not any(mix.values()):
        raise ValueError("--mix weights add up to 0")
    return {op: weight for op, weight in mix.items() if weight}


def mix_name(mix: dict[str, int]) -> str:
    if len(mix) == 1:
        return next(iter(mix))
    total = sum(mix.values())
    return "/".join(f"{op}{100 * weight / total:g}" for op, weight in mix.items())


def key_name(index: int) -> str:
    return f"key:{index:08d}"


def encode_requests(op: str, keys: int, value: bytes, consistency: str | None = None) -> list[bytes]:
    """One encoded request per key, its id being the key's index."""
    if op == "get":
        level = Consistency(consistency) if consistency else None
        return [encode(Get(i, key_name(i), level)) for i in range(keys)]
    if op == "put":
        return [encode(Put(i, key_name(i), value)) for i in range(keys)]
    return [encode(Delete(i, key_name(i))) for i in range(keys)]


def reply_prefixes() -> frozenset[bytes]:
    """The bytes each successful reply's payload starts with, up to its id, as the codec writes them."""
    prefixes = set()
    for reply in (GetReply(0, None, Version(1, "n")), PutReply(0, Version(1, "n"), True), DeleteReply(0, Version(1, "n"))):
        payload = encode(reply)[4:]
        prefix = payload[: payload.find(b"\xa2id") + 3]
        if payload[len(prefix)] != 0:  # the id, 0, as a positive fixint
            raise RuntimeError("kvwire.protocol no longer writes op and id first; update bench.workload")
        prefixes.add(prefix)
    if len({len(prefix) for prefix in prefixes}) != 1:
        raise RuntimeError("reply prefixes differ in length; bench.load_connection compares one slice")
    return frozenset(prefixes)


def key_sequence(keys: int, distribution: str, rng: random.Random, length: int) -> array:
    """Key indices drawn uniformly or from a scrambled zipfian distribution, as YCSB does."""
    if distribution == "uniform":
        return array("i", [rng.randrange(keys) for _ in range(length)])
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) ** ZIPF_THETA for rank in range(keys)))
    total = cumulative[-1]
    # Scrambled so that the hot keys are spread over the key space, not its first indices.
    scramble = list(range(keys))
    random.Random(0x5EED).shuffle(scramble)
    return array("i", [scramble[min(keys - 1, bisect.bisect_left(cumulative, rng.random() * total))] for _ in range(length)])


def op_sequence(mix: dict[str, int], rng: random.Random, length: int) -> array:
    """Op indices (into ``OPS``) in the proportions of ``mix``."""
    ops, weights = [OPS.index(op) for op in mix], list(mix.values())
    return array("b", rng.choices(ops, weights, k=length))
