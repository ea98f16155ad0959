"""Deterministic simulation of a whole kvwire cluster (``python -m kvwire.sim``).

The production node core runs unchanged; a seeded scheduler on virtual time
replaces the asyncio shell, the network and the disk, and injects faults. A
failing seed replays exactly. See README "How a node works".
"""

from importlib import import_module as _import_module

__all__ = ["FAULT_KINDS", "RunResult", "run_seed"]
# Loaded when first asked for, not with the package: ``python -m kvwire.sim`` imports
# this package before its __main__ can take a Ctrl-C, and these bring in the node's core.
_HOMES = {"FAULT_KINDS": ".nemesis", "RunResult": ".run", "run_seed": ".run"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'kvwire.sim' has no attribute {name!r}")
    return getattr(_import_module(_HOMES[name], __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
