"""Child processes run in the foreground as a group: output prefixed, restarted when they die.

What ``kvwire up`` needs on top of :class:`kvwire.testing.ChildProcess`:
start a few of them, copy each one's output to our stderr line by line behind
its name (so three nodes' logs stay readable in one terminal), restart one that
dies with backoff, let the user stop, kill and start one on purpose (it then
stays down until started), and stop them all with SIGTERM at once, falling back
to SIGKILL for any that outlive the grace period.

Time is a parameter (``now``), so the restart policy is testable without sleeps.
"""

from __future__ import annotations

import errno
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Iterable, Sequence

from ..backoff import backoff_delay
from ..testing import ChildProcess, LineCopy
from .exit_status import NOT_RESTARTABLE

# Exit statuses of a child that was asked to stop: 0 after a clean shutdown;
# 130 or death by the signal itself when the signal came before the node had
# installed its handlers (Ctrl-C in a terminal reaches the whole process group).
STOPPED_STATUSES = frozenset({0, 130, -signal.SIGINT, -signal.SIGTERM})
# The first restart comes quickly: a node starts in about 0.5 s and the issue's
# budget from death to a healthy cluster is 5 s. Each death soon after a start
# doubles the wait, up to the cap, so a node that can't run doesn't spin.
RESTART_BASE_S = 0.2
RESTART_CAP_S = 10.0
# A child that ran this long before dying was healthy: its next restart is quick again.
STABLE_RUN_S = 10.0


@dataclass(frozen=True)
class Death:
    """A child that exited without being asked to; ``restart_in`` is None when it won't be restarted."""

    child: ChildProcess
    status: int
    restart_in: float | None


@dataclass(frozen=True)
class ChildState:
    """One line of ``kvwire up ctl status``."""

    name: str
    state: str  # "running", "stopped" (on request), "restarting" (after a death), "exited"
    pid: int | None  # while running
    restarts: int  # automatic restarts since `up` started


class Supervisor:
    """Children started, restarted and stopped together; their output goes to ``output``.

    Thread-safe: the control socket's requests arrive on other threads than the
    loop calling :meth:`reap` and :meth:`restart_due`. But children start only on
    the thread that made the supervisor (``kvwire up``'s main thread; RuntimeError
    on another): each gets SIGTERM from the kernel when that thread exits, so a
    SIGKILLed ``kvwire up``, which can stop nothing itself, leaves no child running
    (kvwire.testing.process.terminated_with_parent), and a thread that ends after
    one request must not be what a child is tied to.
    """

    def __init__(self, children: Sequence[ChildProcess], *, output: IO[str] | None = None) -> None:
        self.children = list(children)
        self._by_name = {child.name: child for child in self.children}
        output = output if output is not None else sys.stderr
        width = max((len(child.name) for child in self.children), default=0)
        line_lock = threading.Lock()  # one line at a time, never two interleaved
        self._copies = {child.name: LineCopy(output, f"{child.name:<{width}} | ", line_lock) for child in self.children}
        self._lock = threading.RLock()
        self._held: set[str] = set()  # stopped or killed on request: left down until started
        self._quick_deaths = {child.name: 0 for child in self.children}  # in a row, each soon after a start
        self._restarts = {child.name: 0 for child in self.children}
        self._started_at: dict[str, float] = {}
        self._restart_at: dict[str, float] = {}  # dead children waiting for their restart
        self._given_up: set[str] = set()
        self._closing = False  # stop() was called: nothing starts again
        self._starting_thread = threading.get_ident()

    def child(self, name: str) -> ChildProcess:
        """The child called ``name``; KeyError if none is."""
        return self._by_name[name]

    def start(self, names: Iterable[str] | None = None, *, now: float | None = None) -> None:
        """Start the children called ``names`` (default: all)."""
        with self._lock:
            for name in (names if names is not None else self._by_name):
                self._start(self._by_name[name], time.monotonic() if now is None else now)

    def reap(self, now: float | None = None) -> list[Death]:
        """Children that died since the last call, each scheduled for a restart unless it
        refused its options or configuration (exit_status.NOT_RESTARTABLE: a restart would be refused too)."""
        now = time.monotonic() if now is None else now
        deaths = []
        with self._lock:
            for child in self.children:
                name = child.name
                if not self._dead_unreaped(child):
                    continue
                if child.returncode in NOT_RESTARTABLE:
                    self._given_up.add(name)
                    deaths.append(Death(child, child.returncode, None))
                    continue
                if now - self._started_at[name] >= STABLE_RUN_S:
                    self._quick_deaths[name] = 0
                self._quick_deaths[name] += 1
                delay = backoff_delay(self._quick_deaths[name], base=RESTART_BASE_S, cap=RESTART_CAP_S)
                self._restart_at[name] = now + delay
                deaths.append(Death(child, child.returncode, delay))
        return deaths

    def restart_due(self, now: float | None = None) -> list[ChildProcess]:
        """Restart the dead children whose backoff has passed; the ones restarted."""
        now = time.monotonic() if now is None else now
        restarted = []
        with self._lock:
            for name, when in list(self._restart_at.items()):
                if when <= now:
                    self._restarts[name] += 1
                    self._start(self._by_name[name], now)
                    restarted.append(self._by_name[name])
        return restarted

    # --- on the user's request (kvwire up ctl) --------------------------------------------

    def stop_child(self, name: str, grace: float) -> bool:
        """SIGTERM ``name`` and keep it down until :meth:`start_child`; True when it had to be killed."""
        child = self._hold(name)
        return child.stop(grace)  # outside the lock: the others stay supervised meanwhile

    def kill_child(self, name: str) -> None:
        """SIGKILL ``name`` (a crash on purpose) and keep it down until :meth:`start_child`."""
        self._hold(name).stop(0)

    def start_child(self, name: str) -> ChildProcess:
        """Start ``name`` now, held or waiting for a restart; RuntimeError if it runs."""
        with self._lock:
            child = self._by_name[name]
            if self._closing:
                raise RuntimeError("kvwire up is stopping")
            if child.running:
                raise RuntimeError(f"{name} is already running (pid {child.pid})")
            self._held.discard(name)
            self._given_up.discard(name)
            self._quick_deaths[name] = 0
            self._start(child, time.monotonic())
            return child

    def states(self) -> list[ChildState]:
        with self._lock:
            return [self._state(child) for child in self.children]

    # --- all of them ----------------------------------------------------------------------

    def stop(self, grace: float) -> list[ChildProcess]:
        """SIGTERM every child, wait up to ``grace`` seconds in all, SIGKILL the rest.

        Returns the children that had to be killed. Nothing is restarted afterwards.
        """
        with self._lock:
            self._closing = True
            self._held.update(self._by_name)
            self._restart_at.clear()
        for child in self.children:
            child.request_stop()
        deadline = time.monotonic() + grace
        return [child for child in self.children if child.stop(max(0.0, deadline - time.monotonic()))]

    def _hold(self, name: str) -> ChildProcess:
        with self._lock:
            child = self._by_name[name]
            self._held.add(name)
            self._restart_at.pop(name, None)
            return child

    def _start(self, child: ChildProcess, now: float) -> None:
        if threading.get_ident() != self._starting_thread:
            raise RuntimeError(f"{child.name} must be started on the thread that made the supervisor")
        self._restart_at.pop(child.name, None)
        self._started_at[child.name] = now
        child.start(copy_to=self._copies[child.name], with_parent=True)

    def _dead_unreaped(self, child: ChildProcess) -> bool:
        """Started, then died on its own, and not yet seen to by :meth:`reap`."""
        name = child.name
        return (child.returncode is not None and name in self._started_at and name not in self._held
                and name not in self._restart_at and name not in self._given_up)

    def _state(self, child: ChildProcess) -> ChildState:
        if child.running:
            state = "running"
        elif child.name in self._held:
            state = "stopped"
        elif child.name in self._restart_at:
            state = "restarting"
        elif self._dead_unreaped(child) and child.returncode not in NOT_RESTARTABLE and not self._closing:
            state = "restarting"  # not yet reaped (reap runs once a pass): a restart is coming
        else:
            state = "exited"
        return ChildState(child.name, state, child.pid if child.running else None, self._restarts[child.name])


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
