"""Deterministic simulation of a whole kvwire cluster (``python -m kvwire.sim``).

The production node core runs unchanged; a seeded scheduler on virtual time
replaces the asyncio shell, the network and the disk, and injects faults. A
failing seed replays exactly. See README "How a node works".
"""

from .nemesis import FAULT_KINDS
from .run import RunResult, run_seed

__all__ = ["FAULT_KINDS", "RunResult", "run_seed"]
