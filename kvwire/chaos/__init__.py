"""Chaos testing with real processes: three nodes, concurrent clients, a nemesis, a checked history.

``kvwire chaos`` (``kvwire/cli/chaos.py``) is the command. The pieces, one idea each:

- ``config``: the settings of a run;
- ``nodes``: the cluster, each node under a group id of its own, and what the nodes report;
- ``firewall`` and ``partitions``: iptables DROP rules in a chain of our own, and which links a partition cuts;
- ``workload``: clients recording every operation (``outcomes``: what an error tells them);
- ``nemesis``: kill -9, SIGSTOP and partitions, one at a time, each heal timed;
- ``final``: replica states and final quorum reads once the cluster has converged;
- ``local_reads``: what a ``consistency=one`` read may not return;
- ``run``: one run, cleaned up whatever ends it; ``report``: its summary and files.
- ``workdir``: the nodes' directory under ``--out``, replaced only when a run made it.

The history is checked by ``kvwire.check``. A run is seeded, but real
processes and timers make its interleavings differ from run to run.
"""

from .config import FAULT_KINDS, ChaosConfig
from .run import ChaosInterrupted, ChaosResult, run_chaos

__all__ = ["FAULT_KINDS", "ChaosConfig", "ChaosInterrupted", "ChaosResult", "run_chaos"]
