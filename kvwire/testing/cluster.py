"""A cluster of real node processes on one machine, for tests that need replication.

Node ``n<i>`` listens on ``127.0.0.<i>`` (on Linux all of 127.0.0.0/8 is
loopback, with no set-up), so each node has an address of its own, as on a
real network, and a test can tell nodes apart by address alone.

    with LocalCluster(3, data_dir=tmp_path) as cluster:
        client = Client(cluster.endpoints)
        cluster.kill("n2")               # kill -9
        cluster.start("n2").wait_ready("n2")
        cluster.wait_peers("n1", up=["n2"])
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..protocol import HealthReply
from ..protocol.messages import Health
from .node import NodeProcess, free_port, wait_for
from .process import StartsOnEnter
from .wire import RawConnection

# 127.0.0.1 to 127.0.0.254: one loopback address per node.
MAX_NODES = 254


class LocalCluster(StartsOnEnter):
    """``size`` nodes (``n1``...) started with ``--cluster`` naming all of them.

    Each node keeps its address, port and data directory
    (``data_dir/<node_id>``, log in ``data_dir/<node_id>.log``) across
    restarts. The timing options, when given, are passed to every node
    (tests want failures noticed fast); ``node_args`` are added to every
    node's ``kvwire serve`` command line. ``groups`` runs the named nodes
    under group ids of their own (as root), for partitions by iptables'
    owner match (``kvwire.chaos``). ``with`` starts it, waits until every node
    sees every other UP, and stops it.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        data_dir: str | os.PathLike,
        cluster_id: str = "kvwire",
        sync: str | None = None,
        heartbeat_interval: float | None = None,
        failure_timeout: float | None = None,
        write_timeout: float | None = None,
        node_args: Sequence[str] = (),
        groups: Mapping[str, int] | None = None,
    ) -> None:
        if type(size) is not int or not 1 <= size <= MAX_NODES:
            raise ValueError(f"size must be an integer from 1 to {MAX_NODES}, got {size!r}")
        self.cluster_id = cluster_id
        hosts = {f"n{i}": f"127.0.0.{i}" for i in range(1, size + 1)}
        ports = {node_id: free_port(host) for node_id, host in hosts.items()}
        self.members = ",".join(f"{node_id}={hosts[node_id]}:{ports[node_id]}" for node_id in hosts)
        options = {
            "--sync": sync,
            "--heartbeat-interval": heartbeat_interval,
            "--failure-timeout": failure_timeout,
            "--write-timeout": write_timeout,
        }
        args = ["--cluster", self.members, "--cluster-id", cluster_id]
        for option, value in options.items():
            if value is not None:
                args += [option, str(value)]
        args += list(node_args)
        root = os.fspath(data_dir)
        self.nodes: dict[str, NodeProcess] = {
            node_id: NodeProcess(
                node_id, data_dir=os.path.join(root, node_id), host=hosts[node_id], port=ports[node_id], extra_args=args,
                group=(groups or {}).get(node_id),
            )
            for node_id in hosts
        }

    # --- looking at it --------------------------------------------------------------------

    def __getitem__(self, node_id: str) -> NodeProcess:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in this cluster; it has {', '.join(self.nodes)}") from None

    def __iter__(self) -> Iterator[NodeProcess]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def running(self) -> bool:
        """Whether every node runs."""
        return all(node.running for node in self.nodes.values())

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(self.nodes)

    @property
    def endpoints(self) -> list[str]:
        """Every node's ``host:port``, in node order: what a client is given."""
        return [node.address for node in self.nodes.values()]

    def endpoints_of(self, *node_ids: str) -> list[str]:
        return [self[node_id].address for node_id in node_ids]

    def health(self, node_id: str, timeout: float = 2.0) -> dict[str, Any]:
        """The HEALTH report of one node (which must be running and not paused)."""
        with RawConnection(self[node_id].address, timeout=timeout) as connection:
            reply = connection.request(Health(1))
        if not isinstance(reply, HealthReply):
            raise RuntimeError(f"{node_id} answered HEALTH with {reply!r}")
        return reply.health

    def peer_states(self, node_id: str) -> dict[str, bool]:
        """``{peer: healthy}`` as ``node_id`` sees its peers."""
        nodes = self.health(node_id).get("cluster", {}).get("nodes", [])
        return {entry["node_id"]: bool(entry["healthy"]) for entry in nodes}

    # --- driving it -----------------------------------------------------------------------

    def start(self, *node_ids: str) -> LocalCluster:
        """Start the given nodes (default: every node not running); doesn't wait."""
        for node in self._select(node_ids):
            if not node.running:
                node.start()
        return self

    def wait_ready(self, *node_ids: str, timeout: float = 15.0, peers: bool = True) -> LocalCluster:
        """Wait until the given nodes (default: all) answer PING and, with ``peers``,
        until each of them and every other running node see one another UP."""
        selected = self._select(node_ids)
        for node in selected:
            node.wait_ready(timeout=timeout)
        if peers and len(self.nodes) > 1:
            running = [node.node_id for node in self.nodes.values() if node.running]
            for node in selected:
                others = [other for other in running if other != node.node_id]
                self.wait_peers(node.node_id, up=others, timeout=timeout)
                for other in others:
                    self.wait_peers(other, up=[node.node_id], timeout=timeout)
        return self

    def wait_peers(self, node_id: str, *, up: Iterable[str] = (), down: Iterable[str] = (), timeout: float = 5.0) -> None:
        """Wait until ``node_id`` sees every node in ``up`` healthy and every node in ``down`` not."""
        up, down = list(up), list(down)

        def seen() -> bool:
            try:
                states = self.peer_states(node_id)
            except (OSError, TimeoutError, EOFError):
                return False  # still starting, or busy: ask again
            return all(states.get(peer) is True for peer in up) and all(states.get(peer) is False for peer in down)

        wait_for(seen, timeout=timeout, what=f"{node_id} seeing {up} UP and {down} DOWN")

    def kill(self, node_id: str) -> None:
        """``kill -9`` one node."""
        self[node_id].kill()

    def terminate(self, node_id: str, timeout: float = 15.0) -> int:
        """SIGTERM one node and wait: a clean shutdown. Returns its exit status."""
        return self[node_id].terminate(timeout=timeout)

    def pause(self, node_id: str) -> None:
        """SIGSTOP: the node's sockets stay open but nothing answers, like a hung machine."""
        self[node_id].pause()

    def resume(self, node_id: str) -> None:
        """SIGCONT after :meth:`pause`."""
        self[node_id].resume()

    def restart(self, node_id: str, *, timeout: float = 15.0) -> NodeProcess:
        """Stop the node cleanly if it runs, start it on the same address and data, wait until it is ready."""
        node = self[node_id]
        if node.running:
            node.resume()  # a paused node can't act on SIGTERM
            node.terminate(timeout=timeout)
        node.start()
        self.wait_ready(node_id, timeout=timeout)
        return node

    def stop(self) -> None:
        """Best-effort cleanup of every node (resumed if paused, then killed)."""
        for node in self.nodes.values():
            node.stop()

    def __repr__(self) -> str:
        states = ", ".join(f"{node.node_id}={'up' if node.running else 'down'}" for node in self.nodes.values())
        return f"LocalCluster({self.cluster_id!r}: {states})"

    def _select(self, node_ids: Sequence[str]) -> list[NodeProcess]:
        return [self[node_id] for node_id in node_ids] if node_ids else list(self.nodes.values())
