"""All client connections together hold at most --max-buffered-bytes of unfinished requests.

A probe (2026-12-07) held 323 MiB of a node with 300 connections, each sending
all but the last bytes of a 1 MB PUT, no token needed; 1,024 would hold a
gigabyte. Past the budget the connection holding the most is closed, with
UNAVAILABLE, and the others go on. Real node process, real sockets.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys

import pytest

from kvwire import Client, KeyNotFoundError
from kvwire.protocol import Consistency, ErrorCode, ErrorReply, Get, HelloReply, Put, PutReply, encode
from kvwire.buffer_budget import ClientBuffers
from kvwire.server.config import ServerConfig
from kvwire.testing import DevCerts, LocalCluster, NodeProcess, RawConnection, free_port, held_connections, wait_for

from test_metrics import scrape, value

KB = 1000
VALUE = b"v" * (1000 * KB)
BUDGET = 3000 * KB


def test_the_holder_of_the_most_is_named_only_when_the_total_grows_past_the_limit():
    buffers = ClientBuffers(100)
    assert buffers.hold("a", 40) is None
    assert buffers.hold("b", 50) is None
    assert buffers.hold("c", 20) == "b"  # over: the biggest, not the one that grew
    assert buffers.total == 110
    assert buffers.hold("b", 0) is None and buffers.total == 60
    assert buffers.hold("a", 30) is None and buffers.total == 50  # shrinking never names one
    assert buffers.hold("a", 90) == "a"


def test_a_budget_below_the_largest_request_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="max_buffered_bytes .* must be at least the largest request's frame"):
        ServerConfig(max_buffered_bytes=1000)
    started = subprocess.run([sys.executable, "-m", "kvwire", "serve", "--data-dir", str(tmp_path / "n1"),
                              "--listen", f"127.0.0.1:{free_port()}", "--max-buffered-bytes", "1000"],
                             capture_output=True, text=True, timeout=30)
    assert started.returncode == 2, started
    assert ("Error: --max-buffered-bytes (1000) must be at least the largest request's frame (1050624 bytes: "
            "--max-key-bytes + --max-value-bytes" in started.stderr), started.stderr
    assert "Traceback" not in started.stderr


def test_past_the_budget_the_connection_holding_the_most_is_closed_and_the_others_go_on(tmp_path):
    metrics = f"127.0.0.1:{free_port()}"
    with NodeProcess("n1", data_dir=tmp_path / "n1",
                     extra_args=["--max-buffered-bytes", str(BUDGET), "--metrics-listen", metrics]) as node, \
            contextlib.ExitStack() as stack:
        frames = {name: encode(Put(1, name, VALUE)) for name in ("small", "big", "third", "last")}
        sent = {"small": 800 * KB, "big": 950 * KB, "third": 700 * KB, "last": 700 * KB}
        clients = {}
        total = 0
        for name in ("small", "big", "third", "last"):
            clients[name] = stack.enter_context(RawConnection(node.address, timeout=10))
            clients[name].send_bytes(frames[name][:sent[name]])
            if name != "last":  # read by the node before the next begins, so the order is known
                total += sent[name]
                wait_for(lambda: value(scrape(metrics), "kvwire_client_buffered_bytes") == total, timeout=10,
                         what=f"the node holding {total} bytes")
        # 3,150 kB > 3,000 kB: the biggest holder is closed, not the last to send.
        (reply,) = clients["big"].receive(1)
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.UNAVAILABLE and reply.id is None, reply
        assert "--max-buffered-bytes" in reply.message
        assert clients["big"].closed_by_peer(timeout=5)
        wait_for(lambda: value(scrape(metrics), "kvwire_client_buffered_bytes") == 2200 * KB, timeout=10,
                 what="the closed connection's bytes released")
        for name in ("small", "third", "last"):  # still open: each finishes its PUT
            clients[name].send_bytes(frames[name][sent[name]:])
            assert isinstance(clients[name].receive(1)[0], PutReply), name
        samples = scrape(metrics)
        assert value(samples, "kvwire_connections_evicted_total") == 1
        assert value(samples, "kvwire_client_buffered_bytes") == 0
        with Client(node.address) as client:
            assert client.get("last") == VALUE
            with pytest.raises(KeyNotFoundError):
                client.get("big")
        assert "it holds 950000 bytes of requests not yet read whole or handled" in node.log()


def test_replies_a_client_leaves_unread_count_too(tmp_path):
    """A client asking for a large value again and again without reading the replies
    makes the node hold them (a pass's worth each, once the kernel's buffers are full):
    those count, and past the budget such a connection is dropped like any other."""
    metrics = f"127.0.0.1:{free_port()}"
    with NodeProcess("n1", data_dir=tmp_path / "n1",
                     extra_args=["--max-buffered-bytes", str(BUDGET), "--metrics-listen", metrics]) as node, \
            contextlib.ExitStack() as stack:
        with Client(node.address) as client:
            client.put("large", VALUE)
        gets = b"".join(encode(Get(number, "large", consistency=Consistency.ONE)) for number in range(1, 41))
        host, port = node.address.rsplit(":", 1)
        for _ in range(8):
            before = value(scrape(metrics), "kvwire_client_buffered_bytes")
            reader = stack.enter_context(socket.socket())
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds less of what it is sent
            reader.connect((host, int(port)))
            reader.sendall(gets)  # 40 MB of replies asked for; none read
            wait_for(lambda: value(scrape(metrics), "kvwire_client_buffered_bytes") >= before + 500 * KB
                     or value(scrape(metrics), "kvwire_connections_evicted_total") >= 1,
                     timeout=10, what="the unread replies counted")
            if value(scrape(metrics), "kvwire_connections_evicted_total") >= 1:
                break
        else:
            raise AssertionError("no connection was closed past the budget")
        assert value(scrape(metrics), "kvwire_client_buffered_bytes") <= BUDGET
        unread = re.search(r"and (\d+) of replies not yet read, the most of any client", node.log())
        assert unread and int(unread[1]) >= 500 * KB, node.log()[-2000:]
        with Client(node.address) as client:
            assert client.get("large") == VALUE  # the others are served


def test_a_connection_closed_with_replies_its_client_never_reads_is_dropped_at_the_frame_timeout(tmp_path):
    """A client that asks, ends its stream and reads nothing: the node closes once every
    request is answered, and a close waits for the replies to be read, so the connection
    and its replies stayed for good, past the deadline that drops an open one (a review
    found it)."""
    cluster = LocalCluster(3, data_dir=tmp_path, node_args=["--frame-timeout", "0.5"])
    with cluster:
        with Client(cluster.endpoints) as client:
            client.put("large", VALUE)
        host, port = cluster["n1"].address.rsplit(":", 1)
        with socket.socket() as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.connect((host, int(port)))
            # Quorum GETs wait on a peer, so all are read before any is answered; 12 MB of replies.
            reader.sendall(b"".join(encode(Get(number, "large")) for number in range(1, 13)))
            reader.shutdown(socket.SHUT_WR)
            wait_for(lambda: "it read none of the replies sent it for 0.5 s" in cluster["n1"].log(), timeout=10,
                     what="the node dropping it")
            wait_for(lambda: held_connections(cluster["n1"].address, reader.getsockname()[1]) == 0, timeout=10,
                     what="the node's side of the closed connection dropped")


def test_over_tls_unread_replies_count_and_a_client_reading_none_is_dropped_at_the_frame_timeout(tmp_path):
    """A TLS transport counts only what its TLS layer holds, and pauses past 512 KiB of
    it: the TCP transport below took the replies, uncounted, and a client reading none
    was never dropped (a review, 2026-12-07). TLS connections now have TCP's limits and
    are written a chunk at a time, so the replies wait in the TLS layer, counted."""
    certs = DevCerts.create(tmp_path / "certs")
    metrics = f"127.0.0.1:{free_port()}"
    with NodeProcess("n1", data_dir=tmp_path / "n1", tls=certs,
                     extra_args=["--frame-timeout", "3", "--metrics-listen", metrics]) as node:
        with Client(node.address, **node.client_options) as client:
            client.put("large", VALUE)
        with socket.socket() as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds less of what it is sent
            raw.connect((node.host, node.port))
            local_port = raw.getsockname()[1]
            with certs.client_context().wrap_socket(raw, server_hostname=node.host) as reader:
                reader.sendall(b"".join(encode(Get(number, "large", consistency=Consistency.ONE))
                                        for number in range(1, 4)))  # 3 MB of replies; none read
                # Most wait in the kernel's buffers; what the node holds is counted (it was not at all).
                wait_for(lambda: value(scrape(metrics), "kvwire_client_buffered_bytes") >= 64 * 1024, timeout=10,
                         what="the unread replies counted")
                wait_for(lambda: "it read none of the replies sent it for 3 s" in node.log(), timeout=15,
                         what="the node dropping it")
                wait_for(lambda: held_connections(node.address, local_port) == 0, timeout=10,
                         what="the node's side of the connection dropped")
        assert value(scrape(metrics), "kvwire_client_buffered_bytes") == 0


def test_a_frame_arriving_on_a_peer_link_is_not_counted(tmp_path):
    """Peers' frames are not clients' (the peer role lifts the count): a peer's
    large message arriving slowly takes none of the clients' budget."""
    cluster = LocalCluster(3, data_dir=tmp_path)
    metrics = f"127.0.0.1:{free_port()}"
    cluster["n1"].extra_args += ["--metrics-listen", metrics]
    with cluster, RawConnection(cluster["n1"].address) as peer, RawConnection(cluster["n1"].address) as client:
        assert isinstance(peer.hello_as_peer("n2", "kvwire", cluster.secret), HelloReply)
        peer.send_bytes(encode(Put(3, "through-a-peer", VALUE))[:900 * KB])
        client.send_bytes(encode(Put(1, "k", b"x"))[:10])
        wait_for(lambda: value(scrape(metrics), "kvwire_client_buffered_bytes") == 10, timeout=10,
                 what="the client's 10 bytes counted, and the peer's 900 kB not")


def test_a_second_peer_hello_on_one_link_is_answered(tmp_path):
    """The peer role lifts the link's count once; a second grant found nothing to
    lift and failed INTERNAL, leaving the session half made (a review found it)."""
    with LocalCluster(3, data_dir=tmp_path) as cluster, RawConnection(cluster["n1"].address) as peer:
        assert isinstance(peer.hello_as_peer("n2", "kvwire", cluster.secret), HelloReply)
        assert isinstance(peer.hello_as_peer("n2", "kvwire", cluster.secret, request_id=11), HelloReply)
        assert "internal error" not in cluster["n1"].log()
