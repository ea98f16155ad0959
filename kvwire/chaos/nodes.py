"""Three real nodes, each under a group id of its own, and what they say about each other.

The group ids exist only for iptables' owner match (see ``firewall``); they
need no entry in /etc/group. They are derived from this process's pid so that
two runs on one machine never match each other's nodes.

The nodes die with the run, even a SIGKILLed one that can stop nothing itself:
each is started with PR_SET_PDEATHSIG (``terminated_with_parent``), from one
thread kept for that (``NodeStarter``).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from kvwire.testing import LocalCluster
from kvwire.testing.node import NodeProcess

# Far above any gid a distribution hands out (Debian stops at 60000 for
# users and 65534 for nogroup); 8 per runner pid, pid_max is at most 2**22.
GID_BASE = 1_000_000_000
RESTART_ATTEMPTS = 3
POLL_INTERVAL = 0.02


def node_groups(node_ids: Iterable[str], pid: int | None = None) -> dict[str, int]:
    base = GID_BASE + 8 * (os.getpid() if pid is None else pid)
    return {node_id: base + number for number, node_id in enumerate(node_ids)}


@dataclass(frozen=True, slots=True)
class PeerView:
    healthy: bool
    pending_hints: int


class NodeStarter:
    """Starts nodes from a thread of its own that lives until :meth:`close`.

    PR_SET_PDEATHSIG ties a child to the thread that forked it, not to the
    process: a node started from an asyncio executor thread or from the
    nemesis thread would get SIGTERM whenever that thread ends, mid-run. This
    thread ends only at :meth:`close` (after the nodes are stopped) or with the
    process, SIGKILL included.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[NodeProcess, Future] | None] = queue.SimpleQueue()
        self._closed = False
        # The check of _closed and the queueing are one step: a request queued after
        # close()'s None would never be served, and its caller (the nemesis) would wait for ever.
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="kvwire-chaos-node-starter", daemon=True)
        self._thread.start()

    def start(self, node: NodeProcess) -> None:
        """Start ``node`` (tied to this thread) and return once it was forked; raises what starting raised."""
        started: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{node.name}: the run is over, nodes are no longer started")
            self._requests.put((node, started))
        started.result()

    def close(self) -> None:
        """End the thread; a node it started and still running gets SIGTERM."""
        with self._lock:
            self._closed = True
            self._requests.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            node, started = request
            try:
                node.start(with_parent=True)
                started.set_result(None)
            except BaseException as exc:  # handed to the thread that asked
                started.set_exception(exc)


class ChaosCluster:
    """A LocalCluster of three nodes on 127.0.0.1-3; with ``own_groups`` (partitions; root only) each under its own gid."""

    def __init__(self, data_dir: Path, *, size: int = 3, own_groups: bool = True) -> None:
        node_ids = [f"n{number}" for number in range(1, size + 1)]
        self.groups = node_groups(node_ids) if own_groups else {}
        self.cluster = LocalCluster(size, data_dir=data_dir, groups=self.groups)
        self.addresses = {node.node_id: (node.host, node.port) for node in self.cluster}
        self._starter = NodeStarter()

    @property
    def node_ids(self) -> tuple[str, ...]:
        return self.cluster.node_ids

    def start(self, timeout: float = 30.0) -> None:
        for node in self.cluster:
            if not node.running:
                self._starter.start(node)
        self.cluster.wait_ready(timeout=timeout)

    def stop(self) -> None:
        self.cluster.stop()
        self._starter.close()

    def pids(self) -> dict[str, int]:
        return {node.node_id: node.pid for node in self.cluster if node.running}

    # --- faults -------------------------------------------------------------------------

    def kill(self, node_id: str) -> None:
        self.cluster.kill(node_id)

    def pause(self, node_id: str) -> None:
        self.cluster.pause(node_id)

    def terminate(self, node_id: str) -> int:
        """SIGTERM: a clean stop, waiting for the requests the node had started. Its exit status."""
        return self.cluster.terminate(node_id)

    def resume(self, node_id: str) -> None:
        if self.cluster[node_id].running:
            self.cluster.resume(node_id)

    def restart(self, node_id: str, timeout: float = 15.0) -> None:
        """Start a killed node again and wait until it answers PING.

        Its port may for a moment be the ephemeral port of some client's
        connection from 127.0.0.1, so a failed start is tried again.
        """
        node = self.cluster[node_id]
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            if not node.running:
                self._starter.start(node)
            try:
                node.wait_ready(timeout=timeout)
                return
            except RuntimeError:
                if attempt == RESTART_ATTEMPTS:
                    raise
                time.sleep(0.5)

    # --- what the nodes see ---------------------------------------------------------------

    def peer_views(self, node_id: str, timeout: float = 1.0) -> dict[str, PeerView] | None:
        """``node_id``'s view of its peers, or None if it does not answer HEALTH in time."""
        try:
            nodes = self.cluster.health(node_id, timeout=timeout).get("cluster", {}).get("nodes", [])
        except (OSError, EOFError, ValueError, RuntimeError):  # TimeoutError is an OSError; ProtocolError a ValueError
            return None
        return {entry["node_id"]: PeerView(bool(entry["healthy"]), int(entry.get("pending_hints", 0))) for entry in nodes}

    def see_each_other(self, pairs: Iterable[tuple[str, str]]) -> bool:
        """Whether, for every pair, each node sees the other UP."""
        views: dict[str, dict[str, PeerView] | None] = {}
        for a, b in pairs:
            for viewer, peer in ((a, b), (b, a)):
                if viewer not in views:
                    views[viewer] = self.peer_views(viewer)
                view = views[viewer]
                if view is None or not view.get(peer, PeerView(False, 0)).healthy:
                    return False
        return True

    def converged(self) -> tuple[bool, str]:
        """Every node running, every peer UP everywhere, no hint waiting; else what is missing."""
        missing = []
        for node_id in self.node_ids:
            if not self.cluster[node_id].running:
                missing.append(f"{node_id} not running")
                continue
            view = self.peer_views(node_id)
            if view is None:
                missing.append(f"{node_id} does not answer HEALTH")
                continue
            missing += [f"{node_id} sees {peer} DOWN" for peer, state in view.items() if not state.healthy]
            missing += [f"{node_id} holds {state.pending_hints} hints for {peer}" for peer, state in view.items() if state.pending_hints]
        return not missing, "; ".join(missing)

    def wait_until(
        self, condition: Callable[[], bool], *, timeout: float, abort: threading.Event | None = None
    ) -> float | None:
        """Poll ``condition`` until it holds; the seconds it took, or None at the deadline (or on ``abort``)."""
        started = time.monotonic()
        while True:
            if condition():
                return time.monotonic() - started
            if time.monotonic() - started >= timeout or (abort is not None and abort.is_set()):
                return None
            time.sleep(POLL_INTERVAL)
