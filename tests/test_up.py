"""``kvwire up`` as a user runs it: a real cluster in the foreground, stopped by a signal."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from kvwire import Client
from kvwire.protocol import Health, HealthReply, Ping, Pong
from kvwire.testing import RawConnection, free_port_run, wait_for

NODE_LINE = re.compile(r"^\s+(n\d+)\s+(\S+)\s+pid (\d+)\s+data (.+)$", re.MULTILINE)


def free_port_runs(count: int) -> tuple[int, int]:
    """First ports of two disjoint runs of ``count`` free ports: nodes, then HTTP bridges."""
    for _ in range(50):
        nodes, bridges = free_port_run(count), free_port_run(count)
        if abs(nodes - bridges) >= count:
            return nodes, bridges
    raise RuntimeError("no two disjoint runs of free ports found")


def rest(method: str, url: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


class Up:
    """``kvwire up`` in a child process; stdout and stderr go to files the test reads."""

    def __init__(self, tmp_path, *args):
        self.stdout_path = tmp_path / "up.out"
        self.stderr_path = tmp_path / "up.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kvwire", "up", *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=tmp_path,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def nodes(self) -> dict[str, tuple[str, int, str]]:
        """``{node_id: (address, pid, data_dir)}`` as printed."""
        return {m[1]: (m[2], int(m[3]), m[4]) for m in NODE_LINE.finditer(self.stdout)}

    def wait_printed(self, text: str, timeout: float = 20.0) -> None:
        def printed() -> bool:
            assert self.process.poll() is None or text in self.stdout, (
                f"kvwire up exited with {self.process.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
            )
            return text in self.stdout

        wait_for(printed, timeout=timeout, what=f"kvwire up printing {text!r}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def cleanup(self) -> None:
        """If the test failed half-way: leave no process behind."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for _, pid, _ in self.nodes().values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def answers_ping(address: str) -> bool:
    try:
        with RawConnection(address, timeout=1) as connection:
            return isinstance(connection.request(Ping(1)), Pong)
    except (OSError, EOFError, TimeoutError):
        return False


def sees_nodes_up(address: str, count: int) -> bool:
    """Whether the node at ``address`` answers HEALTH and counts ``count`` nodes UP, itself included."""
    try:
        with RawConnection(address, timeout=1) as connection:
            reply = connection.request(Health(1))
    except (OSError, EOFError, TimeoutError):
        return False
    return isinstance(reply, HealthReply) and reply.health["cluster"]["healthy_nodes"] == count


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_up_runs_a_cluster_until_a_signal_stops_it_cleanly(tmp_path, signum):
    base, http_base = free_port_runs(3)
    up = Up(tmp_path, "--nodes", "3", "--base-port", str(base), "--http-base-port", str(http_base),
            "--data-dir", str(tmp_path / "data"), "--sync", "normal")
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        nodes = up.nodes()
        expected = [f"127.0.0.1:{port}" for port in range(base, base + 3)]
        assert [nodes[node_id][0] for node_id in ("n1", "n2", "n3")] == expected
        assert f"KVWIRE_ENDPOINTS={','.join(expected)}" in up.stdout
        # Each node answers once its peers are UP (a quorum read before that fails by design).
        for address in expected:
            wait_for(lambda: sees_nodes_up(address, 3), timeout=10, what=f"{address} seeing all three nodes UP")
        # The nodes form one cluster: a write through n1 is read through n3.
        with Client(expected[0]) as first, Client(expected[2]) as third:
            first.put("greeting", "hello")
            assert third.get("greeting") == "hello"
            assert third.health()["cluster_id"] == "kvwire"
        # Each node serves the REST API on its own port, printed; a write through n1's is read through n3's.
        urls = [f"http://127.0.0.1:{port}/kv-store/v1" for port in range(http_base, http_base + 3)]
        assert f"REST API: {' '.join(urls)}" in up.stdout
        assert rest("PUT", f"{urls[0]}/kv/rest-greeting/", {"value": "hi"})[0] == 201
        assert rest("GET", f"{urls[2]}/kv/rest-greeting/") == (
            200, {"key": "rest-greeting", "value": "hi", "version": {"counter": 1, "node": "n1"}})
        # The REST health report shows the same: n2 sees both peers UP.
        status, health = wait_for(
            lambda: (reply := rest("GET", f"{urls[1]}/health/"))[1]["cluster"]["healthy_nodes"] == 3 and reply,
            timeout=5, what="n2 seeing both peers UP")
        assert status == 200 and health["node_id"] == "n2"
        for node_id in ("n1", "n2", "n3"):
            assert (tmp_path / "data" / node_id).is_dir()
        # The nodes prove to each other a secret `up` made for them, private to its owner.
        secret = tmp_path / "data" / "cluster.secret"
        assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes().strip()) >= 32

        up.process.send_signal(signum)
        assert up.wait_exit(timeout=30) == 0, up.stderr
        assert all(process_gone(pid) for _, pid, _ in nodes.values())
        assert not any(answers_ping(address) for address in expected)
        for url in urls:
            with pytest.raises(OSError):
                rest("GET", f"{url}/health/")
        assert "every node stopped cleanly" in up.stdout
        # Every node's log, on stderr behind its id, down to its clean shutdown.
        for node_id in ("n1", "n2", "n3"):
            assert re.search(rf"^{node_id} \| .*storage flushed and closed; bye( |$)", up.stderr, re.MULTILINE), up.stderr
        assert "Traceback" not in up.stderr
    finally:
        up.cleanup()


def test_a_port_in_use_is_one_clear_line_and_nothing_starts(tmp_path):
    base, http_base = free_port_runs(3)
    with socket.create_server(("127.0.0.1", base + 1)):  # n2's port
        result = subprocess.run(
            [sys.executable, "-m", "kvwire", "up", "--base-port", str(base), "--http-base-port", str(http_base),
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{base + 1} for n2" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not answers_ping(f"127.0.0.1:{base}")  # n1 was never started


def test_an_http_port_in_use_is_one_clear_line_and_nothing_starts(tmp_path):
    base, http_base = free_port_runs(3)
    with socket.create_server(("127.0.0.1", http_base + 2)):  # n3's bridge
        result = subprocess.run(
            [sys.executable, "-m", "kvwire", "up", "--base-port", str(base), "--http-base-port", str(http_base),
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{http_base + 2} for the HTTP bridge of n3" in result.stderr
    assert "--http-base-port" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not answers_ping(f"127.0.0.1:{base}")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--http-base-port", "65535"], "--http-base-port 65535 leaves no room for 3 nodes"),
        (["--base-port", "7379", "--http-base-port", "7380"], "would serve both a node and an HTTP bridge"),
    ],
)
def test_bad_http_ports_are_usage_errors(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "kvwire", "up", *args],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / ".kvwire").exists()


def test_a_node_dying_stops_the_rest_with_a_failure_status(tmp_path):
    base = free_port_run(2)
    up = Up(tmp_path, "--nodes", "2", "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"), "--sync", "off")
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        nodes = up.nodes()
        os.kill(nodes["n2"][1], signal.SIGKILL)
        assert up.wait_exit(timeout=30) == 1
        assert "node n2 exited unexpectedly (killed by SIGKILL)" in up.stderr
        assert process_gone(nodes["n1"][1])
        assert "Traceback" not in up.stderr
    finally:
        up.cleanup()


def test_options_after_a_double_dash_reach_every_node(tmp_path):
    base = free_port_run(1)
    # 0 is refused by `kvwire serve`; that it is refused shows it got there.
    up = Up(tmp_path, "--nodes", "1", "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"), "--", "--write-timeout", "0")
    try:
        assert up.wait_exit(timeout=30) == 1
        assert "node n1 exited unexpectedly (exit status 2)" in up.stderr
        assert re.search(r"^n1 \| .*--write-timeout", up.stderr, re.MULTILINE), up.stderr
    finally:
        up.cleanup()


def test_a_single_node_runs_alone(tmp_path):
    base = free_port_run(1)
    up = Up(tmp_path, "--nodes", "1", "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"))
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        with Client(f"127.0.0.1:{base}") as client:
            assert client.health()["cluster"]["replication_enabled"] is False
        assert "REST API" not in up.stdout and "--http-listen" not in up.stderr
        up.process.send_signal(signal.SIGINT)
        assert up.wait_exit(timeout=30) == 0, up.stderr
    finally:
        up.cleanup()


def test_too_many_nodes_for_the_port_range_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kvwire", "up", "--nodes", "3", "--base-port", "65535"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "no room for 3 nodes" in result.stderr
    assert not (tmp_path / ".kvwire").exists()
