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
import secrets
import shutil
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..protocol import HealthReply, HelloReply
from ..protocol.messages import Health, Hello
from ..secret_file import read_secret_file, write_private_file, write_secret_file
from .certs import DevCerts
from .node import NodeProcess, free_port, wait_for
from .process import StartsOnEnter
from .wire import RawConnection

# 127.0.0.1 to 127.0.0.254: one loopback address per node.
MAX_NODES = 254


def new_secret_file(directory: str | os.PathLike, name: str = "cluster.secret") -> str:
    """A new cluster secret in ``directory/name``; its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    write_secret_file(path, replace=True)
    return path


AUTH_FILE_NAME = "auth"


def write_auth_file(directory: str | os.PathLike, text: str) -> str:
    """``text`` as the auth file ``directory/auth``, readable by its owner only, as
    a node requires; its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, AUTH_FILE_NAME)
    write_private_file(path, text.encode(), replace=True)
    return path


def new_token_file(directory: str | os.PathLike) -> str:
    """An auth file in ``directory`` granting one new token the admin role; the token."""
    token = secrets.token_urlsafe(24)
    write_auth_file(directory, f"tests admin {token}\n")
    return token


class LocalCluster(StartsOnEnter):
    """``size`` nodes (``n1``...) started with ``--cluster`` naming all of them.

    Each node keeps its address, port and data directory
    (``data_dir/<node_id>``, log in ``data_dir/<node_id>.log``) across
    restarts. The timing options, when given, are passed to every node
    (tests want failures noticed fast); ``node_args`` are added to every
    node's ``kvwire serve`` command line. ``groups`` runs the named nodes
    under group ids of their own (as root), for partitions by iptables'
    owner match (``kvwire.chaos``). ``tls=True`` serves TLS on every link with
    new development certificates (``tls=DevCerts(...)``: those); clients then
    need ``**cluster.client_options``. ``with`` starts it, waits until every node
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
        secret_file: str | os.PathLike | None = None,
        tls: bool | DevCerts = False,
        auth: bool = False,
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
        root = os.fspath(data_dir)
        # Every node gets the same secret, as a real deployment would; a test of
        # mismatched secrets passes its own --cluster-secret-file in node_args.
        self.secret_file = os.fspath(secret_file) if secret_file is not None else new_secret_file(root)
        args = ["--cluster", self.members, "--cluster-id", cluster_id, "--cluster-secret-file", self.secret_file]
        for option, value in options.items():
            if value is not None:
                args += [option, str(value)]
        # With auth, one admin token in an auth file every node reads (client_options passes it).
        self.token = new_token_file(root) if auth else None
        if self.token is not None:
            args += ["--auth-file", os.path.join(root, AUTH_FILE_NAME)]
        args += list(node_args)
        # TLS on every link: the given certificates, or new ones (in data_dir/tls) naming every node's host.
        self.tls: DevCerts | None = (
            DevCerts.create(os.path.join(root, "tls"), hosts=hosts.values()) if tls is True else tls or None
        )
        self._ssl_context = self.tls.client_context() if self.tls is not None else None
        # Raw connections may play a peer (as_peer): they present the nodes' certificate.
        self._raw_ssl_context = self.tls.node_context() if self.tls is not None else None
        self.nodes: dict[str, NodeProcess] = {
            node_id: NodeProcess(
                node_id, data_dir=os.path.join(root, node_id), host=hosts[node_id], port=ports[node_id], extra_args=args,
                group=(groups or {}).get(node_id), tls=self.tls,
            )
            for node_id in hosts
        }

    # --- looking at it --------------------------------------------------------------------

    @property
    def secret(self) -> bytes:
        """The cluster secret every node holds."""
        return read_secret_file(self.secret_file)

    def as_peer(self, node_id: str, connection: RawConnection) -> None:
        """Make ``connection`` a proven peer link, as a member other than ``node_id``."""
        other = next(member for member in self.nodes if member != node_id)
        reply = connection.hello_as_peer(other, self.cluster_id, self.secret)
        if not isinstance(reply, HelloReply):
            raise RuntimeError(f"{node_id} refused the peer handshake: {reply!r}")

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

    @property
    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Client`` for this cluster (its TLS settings; empty without):
        ``Client(cluster.endpoints, **cluster.client_options)``."""
        options = self.tls.client_options() if self.tls is not None else {}
        return {**options, "token": self.token} if self.token is not None else options

    def raw(self, node_id: str, *, timeout: float = 5.0) -> RawConnection:
        """A RawConnection to ``node_id``, over TLS if the cluster has it, introduced with
        the cluster's token if it has one (the HELLO's reply is read and dropped). Over
        TLS it presents the nodes' certificate, so that it may also play a peer."""
        connection = RawConnection(self[node_id].address, timeout=timeout, ssl_context=self._raw_ssl_context)
        if self.token is not None:
            reply = connection.request(Hello(0, token=self.token))
            if not isinstance(reply, HelloReply):
                connection.close()
                raise RuntimeError(f"{node_id} refused the cluster's token: {reply!r}")
        return connection

    def endpoints_of(self, *node_ids: str) -> list[str]:
        return [self[node_id].address for node_id in node_ids]

    def health(self, node_id: str, timeout: float = 2.0) -> dict[str, Any]:
        """The HEALTH report of one node (which must be running and not paused)."""
        with RawConnection(self[node_id].address, timeout=timeout, ssl_context=self._ssl_context) as connection:
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
        until each of them and every other running node see one another UP, and,
        when every node runs, until each of them has caught up (``wait_caught_up``)."""
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
            if len(running) == len(self.nodes):
                for node in selected:
                    self.wait_caught_up(node.node_id, timeout=timeout)
        return self

    def wait_peers(self, node_id: str, *, up: Iterable[str] = (), down: Iterable[str] = (), timeout: float = 5.0) -> None:
        """Wait until ``node_id`` sees every node in ``up`` healthy, with its link to it
        open, and every node in ``down`` not healthy. The link matters: a peer restarted
        within the failure timeout still looks healthy while this node's link to it
        waits out its redial backoff, and until the link is back nothing is sent to it
        (a write through ``node_id`` would miss it)."""
        up, down = list(up), list(down)

        def seen() -> bool:
            try:
                nodes = self.health(node_id).get("cluster", {}).get("nodes", [])
            except (OSError, TimeoutError, EOFError):
                return False  # still starting, or busy: ask again
            states = {entry["node_id"]: entry for entry in nodes}
            return (all(peer in states and states[peer]["healthy"] and states[peer]["connected"] for peer in up)
                    and all(peer in states and not states[peer]["healthy"] for peer in down))

        wait_for(seen, timeout=timeout, what=f"{node_id} seeing {up} UP and {down} DOWN")

    def wait_caught_up(self, node_id: str, timeout: float = 15.0) -> None:
        """Wait until ``node_id`` has stopped joining: a node started after ``kill -9``
        (or with ``--join``) votes in no majority until anti-entropy has caught it up
        from every peer, so killing another node before then stops writes."""
        def caught_up() -> bool:
            try:
                return self.health(node_id)["joining"] is False
            except (OSError, TimeoutError, EOFError):
                return False  # still starting, or busy: ask again

        wait_for(caught_up, timeout=timeout, what=f"{node_id} caught up from every peer")

    def kill(self, node_id: str) -> None:
        """``kill -9`` one node (its next start catches up before it votes: ``wait_caught_up``)."""
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

    def wipe(self, node_id: str) -> None:
        """A lost disk: ``kill -9`` the node if it runs and delete its data directory
        (start it again with :meth:`start`, empty, under the same node id)."""
        node = self[node_id]
        if node.running:
            node.resume()
            node.kill()
        shutil.rmtree(node.data_dir, ignore_errors=True)

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
