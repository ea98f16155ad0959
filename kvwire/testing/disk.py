"""A node on a small disk of its own that a test can fill up and empty again.

Its data directory is a 16 MiB tmpfs in a mount namespace of the node's own
(``unshare --mount``, as root), filled and emptied with ``nsenter``: a disk
that runs full and is cleaned up, with nothing outside changed. (Turning a
mount read-only under a process that has files open for writing is refused
by the kernel, so a full disk is the fault a test can cause and undo.)
"""

from __future__ import annotations

import shlex
import subprocess

from .node import NodeProcess

# More than the tmpfs holds: writing it fills the disk whatever the node wrote.
_FILLER_BYTES = 100_000_000


class NodeOnItsOwnDisk(NodeProcess):
    """A node whose data directory is a 16 MiB tmpfs only it sees."""

    @classmethod
    def like(cls, node: NodeProcess) -> NodeOnItsOwnDisk:
        """The same node (id, address, data directory, options) on a disk of its own."""
        return cls(node.node_id, data_dir=node.data_dir, host=node.host, port=node.port, extra_args=node.extra_args,
                   tls=node.tls)

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
        filler = shlex.quote(str(self.data_dir / "filler"))
        filled = self.in_its_mounts(f"head -c {_FILLER_BYTES} /dev/zero > {filler}")
        if "No space left on device" not in filled.stderr:
            raise AssertionError(f"the disk of {self.node_id} did not fill up: {filled.stderr!r}")

    def free_disk(self) -> None:
        freed = self.in_its_mounts(f"rm {shlex.quote(str(self.data_dir / 'filler'))}")
        if freed.returncode != 0:
            raise AssertionError(f"could not empty the disk of {self.node_id}: {freed.stderr!r}")
