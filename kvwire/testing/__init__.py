"""Start, kill and pause real kvwire node processes, for our tests and yours.

Like ``trio.testing``, this ships inside the package: anyone embedding kvwire
can run their tests against real nodes on loopback addresses, with real
SQLite files, instead of mocks.

    with NodeProcess("n1", data_dir=tmp_path / "n1") as node:
        client = Client([node.address])
        node.kill()        # kill -9
        node.start(); node.wait_ready()

Every one of them is a :class:`ChildProcess`, which also runs any other
program: started, signalled, stopped with SIGTERM then SIGKILL, its output in
a log file or copied line by line behind a prefix (as ``kvwire up`` does).
"""

from __future__ import annotations

from .certs import DevCerts
from .cluster import LocalCluster, write_auth_file
from .errors import error_classes, sample_error
from .node import (NodeProcess, free_port, free_port_run, held_connections, own_sockets_to, started_together, unread_bytes, wait_for,
                   wait_for_async)
from .process import ChildProcess, LineCopy, resident_bytes, stop_gracefully
from .scripted import ScriptedNode
from .wire import RawConnection, accepts_connections

__all__ = [
    "ChildProcess",
    "DevCerts",
    "LineCopy",
    "LocalCluster",
    "NodeProcess",
    "RawConnection",
    "ScriptedNode",
    "accepts_connections",
    "error_classes",
    "free_port",
    "free_port_run",
    "held_connections",
    "own_sockets_to",
    "resident_bytes",
    "sample_error",
    "started_together",
    "stop_gracefully",
    "unread_bytes",
    "wait_for",
    "wait_for_async",
    "write_auth_file",
]
