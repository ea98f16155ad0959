"""A real node in a child process, driven by signals."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, Sequence, TypeVar

from ..protocol import NEED_DATA, Connection, Ping, Pong, Side, encode, format_endpoint
from .process import ChildProcess
from .wire import connect_socket

if TYPE_CHECKING:
    from .certs import DevCerts

T = TypeVar("T")


# The kernel hands out ports by itself, to bind(0) and to every outgoing
# connection, from its ephemeral range (net.ipv4.ip_local_port_range, 32768-60999
# by default). A port picked there and bound a moment later by a child process can
# be taken in between by any connection on the machine: with tests running side by
# side, a `kvwire up` found its second node's port held for 20 s by another test's
# connection. No one is given a port below that range unasked, so ports are picked
# there, at random, and probed.
_LOWEST_PORT = 10_000
_PORT_PICKER = random.Random()  # seeded from os.urandom: each process draws its own ports
# Ports this process has handed out: a port probed free stays free until its user binds
# it, so two picks before either bound could name the same one (a CI run's HAProxy found
# its stats port taken, "Address already in use"). Not given twice until most are used.
_HANDED_OUT: set[int] = set()
_MAX_HANDED_OUT = 10_000


@functools.cache  # the range is the machine's: read it once, not at every pick
def _first_ephemeral_port() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as port_range:
            return int(port_range.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_slice(top: int) -> tuple[int, int]:
    """The ports from _LOWEST_PORT to ``top`` (excluded) this process picks among: under pytest-xdist,
    its worker's own share (its children inherit the worker's name), so that two workers
    never hand out the same port. Each remembers only its own (_HANDED_OUT): a fresh-clone
    CI run's node found the port of its HTTP bridge, picked a moment before, taken by the
    other worker's test."""
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and workers.isdigit() and int(workers) > 1):
        return _LOWEST_PORT, top
    index, count = int(worker[2:]) % int(workers), int(workers)
    share = (top - _LOWEST_PORT) // count
    if share < 1000:  # a narrow range (a low ephemeral start): shared, as outside xdist
        return _LOWEST_PORT, top
    return _LOWEST_PORT + index * share, _LOWEST_PORT + (index + 1) * share


def _kernel_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing uses right now, below the kernel's ephemeral range."""
    return free_port_run(1, host)


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """A first port such that it and the ``count - 1`` after it are free right now
    (for commands such as ``kvwire up`` that take a base port), below the kernel's
    ephemeral range where it has room, in it otherwise."""
    top = _first_ephemeral_port() - count
    if len(_HANDED_OUT) > _MAX_HANDED_OUT:
        _HANDED_OUT.clear()
    for _ in range(200):
        if top > _LOWEST_PORT:
            start, end = _worker_slice(top + count)
            base = _PORT_PICKER.randrange(start, end - count)  # all of the run inside the share
        else:
            base = _kernel_port(host)
        if base + count - 1 > 65535 or not _HANDED_OUT.isdisjoint(range(base, base + count)):
            continue
        probes: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                probes.append(probe)
                probe.bind((host, port))
            _HANDED_OUT.update(range(base, base + count))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def _polls(condition: Callable[[], T], timeout: float, what: str) -> Generator[None, None, T]:
    """Check ``condition`` once per step; the caller waits between steps. Returns
    its first truthy result; raises TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        yield
    return result


def wait_for(condition: Callable[[], T], *, timeout: float, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; raise TimeoutError at the deadline."""
    polls = _polls(condition, timeout, what)
    try:
        while True:
            next(polls)
            time.sleep(interval)
    except StopIteration as met:
        return met.value


async def wait_for_async(condition: Callable[[], T], *, timeout: float, interval: float = 0.01,
                         what: str = "condition") -> T:
    """:func:`wait_for` for a test's event loop: it runs between the polls, so the
    condition may wait on what the loop does (a client writing its request)."""
    polls = _polls(condition, timeout, what)
    try:
        while True:
            next(polls)
            await asyncio.sleep(interval)
    except StopIteration as met:
        return met.value


def _tcp_connections(address: str, end: int) -> Iterator[list[str]]:
    """The rows of ``/proc/net/tcp`` whose local (``end`` 1) or remote (2) end is the
    IPv4 ``address``; the kernel writes each address as hex of the in-memory bytes."""
    host, port = address.rsplit(":", 1)
    wanted = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{int(port):04X}"
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            if fields[end] == wanted:
                yield fields


def unread_bytes(address: str) -> int:
    """Bytes the kernel holds, received and not yet read, on the accepted TCP
    connections of the IPv4 listener at ``address`` (``/proc/net/tcp``): what
    clients sent to a stopped node."""
    total = 0
    for fields in _tcp_connections(address, 1):
        # state, tx_queue:rx_queue; an established connection (01) or one
        # its client has closed (08, CLOSE_WAIT) may hold some.
        if fields[3] in ("01", "08"):
            total += int(fields[4].split(":")[1], 16)
    return total


def held_connections(address: str, peer_port: int | None = None) -> int:
    """How many accepted TCP connections of the IPv4 listener at ``address`` (from
    ``peer_port``, if given) its process still holds: established (01), or ended by
    the client and not yet closed on its side (08, CLOSE_WAIT). One the process has
    closed or dropped no longer counts, even while the kernel still ends it."""
    return sum(1 for fields in _tcp_connections(address, 1) if fields[3] in ("01", "08")
               and (peer_port is None or int(fields[2].split(":")[1], 16) == peer_port))


def own_sockets_to(address: str) -> int:
    """How many TCP sockets this process holds open to the IPv4 ``address``, in any
    state: its descriptors (``/proc/self/fd``) matched to ``/proc/net/tcp`` by inode.
    One a process has closed no longer counts, even while the kernel still ends it."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing (the listing's own descriptor, too)
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return sum(1 for fields in _tcp_connections(address, 2) if fields[9] in inodes)


class NodeProcess(ChildProcess):
    """One ``kvwire serve`` child process. Its stderr goes to ``log_path``."""

    def __init__(
        self,
        node_id: str = "n1",
        *,
        data_dir: str | os.PathLike,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        group: int | None = None,
        tls: DevCerts | None = None,
    ) -> None:
        data_dir = Path(data_dir)
        super().__init__(f"node {node_id}", log_path=data_dir.parent / f"{data_dir.name}.log", env=env, group=group)
        self.node_id = node_id
        self.data_dir = data_dir
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.extra_args = list(extra_args)
        # Serve TLS with these certificates, and ping with their client certificate.
        self.tls = tls
        self._ssl_context = tls.client_context() if tls is not None else None

    @property
    def address(self) -> str:
        return format_endpoint(self.host, self.port)

    @property
    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Client`` for this node: its TLS settings, if any."""
        return self.tls.client_options() if self.tls is not None else {}

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "kvwire", "serve",
            "--node-id", self.node_id,
            "--listen", self.address,
            "--data-dir", str(self.data_dir),
            *(self.tls.node_args() if self.tls is not None else ()),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **(self.env or {})}

    def wait_ready(self, timeout: float = 15.0) -> NodeProcess:
        """Poll with PING until the node answers; fail early if it exits."""

        def answers() -> bool:
            self.check_alive()
            return self.ping(timeout=0.5)

        wait_for(answers, timeout=timeout, what=f"node {self.node_id} answering on {self.address}")
        return self

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the node answers a PING within ``timeout``."""
        try:
            with connect_socket(self.host, self.port, timeout=timeout, ssl_context=self._ssl_context) as sock:
                sock.sendall(encode(Ping(1)))
                codec = Connection(Side.CLIENT)
                while True:
                    data = sock.recv(65536)
                    codec.receive_data(data)
                    event = codec.next_event()
                    if event is not NEED_DATA:
                        return isinstance(event, Pong)
                    if not data:
                        return False
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """``kill -9``: no flush, no goodbye; what it acknowledged must survive."""
        self.signal_and_wait(signal.SIGKILL, timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit status."""
        return self.signal_and_wait(signal.SIGTERM, timeout)

    def interrupt(self, timeout: float = 15.0) -> int:
        """SIGINT (Ctrl-C), then wait for the exit status."""
        return self.signal_and_wait(signal.SIGINT, timeout)

    def pause(self) -> None:
        """SIGSTOP: the sockets stay open but nothing answers, like a hung node."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)

    def health_exit_status(self) -> int:
        """``kvwire-cli health``'s exit status against this node (0 with a majority that
        takes writes, 3 without): what HAProxy's check and an operator's script act on."""
        return subprocess.run([sys.executable, "-m", "kvwire.cli.client", "--endpoints", self.address, "--timeout",
                               "2", "health"], capture_output=True, timeout=30).returncode

    def unread_bytes(self) -> int:
        """Bytes sent to this node that it has not read yet (see :func:`unread_bytes`)."""
        return unread_bytes(self.address)

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"NodeProcess({self.node_id!r}, {self.address}, {state})"


@contextlib.contextmanager
def started_together(nodes: Sequence[NodeProcess], timeout: float = 15.0) -> Iterator[Sequence[NodeProcess]]:
    """Start ``nodes`` (all before waiting on any, so their starts overlap), wait until
    each answers, and stop every one on the way out, also when one never starts."""
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout)
        yield nodes
    finally:
        for node in nodes:
            node.stop()
