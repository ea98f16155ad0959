"""``kvwire serve`` and ``kvwire bridge`` raise their open-files limit for the connections they may accept.

Real processes started under ``prlimit`` (util-linux) with a low soft limit,
as a shell's ``ulimit -n 1024`` or less starts them.
"""

from __future__ import annotations

import shutil
import socket
import sys

import pytest

from kvwire.http_bridge.linger import MAX_LINGERING
from kvwire.protocol import Ping, Pong
from kvwire.testing import ChildProcess, NodeProcess, RawConnection, free_port, wait_for


def open_files_limit(pid: int) -> tuple[int, int]:
    """The process's soft and hard RLIMIT_NOFILE, from /proc."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/PID/limits")


class LimitedNode(NodeProcess):
    """A node started under ``prlimit --nofile=SOFT:HARD``."""

    def __init__(self, nofile: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nofile = nofile

    @property
    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}", *super().command]


@pytest.fixture(autouse=True)
def needs_prlimit():
    if shutil.which("prlimit") is None:
        pytest.fail("prlimit is not installed: apt-get install -y util-linux")


def node_under(tmp_path, nofile: str, *args: str) -> LimitedNode:
    return LimitedNode(nofile, data_dir=tmp_path / "n1", extra_args=["--sync", "off", *args])


def test_a_node_raises_its_soft_limit_and_accepts_past_the_old_one(tmp_path):
    with node_under(tmp_path, "256:4096", "--max-connections", "1000") as node:
        address = node.address
        assert open_files_limit(node.pid) == (1000 + 64, 4096)
        assert "raised the open-files limit from 256 to 1064, for 1000 connections" in node.log()
        # 300 at once, past the 256 it was started with: every one answered.
        sockets = []
        try:
            for _ in range(300):
                sockets.append(RawConnection(address, timeout=10))
            assert all(connection.request(Ping(7)) == Pong(7) for connection in sockets)
        finally:
            for connection in sockets:
                connection.close()


def test_a_hard_limit_below_the_connections_is_used_and_named(tmp_path):
    with node_under(tmp_path, "256:512", "--max-connections", "1000") as node:
        assert open_files_limit(node.pid) == (512, 512)
        log = node.log()
        assert "the open-files limit is 512 (the hard limit allows no more), so only about 448 connections" in log
        assert "raise the hard limit" in log and " WARNING " in log


def test_a_limit_that_is_enough_is_left_alone(tmp_path):
    with node_under(tmp_path, "4096:8192") as node:
        assert open_files_limit(node.pid) == (4096, 8192)
        assert "open-files limit" not in node.log()


def test_a_bridge_raises_its_soft_limit_for_its_connections(tmp_path):
    port = free_port()
    command = ["prlimit", "--nofile=256:4096", sys.executable, "-m", "kvwire", "bridge", "--listen", f"127.0.0.1:{port}",
               "--endpoints", "127.0.0.1:9", "--max-connections", "600"]

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    with ChildProcess("bridge", command, log_path=tmp_path / "bridge.log") as bridge:
        wait_for(listening, timeout=15, what="the bridge listening")
        # Its clients, the refused ones that may linger (linger.py) and its one node.
        connections = 600 + MAX_LINGERING + 1
        assert open_files_limit(bridge.pid) == (connections + 64, 4096)
        assert f"raised the open-files limit from 256 to {connections + 64}, for {connections} connections" in bridge.log()
