"""Size limits that bound what a peer can make us buffer or allocate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024

# Room in a frame for everything but the key and the value: op, id, field
# names and a version tag take well under 100 bytes; 1 KiB leaves slack.
FRAME_OVERHEAD_BYTES = 1024

# msgpack's integers run from the most negative int64 to the largest uint64;
# the client refuses an int outside this range, the bridge stores one as a float.
MSGPACK_MIN_INT = -(2**63)
MSGPACK_MAX_INT = 2**64 - 1

# Anti-entropy (docs/protocol.md 6.12): keys fall into this many buckets by
# CRC-32 of their UTF-8 bytes; one DIGESTS carries 8 bytes for each (8 KiB).
# 1,024 keeps a bucket near 100 keys at 100,000 keys and near 1,000 at a million.
REPAIR_BUCKETS = 1024
# Entries in one SYNC page: at the 1 KiB key limit a page stays near 1 MiB,
# inside the default 4 MiB frame limit.
MAX_SYNC_ENTRIES = 1000

# A DIGESTS frame, header included (docs/protocol.md 6.12): fixed by REPAIR_BUCKETS.
DIGESTS_FRAME_BYTES = 8223
# A SYNC entry's bytes beside its key: [key, counter, node id, deleted] with the key's
# str header, a counter of up to 9 bytes and a node id of up to 64 characters, rounded up.
SYNC_ENTRY_OVERHEAD_BYTES = 96


def anti_entropy_frame_bytes(max_key_bytes: int) -> int:
    """The longest frame anti-entropy may send with keys of up to ``max_key_bytes``:
    a DIGESTS, a SYNC page of MAX_SYNC_ENTRIES entries, or a SYNC_REPLY whose
    ``wanted`` and ``offered`` hold as many keys each."""
    per_entry = max(max_key_bytes + SYNC_ENTRY_OVERHEAD_BYTES, 2 * (max_key_bytes + 5))
    return max(DIGESTS_FRAME_BYTES, FRAME_OVERHEAD_BYTES + MAX_SYNC_ENTRIES * per_entry)


# The longest frame a node with an auth file takes from a connection no HELLO has given
# an accepted token (docs/protocol.md 9): HELLO (a token of up to 4 KiB, a peer's
# nonce and proof), PING and HEALTH need far less, and reading 64 KiB of the costliest
# msgpack takes a node's event loop some 15 ms, where a client frame's 1 MiB took 0.3-0.6 s.
UNAUTHENTICATED_FRAME_BYTES = 64 * 1024

# Records in one REQUESTS_REPLY page (the reference node also bounds a page's
# bytes by its frame limit: kvwire.server.core.node).
MAX_REQUEST_RECORDS = 500

# Counters are stored in SQLite's signed 64-bit INTEGER.
MAX_COUNTER = 2**63 - 1
# A PUT's request id: a UUID or a base64 token fits; every node remembers
# recent ones, so they are bounded.
MAX_REQUEST_ID_CHARS = 128

# The entries of HELLO_REPLY's ``limits`` map, in the order they are written.
WIRE_NAMES = ("max_key_bytes", "max_value_bytes", "max_frame_bytes")


@dataclass(frozen=True, slots=True)
class Limits:
    # A frame's length is checked against this before any byte of its payload
    # is buffered, so one connection can pin at most this much memory.
    max_frame_bytes: int = 4 * MIB
    # Keys are index entries held in memory for every stored key; 1 KiB keeps
    # a million keys' index near a gigabyte at worst.
    max_key_bytes: int = 1024
    # Measured as the msgpack encoding of the value, which is what is stored.
    max_value_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        for name in ("max_frame_bytes", "max_key_bytes", "max_value_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_frame_bytes > 0xFFFFFFFF:
            raise ValueError("max_frame_bytes must fit the 4-byte length prefix (at most 4294967295)")
        needed = self.max_key_bytes + self.max_value_bytes + FRAME_OVERHEAD_BYTES
        if self.max_frame_bytes < needed:
            raise ValueError(
                f"max_frame_bytes ({self.max_frame_bytes}) must be at least max_key_bytes + "
                f"max_value_bytes + {FRAME_OVERHEAD_BYTES} ({needed}), or a request carrying "
                "the largest allowed key and value could not be sent"
            )

    @property
    def client_frame_bytes(self) -> int:
        """The largest frame a node takes from a connection that is not a peer link:
        the largest request there is (a PUT of the largest key and value) and no more.
        ``max_frame_bytes`` is for peer links' messages (DIGESTS, SYNC pages), and
        reading a frame costs a node about 0.2 s a MiB of the costliest msgpack (a
        million empty maps), all of it on its event loop."""
        return min(self.max_frame_bytes, self.max_key_bytes + self.max_value_bytes + FRAME_OVERHEAD_BYTES)

    def widened_to(self, other: Limits) -> Limits:
        """Each limit the larger of the two: what one side may be sent when the other's
        limits are larger than its own."""
        return Limits(**{name: max(getattr(self, name), getattr(other, name)) for name in WIRE_NAMES})

    def to_wire(self) -> dict[str, int]:
        """The ``limits`` map of a HELLO_REPLY (docs/protocol.md 6.1)."""
        return {name: getattr(self, name) for name in WIRE_NAMES}

    @classmethod
    def from_wire(cls, data: Any) -> Limits:
        """Limits from a HELLO_REPLY's ``limits`` map; raises ValueError.

        The three entries are required and checked as a node's own options
        are; entries with other names are ignored, so a later version can add
        limits without breaking older clients.
        """
        if type(data) is not dict:
            raise ValueError(f"limits must be a map, got {type(data).__name__}")
        missing = [name for name in WIRE_NAMES if name not in data]
        if missing:
            raise ValueError(f"limits lacks {', '.join(missing)}")
        return cls(**{name: data[name] for name in WIRE_NAMES})


DEFAULT_LIMITS = Limits()
