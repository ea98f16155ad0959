"""One child process driven by signals: the common part of nodes, bridges and balancers."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Mapping


class ChildProcess:
    """A command run in the foreground as our child; its stderr goes to ``log_path``.

    Subclasses give ``command`` (an attribute or a property) and a
    ``wait_ready`` that polls until the process serves; used as a context
    manager it is started, waited for, and always cleaned up.
    """

    command: list[str]

    name = "process"
    # Balancers log to stdout as well; nodes and bridges print nothing there.
    stdout_to_log = False
    # Run the child under this group id (needs root): iptables' owner match can
    # then tell its traffic from its neighbours' on a shared loopback address.
    group: int | None = None

    def __init__(self, *, log_path: str | os.PathLike, env: Mapping[str, str] | None = None) -> None:
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str] | None:
        """The child's environment; None inherits ours."""
        return self.env

    def start(self):
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log if self.stdout_to_log else subprocess.DEVNULL,
                stderr=log,
                env=self.environment(),
                group=self.group,
            )
        return self

    def wait_ready(self, timeout: float = 15.0):
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    def check_alive(self) -> None:
        """Raise, quoting the log, unless the process is running."""
        if not self.running:
            raise RuntimeError(f"{self.name} is not running (exit status {self.returncode}); log:\n{self.log()}")

    def send_signal(self, signum: int) -> None:
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        self.process.send_signal(signum)

    def signal_and_wait(self, signum: int, timeout: float = 15.0) -> int:
        """Send ``signum`` and return the exit status."""
        self.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def terminate_or_kill(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait up to ``timeout`` for a clean exit, then :meth:`stop` whatever is left."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        ChildProcess.stop(self)

    def stop(self) -> None:
        """Best-effort cleanup: resume if paused, then kill if still running."""
        if self.running:
            try:
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self):
        if not self.running:
            self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
