"""Start, kill and pause real kvwire node processes, for our tests and yours.

Like ``trio.testing``, this ships inside the package: anyone embedding kvwire
can run their tests against real nodes on loopback addresses, with real
SQLite files, instead of mocks.

    with NodeProcess("n1", data_dir=tmp_path / "n1") as node:
        client = Client([node.address])
        node.kill()        # kill -9
        node.start(); node.wait_ready()
"""

from __future__ import annotations

from .cluster import LocalCluster
from .node import NodeProcess, free_port, free_port_run, wait_for
from .scripted import ScriptedNode
from .wire import RawConnection

__all__ = ["LocalCluster", "NodeProcess", "RawConnection", "ScriptedNode", "free_port", "free_port_run", "wait_for"]
