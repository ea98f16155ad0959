"""kvwire.testing: LocalCluster, real nodes on 127.0.0.x driven by signals, and the ChildProcess under them."""

import asyncio
import io
import signal
import socket
import sys
import threading
import time

import pytest

from kvwire import Client
from kvwire.testing import (ChildProcess, LineCopy, LocalCluster, NodeProcess, free_port, free_port_run, own_sockets_to,
                            unread_bytes, wait_for, wait_for_async)


def test_a_cluster_starts_on_one_loopback_address_per_node_and_stops(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, failure_timeout=0.3) as cluster:
        assert cluster.node_ids == ("n1", "n2", "n3")
        assert [address.rsplit(":", 1)[0] for address in cluster.endpoints] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        assert cluster.members == ",".join(f"{node.node_id}={node.address}" for node in cluster)
        assert cluster.peer_states("n1") == {"n2": True, "n3": True}
        assert cluster.health("n2")["cluster_id"] == "kvwire"
        with Client(cluster.endpoints_of("n1")) as first, Client(cluster.endpoints_of("n3")) as third:
            first.put("k", "v")
            assert third.get("k") == "v"
        processes = [node.process for node in cluster]
        assert (tmp_path / "n1" / "kvwire.sqlite3").exists() and (tmp_path / "n1.log").exists()
    assert all(process.poll() is not None for process in processes)


def test_kill_pause_resume_and_restart_are_seen_by_the_peers(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, heartbeat_interval=0.05, failure_timeout=0.3) as cluster:
        cluster.pause("n2")
        cluster.wait_peers("n1", down=["n2"], timeout=2)
        cluster.resume("n2")
        cluster.wait_peers("n1", up=["n2"], timeout=2)

        cluster.kill("n3")
        assert not cluster["n3"].running
        cluster.wait_peers("n1", down=["n3"], timeout=2)
        cluster.start("n3").wait_ready("n3")
        assert cluster.peer_states("n1") == {"n2": True, "n3": True}

        port_before = cluster["n2"].port
        restarted = cluster.restart("n2")
        assert restarted.running and restarted.port == port_before
        assert cluster.peer_states("n2") == {"n1": True, "n3": True}


def test_cluster_options_reach_every_node(tmp_path):
    cluster = LocalCluster(2, data_dir=tmp_path, cluster_id="elsewhere", write_timeout=0.7, node_args=["--sync", "off"])
    for node in cluster:
        args = node.command
        assert args[args.index("--cluster-id") + 1] == "elsewhere"
        assert args[args.index("--write-timeout") + 1] == "0.7"
        assert args[args.index("--cluster") + 1] == cluster.members
        assert args[-2:] == ["--sync", "off"]
    with pytest.raises(KeyError, match="n1, n2"):
        cluster["n3"]


@pytest.mark.parametrize("size", [0, 255, 2.0])
def test_cluster_size_is_checked(tmp_path, size):
    with pytest.raises(ValueError, match="size"):
        LocalCluster(size, data_dir=tmp_path)


# --- ChildProcess, on small Python programs ---------------------------------------------------


def python(name, code, tmp_path):
    """A child running ``code``, which says "ready" on stderr once its signal handling is set."""
    return ChildProcess(name, [sys.executable, "-c", code], log_path=tmp_path / f"{name}.log")


def test_stop_kills_a_child_that_ignores_sigterm_once_the_grace_is_over(tmp_path):
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', file=sys.stderr, flush=True); time.sleep(60)"
    child = python("stubborn", code, tmp_path).start()
    wait_for(lambda: "ready" in child.log(), timeout=10, what="the child ignoring SIGTERM")
    started = time.monotonic()
    assert child.stop(grace=0.5) is True
    assert time.monotonic() - started >= 0.5
    assert child.returncode == -signal.SIGKILL


def test_stop_lets_a_child_that_exits_on_sigterm_go_without_killing_it(tmp_path):
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(3)); print('ready', file=sys.stderr, flush=True); time.sleep(60)"
    child = python("obliging", code, tmp_path).start()
    wait_for(lambda: "ready" in child.log(), timeout=10, what="the child handling SIGTERM")
    child.send_signal(signal.SIGSTOP)  # paused: only the SIGCONT sent first lets it act on SIGTERM
    assert child.stop(grace=10) is False
    assert child.returncode == 3


def test_output_is_copied_line_by_line_behind_the_prefix_stdout_and_stderr_alike(tmp_path):
    code = "import sys; print('one', flush=True); print('two', file=sys.stderr, flush=True); sys.exit(4)"
    stream = io.StringIO()
    child = ChildProcess("talker", [sys.executable, "-c", code]).start(copy_to=LineCopy(stream, "talker | ", threading.Lock()))
    assert child.wait(timeout=10) == 4
    assert stream.getvalue() == "talker | one\ntalker | two\n"
    assert child.log() == ""


def test_a_child_needs_somewhere_for_its_output(tmp_path):
    with pytest.raises(ValueError, match="log_path"):
        ChildProcess("silent", [sys.executable, "-c", "pass"]).start()


def test_with_stops_the_child_even_when_it_never_becomes_ready(tmp_path):
    child = python("sleeper", "import time; time.sleep(60)", tmp_path)
    child.wait_ready = lambda timeout=15.0: wait_for(lambda: False, timeout=0.2, what="a sign it never gives")
    with pytest.raises(TimeoutError, match="a sign it never gives"):
        with child:
            pass
    assert child.returncode == -signal.SIGKILL  # stop_grace 0: killed at once


def test_unread_bytes_counts_what_a_listener_received_and_has_not_read():
    with socket.create_server(("127.0.0.2", 0)) as listener:
        address = f"127.0.0.2:{listener.getsockname()[1]}"
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert unread_bytes(address) == 0
                client.sendall(b"x" * 123)
                wait_for(lambda: unread_bytes(address) == 123, timeout=5, what="123 bytes queued")
                assert accepted.recv(100) == b"x" * 100
                assert unread_bytes(address) == 23
                # Another listener's connections are not counted.
                assert unread_bytes(f"127.0.0.2:{listener.getsockname()[1] + 1}") == 0


def test_own_sockets_to_counts_this_process_s_connections_to_an_address():
    with socket.create_server(("127.0.0.2", 0)) as listener:
        address = f"127.0.0.2:{listener.getsockname()[1]}"
        assert own_sockets_to(address) == 0  # the listener is not connected to itself
        first = socket.create_connection(listener.getsockname())
        with socket.create_connection(listener.getsockname()):
            assert own_sockets_to(address) == 2  # the two dialled ends; the listener's own ends are not to it
            first.close()
            assert own_sockets_to(address) == 1
        assert own_sockets_to(address) == 0
        assert own_sockets_to(f"127.0.0.2:{listener.getsockname()[1] + 1}") == 0


def test_a_stopped_node_holds_a_request_unread_until_it_resumes(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1") as node, Client([node.address], timeout=10) as client:
        client.ping()
        with socket.create_connection((node.host, node.port)) as raw:
            node.pause()
            try:
                raw.sendall(b"\x00\x00\x00\x01")  # a frame header, read once the node runs again
                wait_for(lambda: node.unread_bytes() == 4, timeout=5, what="4 bytes unread by the stopped node")
            finally:
                node.resume()
            wait_for(lambda: node.unread_bytes() == 0, timeout=5, what="the node reading its socket again")


def test_wait_for_returns_the_first_truthy_result_or_times_out_naming_what():
    answers = iter([None, 0, "", "ready", "later"])
    assert wait_for(lambda: next(answers), timeout=5, interval=0) == "ready"
    with pytest.raises(TimeoutError, match="the thing not met within 0.05 s"):
        wait_for(lambda: False, timeout=0.05, what="the thing")


async def test_wait_for_async_lets_the_loop_run_between_polls():
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, done.set_result, "set by the loop")
    assert await wait_for_async(lambda: done.done() and done.result(), timeout=5) == "set by the loop"
    with pytest.raises(TimeoutError, match="never not met within 0.05 s"):
        await wait_for_async(lambda: None, timeout=0.05, what="never")


def test_free_ports_are_free_and_below_the_range_the_kernel_gives_connections_from():
    # A port in that range can be taken by any outgoing connection between the
    # pick and the child's bind (kvwire.testing.node says when that happened).
    with open("/proc/sys/net/ipv4/ip_local_port_range") as port_range:
        first_ephemeral = int(port_range.read().split()[0])
    for _ in range(20):
        port, base = free_port("127.0.0.2"), free_port_run(3)
        assert 10_000 <= port < first_ephemeral and 10_000 <= base and base + 2 < first_ephemeral
        with socket.socket() as one, socket.socket() as two, socket.socket() as three, socket.socket() as four:
            one.bind(("127.0.0.2", port))
            for probe, offset in ((two, 0), (three, 1), (four, 2)):
                probe.bind(("127.0.0.1", base + offset))


def test_two_xdist_workers_pick_ports_from_shares_that_do_not_overlap(monkeypatch):
    """Each worker remembers only the ports it handed out: a fresh-clone CI run's node found
    its HTTP bridge's port, picked a moment before, taken by the other worker's test."""
    picked = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        runs = [free_port_run(3) for _ in range(50)]
        picked[worker] = {free_port() for _ in range(300)} | {base + offset for base in runs for offset in range(3)}
    assert max(picked["gw0"]) < min(picked["gw1"]), (max(picked["gw0"]), min(picked["gw1"]))


def test_free_port_does_not_hand_out_a_port_twice_before_it_is_bound():
    """A port probed free stays free until its user binds it: two picks before either
    bound could name the same one, and a CI run's HAProxy found its stats port taken
    ("Address already in use"). 2,000 picks from about 22,000 ports all but surely
    repeated one; none may now."""
    picks = [free_port() for _ in range(2000)]
    assert len(set(picks)) == len(picks)
