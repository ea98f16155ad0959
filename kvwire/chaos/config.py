"""The settings of one chaos run, checked once."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..check import DEFAULT_MAX_STEPS
from .workdir import check_replaceable

FAULT_KINDS = ("kill", "pause", "partition", "stop")
# Settings `kvwire chaos` has no option for.
_API_ONLY = {"op_timeout", "recovery_timeout", "converge_timeout", "fault_hold", "fault_gap"}


def _named(name: str) -> str:
    """How an error names a setting: as the option `kvwire chaos` takes for it (what
    the user typed), or as the field for a setting only the API has."""
    return name if name in _API_ONLY else "--" + name.replace("_", "-")


@dataclass(frozen=True)
class ChaosConfig:
    duration: float = 30.0
    seed: int = field(default_factory=lambda: random.SystemRandom().randrange(2**32))
    clients: int = 6
    # Of ``clients``, how many go through kvwire's own client library (AsyncClient:
    # its failover, retries and request ids) rather than one raw connection per
    # node; None: a third of them, rounded down (2 of the default 6).
    library_clients: int | None = None
    faults: tuple[str, ...] = FAULT_KINDS
    out: Path | None = None
    # Keys written at one time; each is retired after ops_per_key operations, so
    # every key's history stays short enough for the per-key linearizability
    # search (Knossos and Porcupine stay tractable only while each key's history is short).
    keys: int = 8
    ops_per_key: int = 200
    # The checker's search budget per key: a key whose search runs past it makes
    # the run undecided, which is not a violation found.
    max_steps: int = DEFAULT_MAX_STEPS
    # An upper bound on the load, all clients together; the history a 30 s run
    # hands the checker stays around 20k operations.
    rate: float = 600.0
    # Above the nodes' 1 s write timeout, so a write without a majority comes
    # back as NO_QUORUM rather than as a client timeout.
    op_timeout: float = 2.0
    # How long a fault lasts, and the calm between two faults (seconds, drawn uniformly).
    fault_hold: tuple[float, float] = (1.0, 3.0)
    fault_gap: tuple[float, float] = (0.5, 1.5)
    # How long to wait, after healing one fault, for the nodes to see one another UP.
    recovery_timeout: float = 20.0
    # How long to wait at the end for every peer UP and every hint delivered.
    converge_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("duration", "rate", "op_timeout", "recovery_timeout", "converge_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"{_named(name)} must be a positive number, got {value!r}")
        for name in ("clients", "keys", "ops_per_key", "max_steps"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{_named(name)} must be a positive integer, got {value!r}")
        if self.library_clients is not None and (
                type(self.library_clients) is not int or not 0 <= self.library_clients <= self.clients):
            raise ValueError(f"--library-clients must be an integer from 0 to --clients ({self.clients}), "
                             f"got {self.library_clients!r}")
        if type(self.seed) is not int or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed!r}")
        unknown = [kind for kind in self.faults if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind {unknown[0]!r}; choose from {', '.join(FAULT_KINDS)}")
        if len(set(self.faults)) != len(self.faults):
            raise ValueError(f"faults lists a kind twice: {','.join(self.faults)}")
        for name in ("fault_hold", "fault_gap"):
            low, high = getattr(self, name)
            if not 0 <= low <= high < math.inf:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {(low, high)!r}")
        if self.out is not None:
            check_replaceable(Path(self.out))  # refused now, not after the user's nodes/ is gone

    @property
    def library(self) -> int:
        """How many of the clients go through the client library."""
        return self.clients // 3 if self.library_clients is None else self.library_clients

    @property
    def max_ops(self) -> int:
        """The most operations the clients may issue in all: the rate over the whole duration."""
        return math.ceil(self.rate * self.duration)


def parse_faults(text: str) -> tuple[str, ...]:
    """``"kill,pause"`` -> ``("kill", "pause")``; ``"none"`` -> no faults. An empty
    list is refused: a run without faults is asked for by name, not by accident."""
    if text.strip().lower() == "none":
        return ()
    faults = tuple(part.strip() for part in text.split(",") if part.strip())
    if not faults:
        raise ValueError(f"--faults {text!r} names no fault kind; give some of {', '.join(FAULT_KINDS)}, or none")
    return faults
