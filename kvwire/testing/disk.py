"""A node on a small disk of its own that a test can fill up and empty again.

Its data directory is a 16 MiB tmpfs in a mount namespace of the node's own
(``unshare --mount``, as root), filled and emptied with ``nsenter``: a disk
that runs full and is cleaned up, with nothing outside changed. (Turning a
mount read-only under a process that has files open for writing is refused
by the kernel, so a full disk is the fault a test can cause and undo.)
"""

from __future__ import annotations

import shlex
import signal
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


class NodeOnAFreezableDisk(NodeOnItsOwnDisk):
    """A node whose data directory is a small ext4 file system, on a loop device in its
    own mount namespace, that a test can freeze (``fsfreeze``) and thaw: a disk that
    stops finishing writes and syncs, as a hung SAN or a failing drive does, while
    reads it has cached still come back. The image is kept beside the data directory,
    so that the node started again finds its data. A frozen file system holds every
    writer in uninterruptible sleep, where no signal reaches it: this node is thawed
    before it is signalled or stopped."""

    _frozen = False

    @property
    def image(self):
        return self.data_dir.with_name(self.data_dir.name + ".ext4")

    @property
    def command(self) -> list[str]:
        directory, image = shlex.quote(str(self.data_dir)), shlex.quote(str(self.image))
        serve = shlex.join(NodeProcess.command.fget(self))
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"{{ [ -e {image} ] || {{ truncate -s 64M {image} && mkfs.ext4 -q {image}; }}; }} && "
                f"mkdir -p {directory} && mount -o loop {image} {directory} && exec {serve}"]

    def freeze(self) -> None:
        frozen = self.in_its_mounts(f"fsfreeze --freeze {shlex.quote(str(self.data_dir))}")
        if frozen.returncode != 0:
            raise AssertionError(f"could not freeze the disk of {self.node_id}: {frozen.stderr!r}")
        self._frozen = True

    def thaw(self) -> None:
        if not self._frozen:
            return
        thawed = self.in_its_mounts(f"fsfreeze --unfreeze {shlex.quote(str(self.data_dir))}")
        if thawed.returncode != 0:
            raise AssertionError(f"could not thaw the disk of {self.node_id}: {thawed.stderr!r}")
        self._frozen = False

    def send_signal(self, signum: int) -> None:
        # SIGSTOP and SIGCONT pass: a test may hold the process while its disk is frozen.
        if self._frozen and self.running and signum not in (signal.SIGSTOP, signal.SIGCONT):
            self.thaw()
        super().send_signal(signum)

    def request_stop(self) -> None:
        if self._frozen and self.running:
            self.thaw()
        super().request_stop()

    def stop(self, grace: float | None = None) -> bool:
        if self._frozen and self.running:
            self.thaw()
        return super().stop(grace)
