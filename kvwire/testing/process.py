"""One child process, driven by signals: kvwire's only way of running another program.

Nodes, bridges and balancers in tests (``NodeProcess``, ``BridgeProcess``,
``HAProxyProcess``...), the nodes of ``kvwire up`` (``kvwire.cli.supervisor``)
and the benchmark's reference servers (``kvwire.bench.peers``) are all a
:class:`ChildProcess`:

    with ChildProcess("sleeper", ["sleep", "60"], log_path="sleeper.log") as child:
        child.send_signal(signal.SIGSTOP)
    # stopped: SIGTERM, then SIGKILL after ``stop_grace`` seconds (0: at once)
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Mapping, Sequence

# Once a child exits, its last lines are in the pipe already; copying them takes
# milliseconds. The bound is for a grandchild that inherited the pipe and lives on.
_COPY_FINISH_TIMEOUT_S = 2.0


def resident_bytes(pid: int) -> int:
    """The memory ``pid`` has resident now (VmRSS in /proc)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024


def stop_gracefully(process: subprocess.Popen, grace: float = 30.0) -> bool:
    """Stop a process a test started by hand as :meth:`ChildProcess.stop` does: SIGTERM,
    up to ``grace`` seconds, then SIGKILL; True when it had to be killed. SIGTERM lets a
    supervisor such as ``kvwire up`` stop its own children first and wait for them: after
    a SIGKILL alone they get their SIGTERM from the kernel (:func:`terminated_with_parent`)
    and may still be stopping, holding their ports, when whatever runs next starts."""
    if process.poll() is not None:
        return False
    _ask_to_stop(process)
    return _wait_or_kill(process, grace)


def _ask_to_stop(process: subprocess.Popen) -> None:
    """SIGTERM, after SIGCONT: a paused (SIGSTOP) process would never act on it."""
    for signum in (signal.SIGCONT, signal.SIGTERM):
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            return  # it exited just now


def _wait_or_kill(process: subprocess.Popen, grace: float) -> bool:
    """Wait up to ``grace`` seconds for it to exit, then SIGKILL it; True when killed."""
    try:
        process.wait(timeout=grace)
        return False
    except subprocess.TimeoutExpired:
        pass
    try:
        process.kill()
    except ProcessLookupError:
        pass
    process.wait()
    return True


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def terminated_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when the thread that
    starts it exits (PR_SET_PDEATHSIG; so start children from a thread that lives as long
    as the process, its main thread), including when the process is SIGKILLed and can
    stop nothing itself. None where that is not Linux.

    Python runs it in the child between fork and exec, so it only calls what was
    resolved before the fork. A parent that died before the prctl took effect would
    send nothing: the child then sees itself adopted and exits at once."""
    if _libc is None:
        return None
    prctl, getppid, parent = _libc.prctl, os.getppid, os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if getppid() != parent:
            os._exit(1)

    return preexec


class StartsOnEnter:
    """``with thing:`` starts it (unless it runs), waits until it serves, and always stops it,
    also when waiting fails. The class gives ``running``, ``start``, ``wait_ready`` and ``stop``."""

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


@dataclass(frozen=True)
class LineCopy:
    """Where ``kvwire up`` sends a child's output: each line, stdout and stderr alike, to
    ``stream`` behind ``prefix``; children sharing a stream share ``lock``, so that no two
    lines interleave."""

    stream: IO[str]
    prefix: str
    lock: threading.Lock


class ChildProcess(StartsOnEnter):
    """``command`` run in the foreground as our child, named ``name`` in messages.

    Its output goes to ``log_path`` (stderr; stdout too when ``stdout_to_log``)
    unless :meth:`start` is given a :class:`LineCopy`. :meth:`stop` asks it to
    exit with SIGTERM and kills it after ``stop_grace`` seconds; a class whose
    program needs no clean shutdown keeps the default 0 and is killed at once.
    Subclasses may give ``command`` as a property instead, and a
    ``wait_ready`` that polls until their program serves.
    """

    command: list[str]

    stdout_to_log = False
    stop_grace = 0.0

    def __init__(
        self,
        name: str,
        command: Sequence[str] | None = None,
        *,
        log_path: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        group: int | None = None,
    ) -> None:
        self.name = name
        if command is not None:
            self.command = list(command)
        self.log_path = None if log_path is None else Path(log_path)
        self.env = dict(env) if env is not None else None
        # Run the child under this group id (needs root): iptables' owner match can
        # then tell its traffic from its neighbours' on a shared loopback address.
        self.group = group
        self.process: subprocess.Popen | None = None
        self._copier: threading.Thread | None = None
        self._stop_requested = False

    def environment(self) -> dict[str, str] | None:
        """The child's environment; None inherits ours."""
        return self.env

    # --- running it -----------------------------------------------------------------------

    def start(self, copy_to: LineCopy | None = None, *, with_parent: bool = False):
        """Start the command; its output goes to ``copy_to`` if given, else to ``log_path``.
        ``with_parent``: it gets SIGTERM when the calling thread exits (:func:`terminated_with_parent`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if copy_to is None and self.log_path is None:
            raise ValueError(f"{self.name}: give log_path, or start(copy_to=...)")
        self._stop_requested = False
        options = {"stdin": subprocess.DEVNULL, "env": self.environment(), "group": self.group,
                   "preexec_fn": terminated_with_parent() if with_parent else None}
        if copy_to is not None:
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **options)
            self._copier = threading.Thread(
                target=_copy_lines, args=(self.process.stdout, copy_to), name=f"output of {self.name}", daemon=True
            )
            self._copier.start()
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stdout = log if self.stdout_to_log else subprocess.DEVNULL
            self.process = subprocess.Popen(self.command, stdout=stdout, stderr=log, **options)
        return self

    def wait_ready(self, timeout: float = 15.0):
        """Return once it serves; a bare command counts as ready while it runs."""
        self.check_alive()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal); None while running or before it started."""
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

    # --- signals and stopping -------------------------------------------------------------

    def send_signal(self, signum: int) -> None:
        """Send ``signum``; raises unless the process is running."""
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        self.process.send_signal(signum)

    def signal_and_wait(self, signum: int, timeout: float = 15.0) -> int:
        """Send ``signum`` and return the exit status (``subprocess.TimeoutExpired`` after ``timeout``)."""
        self.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status once the process exits within ``timeout`` seconds, else None."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._finish_copying()
        return status

    def request_stop(self) -> None:
        """SIGTERM, once per run, without waiting; after SIGCONT, as a paused (SIGSTOP) child
        would never act on it. Several children asked at once stop in parallel."""
        if self.running and not self._stop_requested:
            self._stop_requested = True
            _ask_to_stop(self.process)

    def stop(self, grace: float | None = None) -> bool:
        """Ask it to exit (:meth:`request_stop`), wait up to ``grace`` seconds (default
        ``stop_grace``; 0 skips the asking), then SIGKILL. True when it had to be killed."""
        grace = self.stop_grace if grace is None else grace
        killed = False
        if self.running:
            if grace > 0:
                self.request_stop()
            killed = _wait_or_kill(self.process, grace)
        self._finish_copying()
        return killed

    # --- its output -----------------------------------------------------------------------

    def log(self) -> str:
        """What the process wrote to ``log_path`` (empty when its output is copied instead)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _finish_copying(self) -> None:
        if self._copier is not None:
            self._copier.join(_COPY_FINISH_TIMEOUT_S)


def _copy_lines(source: IO[bytes], copy_to: LineCopy) -> None:
    with source:
        for line in iter(source.readline, b""):
            text = line.decode("utf-8", errors="replace").rstrip("\n")
            with copy_to.lock:
                try:
                    copy_to.stream.write(f"{copy_to.prefix}{text}\n")
                    copy_to.stream.flush()
                except (OSError, ValueError):
                    pass  # the stream is gone (a closed terminal); keep draining so the child never blocks


def _live_processes() -> Iterator[tuple[int, str, int]]:
    """(pid, command line, parent pid) of every process still running (not a zombie), from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z":
            yield int(entry.name), cmdline, int(fields[1])


def processes_mentioning(text: str) -> list[int]:
    """Pids of running processes, this one aside, whose command line contains ``text``
    (a node names its data directory there, so a test finds the nodes a command left)."""
    return [pid for pid, cmdline, _ in _live_processes() if text in cmdline and pid != os.getpid()]


def children_of(pid: int) -> list[int]:
    """Pids of the running child processes of ``pid``."""
    return [child for child, _, parent in _live_processes() if parent == pid]

