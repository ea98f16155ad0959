"""Size limits that bound what a peer can make us buffer or allocate."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024

# Room in a frame for everything but the key and the value: op, id, field
# names and a version tag take well under 100 bytes; 1 KiB leaves slack.
FRAME_OVERHEAD_BYTES = 1024


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


DEFAULT_LIMITS = Limits()
