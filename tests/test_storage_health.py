"""A node whose disk stops taking writes says so in HEALTH until the disk recovers (issue 11, section 5).

A real node process on a real file system that really fills up: its data
directory is a small tmpfs in a mount namespace of the node's own
(``unshare --mount``), which the test fills and empties with ``nsenter``, as
a disk that runs full and is cleaned up. Nothing outside changes. (Turning a
mount read-only under a process that has files open for writing is refused
by the kernel, so a full disk is the fault a test can cause and undo.)
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from kvwire import Client
from kvwire.protocol.errors import InternalServerError
from kvwire.testing import NodeProcess, wait_for


class NodeOnItsOwnDisk(NodeProcess):
    """A node whose data directory is a 16 MiB tmpfs only it sees."""

    @property
    def command(self) -> list[str]:
        directory = shlex.quote(str(self.data_dir))
        serve = shlex.join(super().command)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"mkdir -p {directory} && mount -t tmpfs -o size=16m kvwire-test {directory} && exec {serve}"]

    def in_its_mounts(self, script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "--mount", f"--target={self.pid}", "sh", "-c", script],
                              capture_output=True, text=True, timeout=30)

    def fill_disk(self) -> None:
        filled = self.in_its_mounts(f"head -c 100000000 /dev/zero > {shlex.quote(str(self.data_dir / 'filler'))}")
        assert "No space left on device" in filled.stderr, filled.stderr

    def free_disk(self) -> None:
        freed = self.in_its_mounts(f"rm {shlex.quote(str(self.data_dir / 'filler'))}")
        assert freed.returncode == 0, freed.stderr


def cli_health(node) -> int:
    return subprocess.run([sys.executable, "-m", "kvwire.cli.client", "--endpoints", node.address, "--timeout", "2",
                           "health"], capture_output=True, timeout=30).returncode


@pytest.fixture
def node(tmp_path):
    with NodeOnItsOwnDisk("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "normal"]) as started:
        yield started


def test_a_node_whose_disk_refuses_writes_is_unhealthy_until_it_takes_them_again(node):
    with Client(node.address, timeout=5) as client:
        client.put("before", "kept")
        health = client.health()
        assert health["storage"] == {"writable": True, "error": None, "failed_commits": 0}
        assert health["cluster"]["has_quorum"] is True

        node.fill_disk()
        with pytest.raises(InternalServerError, match="storage write failed"):
            client.put("during", b"x" * 1_000_000)  # more than the write-ahead log has room for
        health = client.health()  # well within the second before the node's first probe
        assert health["storage"]["writable"] is False and "full" in health["storage"]["error"]
        assert (health["status"], health["cluster"]["has_quorum"], health["cluster"]["can_accept_writes"]) == (
            "unavailable", False, False)
        assert health["cluster"]["healthy_nodes"] == 0  # it does not count itself
        assert cli_health(node) == 3  # what a load balancer's check and `kvwire-cli health` act on
        assert client.get("before") == "kept"  # reads still served

        node.free_disk()
        # No write needed: the node's own probe commit finds the disk writable again.
        wait_for(lambda: client.health()["storage"]["writable"], timeout=5, what="the node seeing its disk writable")
        health = client.health()
        assert health["cluster"]["has_quorum"] is True and health["status"] == "healthy"
        assert health["storage"]["failed_commits"] >= 1
        client.put("after", b"x" * 1_000_000)
        assert (client.get("before"), len(client.get("after"))) == ("kept", 1_000_000)
    log = node.log()
    assert "storage refuses writes" in log and "storage takes writes again" in log
