"""What one ``kvwire bench`` load run is asked to do, checked before anything starts.

Each check's message names the command-line option, so the command line
reports it as it stands.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import asdict, dataclass, field
from typing import Any

from kvwire.bench.workload import DISTRIBUTIONS, MAX_KEYS, OPS
from kvwire.protocol import Consistency, parse_host_port
from kvwire.tls import optional_client_context

DEFAULT_MAX_REQUESTS = 100_000_000
_MAX_FRAME_TABLE_BYTES = 512 * 1024 * 1024
CONSISTENCIES = tuple(level.value for level in Consistency)
# "python": the uvloop generator (bench.load_worker); "native": the compiled one (bench.native).
GENERATORS = ("python", "native")
# A shorter --duration can end before any reply is back: a loopback round trip
# under load takes milliseconds, and a worker may get no scheduler slice at all.
MIN_DURATION_S = 0.1


@dataclass(frozen=True)
class Settings:
    endpoints: tuple[str, ...] = ("127.0.0.1:7379",)
    mix: dict[str, int] = field(default_factory=lambda: {"get": 1})
    connections: int = 50
    pipeline: int = 1
    workers: int = 1
    duration: float = 10.0
    warmup: float = 1.0
    value_size: int = 100
    keys: int = 10_000
    distribution: str = "uniform"
    consistency: str | None = None
    rate: float | None = None
    max_requests: int = DEFAULT_MAX_REQUESTS
    server_pids: tuple[int, ...] = ()
    # TLS to the nodes (kvwire.tls): on with tls or any of the files, which are
    # the CA that signed the nodes' certificates and a client certificate.
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # The access token each connection says HELLO with, for nodes with an auth file.
    token: str | None = field(default=None, repr=False)
    generator: str = "python"

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("give at least one --endpoint")
        for endpoint in self.endpoints:
            parse_host_port(endpoint)  # its ValueError quotes the input
        if not self.mix or set(self.mix) - set(OPS) or min(self.mix.values()) <= 0:
            raise ValueError(f"--mix must give positive weights to some of {', '.join(OPS)}, got {self.mix}")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"--workers must be 1-64, got {self.workers}")
        if not self.workers <= self.connections <= 10_000:
            raise ValueError(f"--connections must be from --workers ({self.workers}) to 10000, got {self.connections}")
        if not 1 <= self.pipeline <= 1024:
            raise ValueError(f"--pipeline must be 1-1024, got {self.pipeline}")
        if not MIN_DURATION_S <= self.duration <= 3600:
            raise ValueError(f"--duration must be in [{MIN_DURATION_S:g}, 3600] seconds, got {self.duration:g}")
        if not 0 <= self.warmup <= 600:
            raise ValueError(f"--warmup must be in [0, 600] seconds, got {self.warmup:g}")
        if self.value_size < 0:
            raise ValueError(f"--value-size must be at least 0, got {self.value_size}")
        if self.max_requests < self.workers:
            raise ValueError(f"--requests must be at least --workers ({self.workers}), got {self.max_requests}")
        # Half the key space free on each connection keeps picking a key not in flight quick.
        if not 2 * self.pipeline <= self.keys <= MAX_KEYS:
            raise ValueError(f"--keys must be at least 2 x --pipeline ({2 * self.pipeline}) and at most {MAX_KEYS}, "
                             f"got {self.keys}")
        if self.keys * (self.value_size + 64) > _MAX_FRAME_TABLE_BYTES:
            raise ValueError("--keys x --value-size exceeds 512 MiB of precomputed frames; lower one of them")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"--distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}")
        if self.consistency is not None and self.consistency not in CONSISTENCIES:
            raise ValueError(f"--consistency must be one of {', '.join(CONSISTENCIES)}, got {self.consistency!r}")
        if self.rate is not None and not 0 < self.rate <= 10_000_000:
            raise ValueError(f"--rate must be in (0, 10000000] requests/s, got {self.rate:g}")
        if self.generator not in GENERATORS:
            raise ValueError(f"--generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        if self.generator == "native":
            self._check_native()
        self.ssl_context()  # a missing or unloadable file: its TlsConfigError (a ValueError) names it

    def _check_native(self) -> None:
        """The compiled generator does the plain closed loop: one op, uniform keys, no pipelining, no TLS."""
        unsupported = [
            option for option, used in (
                ("a --mix of more than one op", len(self.mix) > 1),
                # Its replies are good or bad by op alone, and a DELETE's NOT_FOUND is an answer.
                ("--mix delete", "delete" in self.mix),
                ("--pipeline above 1", self.pipeline != 1),
                ("--workers above 1", self.workers != 1),
                ("--rate", self.rate is not None),
                ("--requests", self.max_requests != DEFAULT_MAX_REQUESTS),
                ("--distribution zipfian", self.distribution != "uniform"),
                ("TLS", self.tls or bool(self.tls_ca or self.tls_cert or self.tls_key)),
            ) if used
        ]
        if unsupported:
            raise ValueError(f"--generator native does not support {', '.join(unsupported)}; "
                             "use the default --generator python for those")

    def summary(self) -> dict[str, Any]:
        """The settings as a result reports them: no process ids, and never the token."""
        return {key: value for key, value in asdict(self).items() if key not in ("server_pids", "token")}

    def ssl_context(self) -> ssl.SSLContext | None:
        """What every connection dials with; None for plain TCP. Built once per process."""
        return _ssl_context(self.tls, self.tls_ca, self.tls_cert, self.tls_key)

    @property
    def preloads(self) -> bool:
        """Runs that read or delete first PUT every key, so that they find them."""
        return bool(set(self.mix) - {"put"})


@functools.lru_cache(maxsize=4)
def _ssl_context(tls: bool, ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    # One context for all of a run's connections: loading the files per
    # connection would cost more than the handshake.
    return optional_client_context(tls, ca=ca, cert=cert, key=key)
