"""Peers prove the cluster secret; far-ahead tags are refused; idle and stalled connections are closed.

Real node processes on 127.0.0.x; the attacker is a raw connection speaking
the real codec.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from kvwire import Client
from kvwire.protocol import Consistency, ErrorCode, ErrorReply, Fetch, Get, Hello, HelloReply, Lookup, LookupReply, Ping, Pong, Put, Replicate, Role
from kvwire.protocol import NoQuorumError, ReplicateReply, Version, encode
from kvwire.protocol.messages import NO_VERSION
from kvwire.protocol.peer_auth import ACCEPTOR, DIALER, new_nonce, peer_proof
from kvwire.testing import LocalCluster, NodeProcess, RawConnection, resident_bytes, unread_bytes, wait_for
from kvwire.testing.cluster import new_secret_file, write_auth_file


def forge_peer(conn: RawConnection, node: str | None = "n2", cluster: str = "kvwire") -> ErrorReply | HelloReply:
    """The attack of issue 10: say HELLO as a peer, with no proof of anything."""
    return conn.request(Hello(1, role=Role.PEER, cluster=cluster, node=node))


# --- the forged peer ---------------------------------------------------------------------


def test_a_forged_peer_is_refused_by_a_lone_node_and_the_value_is_unchanged(node):
    with Client(node.address) as client:
        client.put("balance", 100)
    with RawConnection(node.address) as conn:
        assert forge_peer(conn).code == ErrorCode.FORBIDDEN
        refused = conn.request(Replicate(2, "balance", Version(2**40, "zz"), 0))
        assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.FORBIDDEN
        assert "role 'peer'" in refused.message
        for request in (Lookup(3, "balance"), Fetch(4, "balance")):
            assert conn.request(request).code == ErrorCode.FORBIDDEN
    with Client(node.address) as client:
        assert client.get("balance") == 100
        assert client.put("balance", 101).counter == 2  # the key is still writable


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(3, data_dir=tmp_path_factory.mktemp("security"), heartbeat_interval=0.05,
                      failure_timeout=0.3) as started:
        yield started


def test_a_forged_peer_is_refused_by_a_cluster_node(cluster):
    with Client(cluster.endpoints) as client:
        client.put("forged", "original")
    with RawConnection(cluster["n1"].address) as conn:
        reply = forge_peer(conn)
        assert reply.code == ErrorCode.FORBIDDEN and "no nonce" in reply.message
        assert reply.message.startswith("node 'n1' needs its peers to prove the cluster secret")
        assert conn.request(Replicate(2, "forged", Version(9, "n2"), "evil")).code == ErrorCode.FORBIDDEN
    with Client(cluster.endpoints) as client:
        assert client.get("forged") == "original"


def test_a_peer_with_the_wrong_secret_is_refused_and_the_node_says_so(cluster):
    wrong = b"not the cluster's secret, but long enough"
    with RawConnection(cluster["n1"].address) as conn:
        nonce = new_nonce()
        first = conn.request(Hello(1, role=Role.PEER, cluster="kvwire", node="n2", nonce=nonce))
        assert isinstance(first, HelloReply) and len(first.proof) == 32
        # The node proved the real secret: a dialer holding the wrong one sees the mismatch.
        assert first.proof != peer_proof(wrong, ACCEPTOR, "kvwire", "n2", "n1", nonce, first.nonce)
        assert first.proof == peer_proof(cluster.secret, ACCEPTOR, "kvwire", "n2", "n1", nonce, first.nonce)
        proof = peer_proof(wrong, DIALER, "kvwire", "n2", "n1", nonce, first.nonce)
        second = conn.request(Hello(2, role=Role.PEER, cluster="kvwire", node="n2", proof=proof))
        assert second.code == ErrorCode.FORBIDDEN and "same cluster secret" in second.message
        assert conn.request(Replicate(3, "k", Version(1, "n2"), "v")).code == ErrorCode.FORBIDDEN
    wait_for(lambda: "its proof does not match this node's cluster secret" in cluster["n1"].log(),
             timeout=5, what="n1 logging the refused proof")


def test_a_proof_cannot_be_replayed_reflected_or_sent_without_a_nonce(cluster):
    secret = cluster.secret
    with RawConnection(cluster["n1"].address) as first_conn:
        nonce = new_nonce()
        first = first_conn.request(Hello(1, role=Role.PEER, cluster="kvwire", node="n2", nonce=nonce))
        good = peer_proof(secret, DIALER, "kvwire", "n2", "n1", nonce, first.nonce)
        # Reflected: the node's own proof sent back as ours.
        reflected = first_conn.request(Hello(2, role=Role.PEER, cluster="kvwire", node="n2", proof=first.proof))
        assert reflected.code == ErrorCode.FORBIDDEN
    with RawConnection(cluster["n1"].address) as conn:
        # A proof with no handshake on this connection (replayed from another one).
        alone = conn.request(Hello(1, role=Role.PEER, cluster="kvwire", node="n2", proof=good))
        assert alone.code == ErrorCode.FORBIDDEN and "nonce first" in alone.message
        # A new handshake gets a new nonce, so the old proof no longer fits it.
        conn.request(Hello(2, role=Role.PEER, cluster="kvwire", node="n2", nonce=nonce))
        replayed = conn.request(Hello(3, role=Role.PEER, cluster="kvwire", node="n2", proof=good))
        assert replayed.code == ErrorCode.FORBIDDEN
        # Claiming to be a node the cluster does not have.
        stranger = conn.request(Hello(4, role=Role.PEER, cluster="kvwire", node="n9", nonce=nonce))
        assert stranger.code == ErrorCode.FORBIDDEN and "not a member" in stranger.message
        assert conn.request(Lookup(5, "k")).code == ErrorCode.FORBIDDEN


def test_a_hello_naming_the_dialled_nodes_own_id_says_so(cluster):
    """It said "'n1' is not a member of this cluster" of n1 itself: a node dialling
    itself (another member's --cluster entry holding its address) looks like this."""
    with RawConnection(cluster["n1"].address) as conn:
        reply = conn.request(Hello(1, role=Role.PEER, cluster="kvwire", node="n1", nonce=new_nonce()))
        assert reply.code == ErrorCode.FORBIDDEN and "is the id of the node dialled" in reply.message
    wait_for(lambda: "naming this node's own id 'n1'" in cluster["n1"].log(), timeout=5,
             what="n1 logging a HELLO in its own name")


def test_the_right_secret_makes_a_peer(cluster):
    with RawConnection(cluster["n1"].address) as conn:
        reply = conn.hello_as_peer("n3", "kvwire", cluster.secret)
        assert isinstance(reply, HelloReply) and reply.node == "n1"
        assert isinstance(conn.request(Lookup(3, "anything")), LookupReply)


def test_a_node_with_another_secret_is_kept_out_and_the_others_keep_their_quorum(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, heartbeat_interval=0.05, failure_timeout=0.3) as cluster:
        cluster.terminate("n3")
        cluster["n3"].extra_args += ["--cluster-secret-file", new_secret_file(tmp_path, "other.secret")]
        cluster.start("n3").wait_ready("n3", peers=False)
        # n3 can't prove the secret to n1 and n2, nor they theirs to it: both ways refused.
        wait_for(lambda: "failed to prove the cluster secret" in cluster["n3"].log(), timeout=5,
                 what="n3 logging that its peers' proofs fail")
        wait_for(lambda: "peer n3: handshake failed" in cluster["n1"].log(), timeout=5,
                 what="n1 logging that n3's proof fails")
        cluster.wait_peers("n1", up=["n2"], down=["n3"])
        assert cluster.peer_states("n3") == {"n1": False, "n2": False}
        with Client(cluster.endpoints_of("n1", "n2")) as client:
            client.put("quorum", "kept")
            assert client.get("quorum") == "kept"
        with Client(cluster.endpoints_of("n3"), retry=None) as client:
            with pytest.raises(NoQuorumError, match="2 needed"):
                client.put("lonely", 1)


# --- start-up ------------------------------------------------------------------------------


def serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvwire", "serve", "--data-dir", str(tmp_path / "n1"), *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def test_a_cluster_node_without_a_secret_refuses_to_start(tmp_path):
    result = serve(tmp_path, "--cluster", "n1=127.0.0.1:1,n2=127.0.0.1:2")
    assert result.returncode == 2
    assert "needs --cluster-secret-file" in result.stderr and "kvwire secret FILE" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("content, message", [(b"short\n", "at least 16"), (None, "cannot read cluster secret file")])
def test_a_bad_secret_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
    result = serve(tmp_path, "--cluster", "n1=127.0.0.1:1,n2=127.0.0.1:2", "--cluster-secret-file", str(path))
    assert result.returncode == 2 and message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--cluster-secret-file", "--auth-file"])
@pytest.mark.parametrize("kind", ["device", "fifo", "large"])
def test_a_secret_or_auth_file_that_is_no_small_file_is_refused_not_read_whole(tmp_path, option, kind):
    """Read whole, /dev/zero grew the node until a MemoryError (under kvwire up, a restart
    loop), and a named pipe no one writes to hung its start for good."""
    what = {"--cluster-secret-file": "cluster secret file", "--auth-file": "auth file"}[option]
    if kind == "device":
        path, message = "/dev/zero", f"{what} /dev/zero is not a regular file (a pipe or a device is not read)"
    elif kind == "fifo":
        path = str(tmp_path / "pipe")
        os.mkfifo(path)
        message = f"{what} {path} is not a regular file"
    else:
        path = str(tmp_path / "big")
        with open(path, "wb") as file:
            file.truncate(64 * 1024 * 1024)  # sparse: larger than either file may be
        message = f"{what} {path} is larger than"
    import resource

    def bounded_memory() -> None:  # should /dev/zero be read whole again, a MemoryError, not the machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    result = subprocess.run(
        [sys.executable, "-m", "kvwire", "serve", "--data-dir", str(tmp_path / "n1"),
         "--cluster", "n1=127.0.0.1:1,n2=127.0.0.1:2", "--insecure", option, path],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, preexec_fn=bounded_memory)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_insecure_runs_without_a_secret_and_warns(tmp_path):
    node = NodeProcess("n1", data_dir=tmp_path / "n1",
                       extra_args=["--cluster", "n1=127.0.0.1:{port},n2=127.0.0.1:1", "--insecure"])
    node.extra_args[1] = node.extra_args[1].format(port=node.port)
    with node:
        wait_for(lambda: "--insecure: peers are not authenticated" in node.log(), timeout=5, what="the warning")
        # On the peer's word, as asked, but only a word naming another member.
        for claim, message in ((None, "must name its node"), ("n1", "is the id of the node dialled"),
                               ("zz", "'zz' is not a member")):
            with RawConnection(node.address) as conn:
                refused = forge_peer(conn, node=claim)
                assert refused.code == ErrorCode.FORBIDDEN and message in refused.message, refused
                assert conn.request(Replicate(2, "k", Version(1, "n2"), "v")).code == ErrorCode.FORBIDDEN
        with RawConnection(node.address) as conn:
            assert isinstance(forge_peer(conn), HelloReply)


def test_a_lone_node_takes_no_peers_even_with_insecure_so_its_tokens_hold(tmp_path):
    # A lone node granted the peer role to any HELLO under --insecure, and a peer
    # may read and write every key: past the auth file without a token.
    auth_file = write_auth_file(tmp_path, "app write app-token-0123456789abcdef\n")
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--insecure", "--auth-file", auth_file]) as node, \
            RawConnection(node.address) as conn:
        refused = forge_peer(conn, node=None)
        assert refused.code == ErrorCode.FORBIDDEN and "runs alone" in refused.message
        assert conn.request(Put(2, "secret/x", "v")).code == ErrorCode.UNAUTHENTICATED
        assert conn.request(Get(3, "secret/x")).code == ErrorCode.UNAUTHENTICATED
        assert conn.request(Replicate(4, "secret/x", Version(5, "m9"), "v")).code == ErrorCode.FORBIDDEN


def test_insecure_with_an_auth_file_is_refused_in_a_cluster(tmp_path):
    auth_file = write_auth_file(tmp_path, "app write app-token-0123456789abcdef\n")
    result = serve(tmp_path, "--cluster", "n1=127.0.0.1:1,n2=127.0.0.1:2", "--insecure", "--auth-file", auth_file)
    assert result.returncode == 2, result.stderr
    assert "--auth-file with --insecure protects nothing" in result.stderr and "Traceback" not in result.stderr


def test_kvwire_secret_writes_a_private_file_and_will_not_overwrite(tmp_path):
    path = tmp_path / "cluster.secret"
    made = subprocess.run([sys.executable, "-m", "kvwire", "secret", str(path)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600 and len(path.read_bytes().strip()) >= 32
    again = subprocess.run([sys.executable, "-m", "kvwire", "secret", str(path)], capture_output=True, text=True)
    assert again.returncode == 1 and "exists; --force" in again.stderr and "Traceback" not in again.stderr


def test_a_secret_that_could_not_be_written_leaves_no_file_and_the_advice_works(tmp_path):
    """Created empty, then written: a full disk (here a file size limit) left an empty
    secret; every later `kvwire up` refused it, and the advice `kvwire secret FILE`
    refused the existing file in turn."""
    path = tmp_path / "cluster.secret"
    cut = subprocess.run(["prlimit", "--fsize=10", sys.executable, "-m", "kvwire", "secret", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert cut.returncode == 1 and "Traceback" not in cut.stderr, cut.stderr
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"")  # as an older kvwire left it: the node's advice must fix it
    refused = serve(tmp_path, "--cluster", "n1=127.0.0.1:1,n2=127.0.0.1:2", "--cluster-secret-file", str(path))
    advice = re.search(r"\((replace it with a new one: (kvwire secret --force \S+)), then", refused.stderr)
    assert refused.returncode == 2 and advice is not None, refused.stderr
    fixed = subprocess.run([sys.executable, "-m", *advice.group(2).split()], capture_output=True, text=True, timeout=30)
    assert fixed.returncode == 0, fixed.stderr
    assert len(path.read_bytes().strip()) >= 32


def test_kvwire_secret_force_leaves_a_private_file_whatever_the_old_ones_mode(tmp_path):
    path = tmp_path / "cluster.secret"
    path.write_text("an old secret, left readable by all\n")
    path.chmod(0o644)
    forced = subprocess.run([sys.executable, "-m", "kvwire", "secret", str(path), "--force"], capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert b"old secret" not in path.read_bytes() and len(path.read_bytes().strip()) >= 32
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.secret"]  # no partial file left behind


def test_kvwire_secret_force_replaces_only_a_regular_file(tmp_path):
    """Renamed over, /dev/null became a 44-byte file (an independent check did it to
    /dev/full), and a symlink a file beside its target."""
    target = tmp_path / "target"
    target.write_text("kept\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (link, fifo):
        forced = subprocess.run([sys.executable, "-m", "kvwire", "secret", str(path), "--force"],
                                capture_output=True, text=True, timeout=30)
        assert forced.returncode == 1 and "is not a regular file" in forced.stderr, forced.stderr
        assert len(forced.stderr.strip().splitlines()) == 1, forced.stderr
    assert link.is_symlink() and target.read_text() == "kept\n" and fifo.is_fifo()


# --- far-ahead tags --------------------------------------------------------------------------


def test_a_tag_far_above_the_highest_counter_is_refused_even_from_a_proven_peer(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, node_args=["--max-version-jump", "1000"]) as cluster:
        with Client(cluster.endpoints) as client:
            client.put("k", "v1")  # counter 1 everywhere
        with RawConnection(cluster["n1"].address) as conn:
            cluster.as_peer("n1", conn)
            refused = conn.request(Replicate(10, "k", Version(2**40, "n2"), "poison"))
            assert refused.code == ErrorCode.FORBIDDEN and "too far ahead" in refused.message
            top = conn.request(Replicate(11, "k", Version(2**63 - 1, "n2"), "poison"))
            assert top.code == ErrorCode.FORBIDDEN
            within = conn.request(Replicate(12, "other", Version(1001, "n2"), "fine"))
            assert within == ReplicateReply(12, True, Version(1001, "n2"), NO_VERSION, False)
        wait_for(lambda: "tag counter 1099511627776 is more than 1000 above" in cluster["n1"].log(),
                 timeout=5, what="n1 logging the refused tag")
        with Client(cluster.endpoints) as client:
            assert client.get("k") == "v1"
            assert client.put("k", "v2").counter == 2


# --- idle, slow and greedy connections --------------------------------------------------------


@pytest.fixture
def strict_node(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1",
                     extra_args=["--hello-timeout", "0.5", "--frame-timeout", "0.5"]) as started:
        yield started


def test_a_connection_that_says_nothing_is_closed_after_the_hello_timeout(strict_node):
    with RawConnection(strict_node.address, timeout=5) as silent, Client(strict_node.address) as client:
        client.put("still", "served")
        started = time.monotonic()
        (reply,) = silent.receive(1)
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.TIMEOUT and reply.id is None
        assert "no request within 0.5 s" in reply.message
        assert silent.closed_by_peer(timeout=2)
        assert time.monotonic() - started < 3
        assert client.get("still") == "served"


def test_a_slow_loris_frame_is_closed_after_the_frame_timeout(strict_node):
    frame = encode(Put(1, "slow", "x" * 1000))
    with RawConnection(strict_node.address, timeout=5) as loris, Client(strict_node.address) as client:
        assert isinstance(loris.request(Get(0, "warm-up")), ErrorReply)  # it has spoken: not idle
        # A byte every 0.1 s: each read makes progress, the frame never completes in time.
        closed_at = None
        for byte in frame[:40]:
            try:
                loris.send_bytes(bytes([byte]))
            except OSError:
                closed_at = time.monotonic()
                break
            if loris.closed_by_peer(timeout=0.1):
                closed_at = time.monotonic()
                break
        assert closed_at is not None, "the node kept a stalled frame open"
        assert client.put("others", "unaffected").counter == 1
    wait_for(lambda: "is still incomplete" in strict_node.log(), timeout=5, what="the node logging why")


def test_clients_that_read_none_of_their_replies_lose_their_slots_after_the_frame_timeout(tmp_path):
    """Every one of --max-connections pipelining GETs of a large value and reading no
    reply: flow control bounded the memory, but nothing the time, and every other
    client was refused for good (a REST probe found it on the bridge; the node had
    the same gap). Replies left unread for --frame-timeout now end the connection."""
    with NodeProcess("n1", data_dir=tmp_path / "n1",
                     extra_args=["--frame-timeout", "1", "--max-connections", "3", "--sync", "off"]) as node:
        with Client(node.address) as writer:
            writer.put("big", "x" * 500_000)
        get_big = b"".join(encode(Get(number, "big")) for number in range(1, 41))
        hogs = []
        try:
            for _ in range(3):
                hog = socket.socket()
                hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                hog.connect((node.host, node.port))
                hog.sendall(get_big)  # and reads nothing, ever
                hogs.append(hog)
            started = time.monotonic()
            wait_for(lambda: node.ping(timeout=0.5), timeout=15, what="a slot free again")
            assert time.monotonic() - started >= 0.9  # not before their --frame-timeout
            wait_for(lambda: "read none of the replies sent it for 1 s" in node.log(), timeout=5,
                     what="the node saying why")
        finally:
            for hog in hogs:
                hog.close()


def test_an_idle_connection_whose_backlog_has_drained_is_not_taken_for_a_slow_loris(tmp_path):
    """Three GETs of 600 kB in one write: the first pass stops past 1 MiB of
    replies and leaves the third, whole, in the buffer for later. Once it is
    answered the buffer is empty, and an idle client must not be closed."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--frame-timeout", "0.5"]) as node:
        value = "v" * 600_000
        with RawConnection(node.address, timeout=10) as conn:
            assert conn.request(Put(1, "big", value)).version.counter == 1
            conn.send(*(Get(10 + number, "big") for number in range(3)))
            assert [reply.value for reply in conn.receive(3)] == [value] * 3
            # Closed about a frame timeout (0.5 s) after the replies before the
            # fix (the deadline sweep runs every 0.125 s here); 3 s is well past it.
            assert not conn.closed_by_peer(timeout=3)
            assert conn.request(Ping(20)) == Pong(20)
        assert "is still incomplete" not in node.log()


def test_a_connection_that_pipelines_without_reading_is_held_back_and_others_are_served(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "normal"]) as node:
        with Client(node.address) as client:
            client.put("big", "v" * 200_000)
        rss_before = resident_bytes(node.pid)
        greedy = socket.create_connection(("127.0.0.1", node.port))
        greedy.setblocking(False)
        request = encode(Get(1, "big"))
        # ~200 kB of reply for each 20-byte request: unread, they fill the node's
        # write buffer, it stops reading, and then TCP stops us sending.
        batch = request * 1000
        sent = 0
        deadline = time.monotonic() + 20
        blocked_since = None
        # Bounded: 50 MB of requests, 2.5 million GETs, ask for 500 GB of replies.
        while time.monotonic() < deadline and sent < 50_000_000:
            try:
                sent += greedy.send(batch)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 1.0:
                    break
                select.select([], [greedy], [], 0.05)  # until the node reads again, or 50 ms
        assert blocked_since is not None, f"the node read all {sent} bytes without being read from"
        with Client(node.address) as client:
            assert len(client.get("big")) == 200_000
            client.put("after", 1)
        growth_mib = (resident_bytes(node.pid) - rss_before) / 2**20
        assert growth_mib < 200, f"node grew by {growth_mib:.0f} MiB"
        greedy.close()


def test_max_inflight_holds_even_for_requests_that_arrive_in_one_read(tmp_path):
    """24 quorum GETs in one write, with --max-inflight 8 and both peers hung
    (but not yet DOWN: --failure-timeout 30), so each waits out its deadline.
    The node must start 8, and the next 8 only once those are answered: before
    the fix one pass started every request the read held, so a read's worth of
    GETs of large values (a few thousand) was in flight past any cap. The
    client has closed its sending side at once: the requests held back must
    still be answered, every one, before the node closes."""
    cap, sent, deadline = 8, 24, 1.0
    options = ["--max-inflight", str(cap), "--failure-timeout", "30", "--write-timeout", str(deadline)]
    with LocalCluster(3, data_dir=tmp_path, node_args=options) as cluster:
        cluster.pause("n2")
        cluster.pause("n3")
        try:
            with cluster.raw("n1", timeout=10) as conn:
                conn.send(*(Get(1 + number, f"k{number}", Consistency.QUORUM) for number in range(sent)))
                conn.sock.shutdown(socket.SHUT_WR)
                arrivals = _no_quorum_arrivals(conn, sent)
                assert conn.closed_by_peer(timeout=5)
            # The first wave's replies come together; the next wave starts only
            # then, and waits out a whole deadline of its own.
            assert _first_wave(arrivals, deadline) == cap
            assert arrivals[-1] - arrivals[0] >= (sent // cap - 1) * deadline * 0.9
        finally:
            cluster.resume("n2")
            cluster.resume("n3")
        cluster.wait_peers("n1", up=["n2", "n3"], timeout=10)
        with Client(cluster.endpoints, **cluster.client_options) as client:
            client.put("after", 1)
            assert client.get("after") == 1


@pytest.mark.parametrize("value_bytes, budget", [(300_000, 800_000), (20, 100)], ids=["300kB-values", "in-one-read"])
def test_max_inflight_bytes_holds_back_pipelined_puts(tmp_path, value_bytes, budget):
    """Six PUTs in one write, --max-inflight-bytes set so that three frames
    take a connection past it (the count cap left at its default, 1024), both
    peers hung (not yet DOWN), so each PUT waits out its deadline. The node
    must start three and the others only once those are answered: by the
    count alone it started all six at once, and a client pipelining PUTs of
    1 MiB values could make it hold a gigabyte. With 300 kB values each frame
    comes in reads of its own, and reading stops at the budget; with 20-byte
    values all six come in one read, and the connection must stop starting
    the requests it has read. Every PUT is answered, in a wave of three and then the rest."""
    sent, deadline = 6, 1.0
    value = "v" * value_bytes
    options = ["--max-inflight-bytes", str(budget), "--failure-timeout", "30", "--write-timeout", str(deadline)]
    with LocalCluster(3, data_dir=tmp_path, node_args=options) as cluster:
        cluster.wait_peers("n1", up=["n2", "n3"], timeout=10)
        requests = [Put(1 + number, f"k{number}", value) for number in range(sent)]
        assert 2 * len(encode(requests[0])) < budget <= 3 * len(encode(requests[0]))
        _started_three_at_a_time(cluster, requests, deadline)
        with Client(cluster.endpoints, **cluster.client_options) as client:
            client.put("after", value)
            assert client.get("after") == value


def test_max_inflight_bytes_counts_room_for_the_value_a_get_brings_in(tmp_path):
    """Six quorum GETs of keys holding 100 kB values, in one write, with
    --max-value-bytes 100000 and --max-inflight-bytes set so that three GETs,
    each charged its 20-byte frame plus room for the largest value, take the
    connection past it; both peers hung (not yet DOWN), so each GET waits out
    its deadline. The node must start three, then the rest: counted by their
    frames alone all six started at once, and a client pipelining GETs of
    1 MiB values could make the node hold a gigabyte of peers' answers and
    replies. Every GET is answered."""
    sent, deadline, value_room = 6, 1.0, 100_000
    budget = 2 * value_room + 1_000  # past it after three GETs, not after two
    options = ["--max-value-bytes", str(value_room), "--max-inflight-bytes", str(budget),
               "--failure-timeout", "30", "--write-timeout", str(deadline)]
    with LocalCluster(3, data_dir=tmp_path, node_args=options) as cluster:
        cluster.wait_peers("n1", up=["n2", "n3"], timeout=10)
        with Client(cluster.endpoints, **cluster.client_options) as client:
            for number in range(sent):
                client.put(f"k{number}", b"v" * (value_room - 100))
        requests = [Get(1 + number, f"k{number}", Consistency.QUORUM) for number in range(sent)]
        assert 3 * len(encode(requests[0])) < 1_000
        _started_three_at_a_time(cluster, requests, deadline)
        with Client(cluster.endpoints, **cluster.client_options) as client:
            assert client.get("k0", consistency="quorum") == b"v" * (value_room - 100)


def _started_three_at_a_time(cluster: LocalCluster, requests: list, deadline: float) -> None:
    """Send ``requests`` (ids 1..n) to n1 in one write with both its peers hung (not yet
    DOWN), so each waits out its deadline and fails NO_QUORUM; n1 must have started three,
    then the rest once those were answered. The peers are UP again on return."""
    cluster.pause("n2")
    cluster.pause("n3")
    try:
        with cluster.raw("n1", timeout=10) as conn:
            conn.send(*requests)
            arrivals = _no_quorum_arrivals(conn, len(requests))
        assert _first_wave(arrivals, deadline) == 3
        assert arrivals[-1] - arrivals[0] >= deadline * 0.9
    finally:
        cluster.resume("n2")
        cluster.resume("n3")
    cluster.wait_peers("n1", up=["n2", "n3"], timeout=10)


def _no_quorum_arrivals(conn: RawConnection, sent: int) -> list[float]:
    """When each of the replies to requests 1..``sent`` came; every one must be NO_QUORUM."""
    arrivals, answered = [], set()
    for _ in range(sent):
        reply = conn.receive(1)[0]
        arrivals.append(time.monotonic())
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.NO_QUORUM, reply
        answered.add(reply.id)
    assert answered == set(range(1, sent + 1))
    return arrivals


def _first_wave(arrivals: list[float], deadline: float) -> int:
    """How many replies came with the first: within half a deadline of it."""
    return len([at for at in arrivals if at - arrivals[0] < deadline / 2])


def test_a_node_stopping_answers_the_requests_it_started_and_refuses_those_it_held_back(tmp_path):
    """24 quorum GETs in one read, --max-inflight 8, both peers hung (not yet
    DOWN), then SIGTERM. The node waits for the 8 it started (each fails at its
    deadline) and refuses the other 16 UNAVAILABLE, not started, applied
    nowhere; it must neither drop them unanswered nor start them once the
    first 8 are answered, with no one left waiting for their replies."""
    cap, sent = 8, 24
    options = ["--max-inflight", str(cap), "--failure-timeout", "30", "--write-timeout", "1"]
    with LocalCluster(3, data_dir=tmp_path, node_args=options) as cluster:
        n1 = cluster["n1"]
        cluster.pause("n2")
        cluster.pause("n3")
        try:
            with cluster.raw("n1", timeout=15) as conn:
                conn.send(*(Get(1 + number, f"k{number}", Consistency.QUORUM) for number in range(sent)))
                wait_for(lambda: unread_bytes(n1.address) == 0, timeout=5, what="n1 reading every request")
                n1.send_signal(signal.SIGTERM)
                replies = conn.receive(sent)
                assert conn.closed_by_peer(timeout=10)
            assert n1.wait(timeout=15) == 0
        finally:
            cluster.resume("n2")
            cluster.resume("n3")
    assert all(isinstance(reply, ErrorReply) for reply in replies), replies
    refused = sorted(reply.id for reply in replies if "request not started" in reply.message)
    started = sorted(reply.id for reply in replies if "request not started" not in reply.message)
    assert started == list(range(1, cap + 1)), replies
    assert refused == list(range(cap + 1, sent + 1)), replies
    for reply in replies:
        if reply.id in refused:
            assert reply.code == ErrorCode.UNAVAILABLE and reply.maybe_applied is False, reply


# --- the documented handshake ---------------------------------------------------------------


def test_the_peer_proof_vectors_in_the_protocol_doc_are_what_the_code_computes():
    import re
    from pathlib import Path

    import msgpack

    from kvwire.protocol import peer_auth

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    blocks = {name: bytes.fromhex(" ".join(block.split()))
              for name, block in re.findall(r"<!-- peer-proof: (\w+) -->\n```text\n(.*?)```", doc, re.DOTALL)}
    inputs = dict(re.findall(r"<!-- peer-proof input: (\w+) -->\n```text\n(.*?)```", doc, re.DOTALL))
    secret, nd, na = b"correct horse battery staple!!", bytes(range(16)), bytes(range(16, 32))
    assert bytes.fromhex(" ".join(inputs["acceptor"].split())) == msgpack.packb(
        ["kvwire peer proof v1", "acceptor", "kvwire", "n2", "n1", nd, na])
    for side in (peer_auth.ACCEPTOR, peer_auth.DIALER):
        assert blocks[side] == peer_proof(secret, side, "kvwire", "n2", "n1", nd, na), side


def test_a_client_that_asks_much_then_half_closes_gets_every_reply(tmp_path):
    """The 1 MiB-a-pass bound leaves requests read but unanswered while the node
    stops reading; a client that has already shut down its sending side must
    still get an answer to each, and then see the node close."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "normal"]) as node:
        with Client(node.address) as client:
            client.put("big", "v" * 100_000)
        count = 300  # 30 MB of replies: 30 passes
        with RawConnection(node.address, timeout=20) as conn:
            conn.send(*(Get(i, "big") for i in range(count)))
            conn.sock.shutdown(socket.SHUT_WR)
            replies = conn.receive(count)
            assert sorted(reply.id for reply in replies) == list(range(count))
            assert all(len(reply.value) == 100_000 for reply in replies)
            assert conn.closed_by_peer(timeout=5)


def test_a_peer_learns_the_nodes_process_and_members_only_once_it_proved_the_secret(cluster):
    """The reply to a peer's first HELLO, which anyone naming a member gets, carried the
    node's instance id and its --cluster (a reviewer's finding); they now come with the
    reply that grants the role."""
    with RawConnection(cluster["n1"].address) as conn:
        first = conn.request(Hello(1, role=Role.PEER, cluster="kvwire", node="n2", nonce=new_nonce()))
        assert isinstance(first, HelloReply) and first.proof is not None
        assert first.instance is None and first.members is None
    with RawConnection(cluster["n1"].address) as conn:
        granted = conn.hello_as_peer("n2", "kvwire", cluster.secret)
        assert isinstance(granted, HelloReply) and granted.instance is not None
        assert granted.members == {node.node_id: node.address for node in cluster}


def test_a_peer_handshake_relayed_from_a_stopped_members_address_gives_no_peer_link(tmp_path):
    """Someone without the secret takes a stopped member's address (n3's), waits for
    n1 to dial it, relays n1's HELLO to n2 as its own and n2's answer back to n1.
    n1 used to check n2's proof against the node the answer named, find it good,
    and give its own proof, which the relay handed to n2: a proven peer link of its
    own, without the secret, that wrote keys (a security probe's finding). n1 now
    refuses an answer from any node but the one it dialled, before proving."""
    from kvwire.protocol import Connection, Side
    from kvwire.protocol.connection import NEED_DATA as NEED

    with LocalCluster(3, data_dir=tmp_path, sync="off") as cluster:
        n3 = cluster["n3"]
        cluster.kill("n3")
        listener = socket.create_server((n3.host, n3.port))
        listener.settimeout(20)
        try:
            dialler, _ = listener.accept()  # n1 or n2, dialling "n3" again
            dialler.settimeout(5)
            codec = Connection(Side.NODE)

            def next_hello():
                while (event := codec.next_event()) is NEED:
                    data = dialler.recv(65536)
                    if not data:
                        return None  # the dialler closed: no second HELLO, no proof
                    codec.receive_data(data)
                return event

            first = next_hello()
            assert isinstance(first, Hello) and first.nonce is not None
            other = cluster["n2" if first.node == "n1" else "n1"]
            with RawConnection(other.address) as relay:
                answer = relay.request(Hello(1, role=Role.PEER, cluster=first.cluster, node=first.node, nonce=first.nonce))
                assert isinstance(answer, HelloReply) and answer.proof is not None
                dialler.sendall(encode(HelloReply(first.id, answer.proto, answer.node, answer.cluster, answer.limits,
                                                  answer.nonce, answer.proof)))
                assert next_hello() is None  # no proof of the dialler's to hand on
                forged = relay.request(Replicate(2, "taken", Version(5000, first.node), "forged"))
                assert isinstance(forged, ErrorReply) and forged.code == ErrorCode.FORBIDDEN, forged
            dialler.close()
        finally:
            listener.close()
        wait_for(lambda: f"answers as node {other.node_id!r}, not 'n3'" in cluster[first.node].log(), timeout=10,
                 what="the dialler logging whom it found")
        with Client(cluster["n1"].address) as client:
            with pytest.raises(KeyError):
                client.get("taken", consistency=Consistency.ONE)
