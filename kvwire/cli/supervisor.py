"""Child processes run in the foreground as a group: output prefixed, stopped together.

What ``kvwire up`` needs and no more: start a few commands, copy each one's
output to our stderr line by line behind its name (so three nodes' logs stay
readable in one terminal), notice when one exits, and stop them all with
SIGTERM, falling back to SIGKILL for any that outlive the grace period.
"""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

# Exit statuses of a child that was asked to stop: 0 after a clean shutdown;
# 130 or death by the signal itself when the signal came before the node had
# installed its handlers (Ctrl-C in a terminal reaches the whole process group).
STOPPED_STATUSES = frozenset({0, 130, -signal.SIGINT, -signal.SIGTERM})


class Child:
    """One command, its process once started, and the thread copying its output."""

    def __init__(self, name: str, command: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, output: IO[str], lock: threading.Lock, prefix: str) -> None:
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self._pump = threading.Thread(
            target=_copy_lines, args=(self.process.stdout, output, lock, prefix), name=f"output-of-{self.name}", daemon=True
        )
        self._pump.start()

    def signal(self, signum: int) -> None:
        if self.running:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass  # exited between the check and the signal

    def finish_output(self, timeout: float) -> None:
        """Wait for the last lines the child wrote to be copied."""
        if self._pump is not None:
            self._pump.join(timeout)


class Supervisor:
    """Children started together and stopped together; their output goes to ``output``."""

    def __init__(self, children: Sequence[Child], *, output: IO[str] | None = None) -> None:
        self.children = list(children)
        self._output = output if output is not None else sys.stderr
        self._lock = threading.Lock()  # one line at a time, never two interleaved
        self._width = max((len(child.name) for child in self.children), default=0)

    def start(self) -> None:
        for child in self.children:
            child.start(self._output, self._lock, f"{child.name:<{self._width}} | ")

    def exited(self) -> list[Child]:
        """Children that were started and are no longer running."""
        return [child for child in self.children if child.process is not None and not child.running]

    def stop(self, grace: float) -> list[Child]:
        """SIGTERM every child, wait up to ``grace`` seconds, SIGKILL the rest.

        Returns the children that had to be killed.
        """
        for child in self.children:
            child.signal(signal.SIGCONT)  # a stopped (SIGSTOP) child would never act on SIGTERM
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        killed = []
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                child.process.wait()
                killed.append(child)
        for child in self.children:
            child.finish_output(timeout=2.0)
        return killed


def _copy_lines(source: IO[bytes], output: IO[str], lock: threading.Lock, prefix: str) -> None:
    with source:
        for line in iter(source.readline, b""):
            text = line.decode("utf-8", errors="replace").rstrip("\n")
            with lock:
                try:
                    output.write(f"{prefix}{text}\n")
                    output.flush()
                except (OSError, ValueError):
                    pass  # our stderr is gone (closed terminal); keep draining so the child never blocks


def bind_refusal(host: str, port: int) -> str | None:
    """Why ``host:port`` can't be bound right now, or None if it can.

    Binds as a node does (SO_REUSEADDR), so a port left in TIME_WAIT by a
    node just stopped counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return None
