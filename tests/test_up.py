"""``kvwire up`` as a user runs it: a real cluster in the foreground, stopped by a signal."""

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import io
import subprocess
import sys
import time
import urllib.request

import pytest

from kvwire import Client, KeyNotFoundError, NoQuorumError, RetryPolicy, UnavailableError
from kvwire.cli.supervisor import RESTART_BASE_S, RESTART_CAP_S, STABLE_RUN_S, Supervisor
from kvwire.protocol import Health, HealthReply, Ping, Pong
from kvwire.server.storage import DATABASE_FILE_NAME, SCHEMA
from kvwire.testing import ChildProcess, NodeProcess, RawConnection, free_port, free_port_run, stop_gracefully, wait_for

NODE_LINE = re.compile(r"^\s+(n\d+)\s+(\S+)\s+pid (\d+)\s+data (.+)$", re.MULTILINE)


def free_port_runs(count: int) -> tuple[int, int]:
    """First ports of two disjoint runs of ``count`` free ports: nodes, then HTTP bridges."""
    for _ in range(50):
        nodes, bridges = free_port_run(count), free_port_run(count)
        if abs(nodes - bridges) >= count:
            return nodes, bridges
    raise RuntimeError("no two disjoint runs of free ports found")


def balancer_addresses(*taken: range) -> dict[str, str]:
    """KVWIRE_LB_TCP, _HTTP and _STATS on three free ports outside the ``taken`` ranges:
    the nodes' and bridges' ports are free too until ``kvwire up`` binds them, so a
    pick of its own could land on one (it did once: HAProxy could then never bind)."""
    for _ in range(50):
        first = free_port_run(3)
        if not any(port in ports for ports in taken for port in range(first, first + 3)):
            return {name: f"127.0.0.1:{first + i}"
                    for i, name in enumerate(("KVWIRE_LB_TCP", "KVWIRE_LB_HTTP", "KVWIRE_LB_STATS"))}
    raise RuntimeError("no run of free ports found apart from the nodes'")


def run_up(tmp_path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``kvwire up ARGS...`` run to its end in ``tmp_path``: for the runs that stop at once."""
    return subprocess.run([sys.executable, "-m", "kvwire", "up", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, stdin=subprocess.DEVNULL)


def rest(method: str, url: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


class Up:
    """``kvwire up`` in a child process; stdout and stderr go to files the test reads."""

    def __init__(self, tmp_path, *args, env=None, own_group=False):
        self.stdout_path = tmp_path / "up.out"
        self.stderr_path = tmp_path / "up.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kvwire", "up", *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=tmp_path, env=env,
                start_new_session=own_group,  # a process group of its own, as a terminal gives it
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

    def stop_cleanly(self, signum: int = signal.SIGINT) -> None:
        """Ctrl-C (or SIGTERM) to ``kvwire up``, which must stop every node and exit 0."""
        self.process.send_signal(signum)
        assert self.wait_exit(timeout=30) == 0, self.stderr

    def cleanup(self) -> None:
        """If the test failed half-way: leave no process behind, and none still exiting
        (holding its port or data directory) when this returns."""
        stop_gracefully(self.process)
        pids = [pid for _, pid, _ in self.nodes().values()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            wait_for(lambda: process_gone(pid), timeout=10, what=f"node pid {pid} gone")


def one_node_up(tmp_path, base: int) -> Up:
    """``kvwire up`` of a lone node (no HTTP bridge) on port ``base``, its data in tmp_path/data."""
    return Up(tmp_path, "--nodes", "1", "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"))


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
    """Whether ``pid`` has exited: no such process, or a zombie (an orphan's exit is
    reaped by whoever adopted it, which in a container may never do it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


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
            200, {"key": "rest-greeting", "value": "hi", "version": {"counter": 1, "node": "!n1"}})
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
        result = run_up(tmp_path, "--base-port", str(base), "--http-base-port", str(http_base),
                        "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert f"127.0.0.1:{base + 1} for n2" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not answers_ping(f"127.0.0.1:{base}")  # n1 was never started


def test_an_http_port_in_use_is_one_clear_line_and_nothing_starts(tmp_path):
    base, http_base = free_port_runs(3)
    with socket.create_server(("127.0.0.1", http_base + 2)):  # n3's bridge
        result = run_up(tmp_path, "--base-port", str(base), "--http-base-port", str(http_base),
                        "--data-dir", str(tmp_path / "data"))
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
    result = run_up(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / ".kvwire").exists()


@pytest.mark.parametrize(
    "value, message",
    [
        ("nan", "'nan' is not a number of seconds"),  # nan passes every range check of click's own
        ("0", "0.0 is not in the range 0<x<=3600.0"),
        ("3601", "3601.0 is not in the range 0<x<=3600.0"),
        ("soon", "'soon' is not a number of seconds"),  # not click's "is not a valid float range"
    ],
)
def test_a_bad_start_timeout_is_a_usage_error(tmp_path, value, message):
    result = run_up(tmp_path, "--start-timeout", value)
    assert result.returncode == 2
    assert f"Invalid value for '--start-timeout': {message}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".kvwire").exists()


def test_a_killed_node_is_restarted_and_the_cluster_is_healthy_again_within_5_s(tmp_path):
    base = free_port_run(3)
    up = Up(tmp_path, "--nodes", "3", "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"), "--sync", "normal")
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        addresses = [f"127.0.0.1:{port}" for port in range(base, base + 3)]
        for address in addresses:
            wait_for(lambda: sees_nodes_up(address, 3), timeout=10, what=f"{address} seeing all three nodes UP")
        with Client(addresses) as client:
            client.put("before-the-kill", "kept")  # acknowledged by a majority
        old_pid = up.nodes()["n2"][1]

        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def healthy_again() -> bool:
            pid = up.nodes()["n2"][1]
            return (pid != old_pid and answers_ping(addresses[1])
                    and all(sees_nodes_up(address, 3) for address in addresses))

        wait_for(healthy_again, timeout=10, what="n2 restarted and every node seeing three UP")
        time_to_healthy = time.monotonic() - killed_at
        print(f"time from kill -9 to a healthy cluster: {time_to_healthy:.2f} s")
        assert time_to_healthy < 5.0
        assert up.process.poll() is None  # up, and with it the other nodes, kept running
        assert "node n2 exited unexpectedly (killed by SIGKILL); its log is above; restarting it in 0.2 s" in up.stderr
        assert "kvwire up: restarted n2 (restart 1)" in up.stdout
        wait_for(lambda: "n2 answers again" in up.stdout, timeout=5, what="up noticing n2 answers")
        with Client(addresses[1]) as restarted:
            assert restarted.get("before-the-kill") == "kept"

        up.stop_cleanly(signal.SIGTERM)
        assert "every node stopped cleanly" in up.stdout and "Traceback" not in up.stderr
    finally:
        up.cleanup()


def test_haproxy_keeps_serving_while_a_killed_node_comes_back(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: apt-get install -y haproxy (see README)")
    base, http_base = free_port_runs(3)
    lb = balancer_addresses(range(base, base + 3), range(http_base, http_base + 3))
    up = Up(tmp_path, "--haproxy", "--base-port", str(base), "--http-base-port", str(http_base),
            "--data-dir", str(tmp_path / "data"), "--sync", "off", env={**os.environ, **lb})
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        for address, _, _ in up.nodes().values():
            wait_for(lambda: sees_nodes_up(address, 3), timeout=10, what=f"{address} seeing every node UP")
        with Client([lb["KVWIRE_LB_TCP"]], timeout=3) as through_haproxy:
            through_haproxy.put("k", "v1")
            os.kill(up.nodes()["n3"][1], signal.SIGKILL)
            wait_for(lambda: "restarted n3" in up.stdout, timeout=5, what="n3 restarted")
            through_haproxy.put("k", "v2")  # haproxy, and the two other nodes, kept running
            assert through_haproxy.get("k") == "v2"
        assert up.process.poll() is None
        up.stop_cleanly(signal.SIGTERM)
        assert not (tmp_path / "data" / "haproxy.sock").exists()
        assert not re.search(r"^haproxy \| .*\[ALERT\]", up.stderr, re.MULTILINE), up.stderr
    finally:
        up.cleanup()


def ctl(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """``kvwire up ctl ARGS... --data-dir tmp_path/data``, as a user runs it from another terminal."""
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "kvwire", "up", "ctl", command, *rest, "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def status_of(tmp_path) -> dict[str, list[str]]:
    """``kvwire up ctl status`` as ``{name: [state, ...]}``."""
    result = ctl(tmp_path, "status")
    assert result.returncode == 0, result.stderr
    return {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}


@pytest.mark.parametrize("closed", [1, 2], ids=["stdout", "stderr"])
def test_up_with_a_standard_stream_closed_runs_and_restarts_a_node_that_dies(tmp_path, closed):
    """``kvwire up >&-`` fell over before any node started ('NoneType' object has no
    attribute 'flush'), and ``kvwire up 2>&-`` at its first line to stderr, when a node
    died: the whole cluster went down instead of the node being restarted (a probe)."""
    base = free_port_run(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "kvwire", "up", "--nodes", "2", "--base-port", str(base), "--no-http",
         "--data-dir", str(tmp_path / "data"), "--sync", "off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        preexec_fn=lambda: os.close(closed),
    )
    try:
        def serving() -> dict[str, list[str]] | None:
            assert process.poll() is None, f"kvwire up exited with {process.returncode}"
            if not (tmp_path / "data" / "up.sock").is_socket():
                return None
            status = status_of(tmp_path)
            return status if all(line[-2:] == ["answers", "PING"] for line in status.values()) else None

        pid = int(wait_for(serving, timeout=30, what="both nodes answering")["n2"][2])
        os.kill(pid, signal.SIGKILL)
        def restarted() -> bool:
            status = serving()
            return status is not None and status["n2"][2] != str(pid) and status["n2"][4] == "1"

        wait_for(restarted, timeout=30, what="n2 restarted and answering")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        stop_gracefully(process)


def test_one_shot_commands_refuse_a_closed_stdout_before_doing_anything(tmp_path):
    """``kvwire secret PATH >&-`` wrote the secret and exited 0, saying nothing (a probe):
    as kvwire-cli does, a command that reports on stdout and ends now refuses first."""
    secret = tmp_path / "cluster.secret"
    result = subprocess.run([sys.executable, "-m", "kvwire", "secret", str(secret)], capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(1))
    assert result.returncode == 1
    assert result.stderr == "kvwire: stdout is closed; nothing was done, as there is nowhere to say how it went\n"
    assert not secret.exists()


def test_control_commands_stop_kill_and_start_one_node(tmp_path):
    base = free_port_run(3)
    up = Up(tmp_path, "--nodes", "3", "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"), "--sync", "normal")
    n2, n3 = f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 2}"
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        assert (tmp_path / "data" / "up.sock").is_socket()
        status = status_of(tmp_path)
        assert list(status) == ["n1", "n2", "n3"]
        assert all(fields[0] == "running" and fields[-2:] == ["answers", "PING"] for fields in status.values()), status
        # Asked afresh each time: a hung node still runs, but does not answer.
        n1_pid = up.nodes()["n1"][1]
        os.kill(n1_pid, signal.SIGSTOP)
        try:
            hung = status_of(tmp_path)["n1"]
        finally:
            os.kill(n1_pid, signal.SIGCONT)
        assert hung[0] == "running" and "answers" not in hung, hung

        stopped = ctl(tmp_path, "stop", "n2")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == "n2 stopped (exit status 0); it stays down until `kvwire up ctl start n2`"
        assert re.search(r"^n2 \| .*storage flushed and closed; bye", up.stderr, re.MULTILINE), up.stderr
        killed = ctl(tmp_path, "kill", "n3")
        assert killed.returncode == 0 and killed.stdout.startswith("n3 killed with SIGKILL"), killed.stderr
        assert not answers_ping(n2) and not answers_ping(n3)
        # Down on purpose: not restarted, however long the supervisor watches (it polls every 0.1 s).
        wait_for(lambda: "n3 killed with SIGKILL" in up.stdout, timeout=5, what="up reporting the kill")
        status = status_of(tmp_path)
        assert status["n2"][:2] == ["stopped", "-"] and status["n3"][:2] == ["stopped", "-"], status
        assert "restarting" not in up.stderr and not answers_ping(n2)

        started = ctl(tmp_path, "start", "n2")
        assert started.returncode == 0 and started.stdout.strip() == f"n2 started, pid {started.stdout.split()[-1]}", started
        assert answers_ping(n2)  # ctl start returns once the node answers: a script's next command finds it serving
        assert ctl(tmp_path, "start", "n3").returncode == 0 and answers_ping(n3)
        wait_for(lambda: all(fields[0] == "running" for fields in status_of(tmp_path).values()), timeout=5, what="all running")
        new_pid = int(started.stdout.split()[-1])
        assert up.nodes()["n2"][1] == new_pid  # printed again, as at start

        # Refusals: one line, exit 1, no traceback.
        again = ctl(tmp_path, "start", "n2")
        assert again.returncode == 1 and f"n2 is already running (pid {new_pid})" in again.stderr
        unknown = ctl(tmp_path, "stop", "n9")
        assert unknown.returncode == 1 and "unknown node 'n9'; this kvwire up runs n1, n2, n3" in unknown.stderr
        for result in (again, unknown):
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr

        up.stop_cleanly()
        assert not (tmp_path / "data" / "up.sock").exists()
        gone = ctl(tmp_path, "status")
        assert gone.returncode == 1
        assert gone.stderr.strip() == f"Error: no kvwire up is running for data directory {tmp_path / 'data'} (nothing listens on {tmp_path / 'data' / 'up.sock'})"
    finally:
        up.cleanup()


def _database_of_a_first_start_cut_short(data_dir) -> None:
    """What a first start killed before its first commit leaves: the tables, no rows."""
    data_dir.mkdir()
    db = sqlite3.connect(data_dir / DATABASE_FILE_NAME)
    db.executescript(SCHEMA)
    db.close()


@pytest.mark.parametrize("lost", ["gone", "empty file", "first start cut short"])
def test_a_node_whose_disk_was_lost_is_started_with_join(tmp_path, lost):
    """n2's data directory is gone (a lost disk) while n1 and n3 hold data: `ctl start` gives
    it --join, so it catches up before it votes. With n1 down it cannot catch up from every
    peer, so n3 with it is no majority: a quorum read fails rather than miss the writes only
    n1 and n2 held. Once n1 is back, every acknowledged write reads back. A database file
    that names no node (empty, or left by a first start killed before its first commit)
    is no node's data either: started without --join it voted with nothing, and a write
    acknowledged through it lost to an older one."""
    base = free_port_run(3)
    up = Up(tmp_path, "--nodes", "3", "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"))
    n1, n2, n3 = (f"127.0.0.1:{base + i}" for i in range(3))
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        assert "--join" not in up.stdout  # a new cluster: every directory was empty
        assert ctl(tmp_path, "stop", "n3").returncode == 0
        with Client([n1, n2]) as client:
            for index in range(20):
                client.put(f"lost-{index}", index)  # on n1 and n2 only
        assert ctl(tmp_path, "kill", "n2").returncode == 0
        shutil.rmtree(tmp_path / "data" / "n2")
        if lost == "empty file":
            (tmp_path / "data" / "n2").mkdir()
            (tmp_path / "data" / "n2" / DATABASE_FILE_NAME).touch()
        elif lost == "first start cut short":
            _database_of_a_first_start_cut_short(tmp_path / "data" / "n2")
        assert ctl(tmp_path, "stop", "n1").returncode == 0
        assert ctl(tmp_path, "start", "n3").returncode == 0
        started = ctl(tmp_path, "start", "n2")
        assert started.returncode == 0 and started.stdout.startswith("n2 started with --join"), started.stdout
        wait_for(lambda: answers_ping(n2) and answers_ping(n3), timeout=15, what="n2 and n3 answering")
        with Client([n2], retry=RetryPolicy(attempts=1)) as client:
            assert client.health()["joining"] is True  # it was given --join
        with Client([n2, n3], retry=RetryPolicy(attempts=1)) as client:
            with pytest.raises((NoQuorumError, UnavailableError)):
                client.get("lost-0")  # not a stale "not found"
        assert ctl(tmp_path, "start", "n1").returncode == 0
        with Client([n1, n2, n3]) as client:
            wait_for(lambda: all_read(client, 20), timeout=20, what="every write readable once n1 is back")
    finally:
        up.cleanup()


def all_read(client, count: int) -> bool:
    try:
        return all(client.get(f"lost-{index}") == index for index in range(count))
    except (NoQuorumError, UnavailableError, KeyNotFoundError):
        return False


def test_a_sigkilled_up_takes_its_nodes_and_haproxy_with_it(tmp_path):
    """SIGKILL gives ``kvwire up`` no chance to stop anything: the kernel must
    (PR_SET_PDEATHSIG), for the nodes it started, one it started again on a
    `ctl start` (whose request ran on a thread that ended at once: the start must
    not be tied to it), and HAProxy. Before, all of them ran on, orphaned and holding their ports."""
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: apt-get install -y haproxy (see README)")
    base = free_port_run(3)
    lb = balancer_addresses(range(base, base + 3))
    up = Up(tmp_path, "--haproxy", "--nodes", "3", "--base-port", str(base), "--no-http",
            "--data-dir", str(tmp_path / "data"), "--sync", "off", env={**os.environ, **lb})
    n2 = f"127.0.0.1:{base + 1}"
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        assert ctl(tmp_path, "kill", "n2").returncode == 0
        started = ctl(tmp_path, "start", "n2")
        assert started.returncode == 0, started.stderr
        wait_for(lambda: answers_ping(n2), timeout=10, what="n2 answering again")
        status = status_of(tmp_path)
        pids = {name: int(fields[2]) for name, fields in status.items()}  # "running pid 123 ..."
        assert set(pids) == {"n1", "n2", "n3", "haproxy"} and pids["n2"] == int(started.stdout.split()[-1]), status
        assert "restart" not in up.stderr  # the ctl-started n2 was not stopped when its request ended
        up.process.kill()
        up.process.wait()
        for name, pid in pids.items():
            wait_for(lambda: process_gone(pid), timeout=20, what=f"{name} (pid {pid}) gone with kvwire up")
        # A stop, not a crash: each node was asked to stop (SIGTERM) and let go of its data directory.
        second = Up(tmp_path, "--nodes", "3", "--base-port", str(base), "--no-http",
                    "--data-dir", str(tmp_path / "data"), "--sync", "off")
        try:
            second.wait_printed("KVWIRE_ENDPOINTS=")
        finally:
            second.cleanup()
    finally:
        up.cleanup()


def test_a_ctl_start_whose_program_will_not_start_is_refused_and_up_goes_on(tmp_path):
    """The main thread starts what `ctl start` asks for (a child is tied to the thread
    that starts it). A start that fails there (no such program, no file descriptors
    left) must come back to the asker as a refusal, not end `up`'s watch loop and
    with it every node."""
    import threading

    from kvwire.cli.control import ControlError
    from kvwire.cli.up import _Watcher

    supervisor = Supervisor([ChildProcess("ghost", [str(tmp_path / "no-such-program")])], output=io.StringIO())
    watcher = _Watcher(supervisor, "127.0.0.1", {}, {}, tmp_path, None)
    outcome: dict[str, str] = {}

    def ask() -> None:
        try:
            outcome["reply"] = watcher._ctl_start("ghost")
        except ControlError as exc:
            outcome["refused"] = str(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    wait_for(lambda: not watcher._start_requests.empty(), timeout=10, what="the ctl start queued")
    watcher._start_requested()  # up's main loop: must not raise
    asker.join(timeout=10)
    assert "ghost could not be started" in outcome["refused"] and "No such file" in outcome["refused"], outcome
    assert [state.state for state in supervisor.states()] == ["exited"]


def test_a_second_up_on_the_same_data_directory_is_refused(tmp_path):
    base, other_base = free_port_runs(1)
    up = one_node_up(tmp_path, base)
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        second = run_up(tmp_path, "--nodes", "1", "--base-port", str(other_base), "--no-http",
                        "--data-dir", str(tmp_path / "data"))
        assert second.returncode == 1
        assert f"another kvwire up is running on data directory {tmp_path / 'data'}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and not answers_ping(f"127.0.0.1:{other_base}")
        assert (tmp_path / "data" / "up.sock").is_socket()  # the first one's, untouched
        up.stop_cleanly(signal.SIGTERM)
    finally:
        up.cleanup()


def test_a_node_directory_another_process_holds_is_refused_before_anything_starts(tmp_path):
    """A `kvwire serve` started by hand on DATA_DIR/n1: up restarted n1 over and over for
    30 s, then gave up saying only "n1 not answering ... Connection refused"."""
    from kvwire.server.datadir import DataDirLock

    base = free_port_run(2)
    with DataDirLock(tmp_path / "data" / "n2"):  # held as a running node holds it
        result = run_up(tmp_path, "--nodes", "2", "--base-port", str(base), "--no-http",
                        "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (f"Error: data directory {tmp_path / 'data' / 'n2'} is in use by another kvwire "
                                     f"process (pid {os.getpid()}); stop it or use another --data-dir")
    assert not answers_ping(f"127.0.0.1:{base}") and not (tmp_path / "data" / "n1").exists()


@pytest.mark.parametrize("case", ["tls is a file", "data dir under a file", "part of a certificate set"])
def test_an_unusable_data_directory_or_certificate_set_is_one_line_and_exit_1(tmp_path, case):
    data = tmp_path / "data"
    args = ["--nodes", "1", "--base-port", str(free_port_run(1)), "--no-http", "--data-dir", str(data)]
    if case == "tls is a file":
        data.mkdir()
        (data / "tls").write_text("")
        args.append("--tls")
        expected = f"Error: {data / 'tls'} is a file; --tls keeps its certificates in that directory"
    elif case == "data dir under a file":
        (tmp_path / "file").write_text("")
        data = tmp_path / "file" / "data"
        args[-1] = str(data)
        expected = f"kvwire up: cannot use data directory {data}: Not a directory"
    else:
        (data / "tls").mkdir(parents=True)
        (data / "tls" / "ca.pem").write_text("")
        args.append("--tls")
        expected = (f"Error: {data / 'tls'} holds part of a certificate set, without node.pem, node.key, "
                    f"client.pem, client.key, which --tls needs; `kvwire certs {data / 'tls'} --force` makes a new set")
    result = run_up(tmp_path, *args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == expected


def test_a_socket_left_by_a_killed_up_does_not_block_the_next(tmp_path):
    base = free_port_run(1)
    first = one_node_up(tmp_path, base)
    try:
        first.wait_printed("KVWIRE_ENDPOINTS=")
        first.process.kill()  # SIGKILL: up.sock stays behind
        first.process.wait()
    finally:
        first.cleanup()  # its node, if still stopping (it gets SIGTERM when up dies)
    assert (tmp_path / "data" / "up.sock").is_socket()
    second = one_node_up(tmp_path, base)
    try:
        second.wait_printed("KVWIRE_ENDPOINTS=")
        assert status_of(tmp_path)["n1"][0] == "running"
    finally:
        second.cleanup()


def test_ctl_refuses_options_of_up_itself(tmp_path):
    result = run_up(tmp_path, "--nodes", "2", "ctl", "status")
    assert result.returncode == 2 and "got --nodes before ctl" in result.stderr


def test_help_shows_the_control_commands(tmp_path):
    result = run_up(tmp_path, "--help")
    for line in ("kvwire up ctl status", "kvwire up ctl stop n2", "kvwire up ctl kill n2", "kvwire up ctl start n2"):
        assert line in result.stdout


def test_closing_the_terminal_stops_every_node_cleanly(tmp_path):
    """SIGHUP to up's process group (its terminal closed, an SSH session dropped) killed
    up (129) and every node by the signal's default action: each next start said it
    followed an unclean stop, and all three joined at once."""
    base, http_base = free_port_runs(3)
    up = Up(tmp_path, "--nodes", "2", "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"),
            own_group=True)
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        for address in (f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"):
            wait_for(lambda: answers_ping(address), timeout=15, what=f"{address} answering")
        os.killpg(up.process.pid, signal.SIGHUP)
        assert up.wait_exit(timeout=30) == 0, up.stderr
        assert "SIGHUP received" in up.stdout and "every node stopped cleanly" in up.stdout, up.stdout
        for node_id in ("n1", "n2"):
            assert re.search(rf"^{node_id} \| .*storage flushed and closed; bye( |$)", up.stderr, re.MULTILINE), up.stderr
    finally:
        up.cleanup()


def test_a_terminal_that_is_gone_stops_every_node_cleanly_and_exits_0(tmp_path):
    """up on a terminal that closed: its writes there fail (EIO) once SIGHUP comes. The
    stop line's write raised, and up exited 1 with a traceback (its nodes still stopped)."""
    import pty

    base, _ = free_port_runs(2)
    data = tmp_path / "data"
    master, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "kvwire", "up", "--nodes", "2", "--base-port", str(base), "--no-http",
         "--data-dir", str(data)],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, cwd=tmp_path, start_new_session=True,
    )
    os.close(terminal)
    try:
        for address in (f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"):
            wait_for(lambda: answers_ping(address), timeout=20, what=f"{address} answering")
        os.close(master)  # the terminal goes: writes to it fail from now on
        master = None
        os.killpg(process.pid, signal.SIGHUP)
        assert process.wait(timeout=30) == 0
    finally:
        if master is not None:
            os.close(master)
        stop_gracefully(process)
    # Stopped cleanly: a start on the same data does not say it follows an unclean stop.
    again = Up(tmp_path, "--nodes", "2", "--base-port", str(base), "--no-http", "--data-dir", str(data))
    try:
        again.wait_printed("KVWIRE_ENDPOINTS=")
        wait_for(lambda: answers_ping(f"127.0.0.1:{base}"), timeout=20, what="n1 answering again")
        assert "unclean stop" not in again.stderr, again.stderr
        again.stop_cleanly()
    finally:
        again.cleanup()


def test_a_child_dead_but_not_yet_reaped_shows_as_restarting():
    """Between a kill -9 and the next pass's reap, `ctl status` said "exited", which means
    held down for refusing its configuration."""
    child = ChildProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor = Supervisor([child], output=io.StringIO())
    supervisor.start()
    try:
        child.send_signal(signal.SIGKILL)
        wait_for(lambda: not child.running, timeout=10, what="the child dead")
        assert [state.state for state in supervisor.states()] == ["restarting"]
    finally:
        supervisor.stop(5)


def test_restarts_back_off_while_a_child_keeps_dying_and_start_quick_after_a_good_run():
    dies_at_once = ChildProcess("short", [sys.executable, "-c", "pass"])
    supervisor = Supervisor([dies_at_once], output=io.StringIO())
    now = 1000.0
    supervisor.start(now=now)
    delays = []
    for _ in range(8):
        dies_at_once.wait(10)
        deaths = supervisor.reap(now=now)
        assert [death.child for death in deaths] == [dies_at_once]
        delays.append(deaths[0].restart_in)
        assert supervisor.restart_due(now=now + deaths[0].restart_in - 0.01) == []  # not before its time
        now += deaths[0].restart_in
        assert supervisor.restart_due(now=now) == [dies_at_once]
    assert delays == [RESTART_BASE_S * 2 ** i for i in range(6)] + [RESTART_CAP_S] * 2
    # It ran long enough this time: the next restart is quick again.
    dies_at_once.wait(10)
    assert supervisor.reap(now=now + STABLE_RUN_S)[0].restart_in == RESTART_BASE_S
    supervisor.stop(5)


def test_a_child_refusing_its_options_is_not_restarted():
    usage_error = ChildProcess("bad", [sys.executable, "-c", "raise SystemExit(2)"])
    supervisor = Supervisor([usage_error], output=io.StringIO())
    supervisor.start()
    usage_error.wait(10)
    assert [(death.status, death.restart_in) for death in supervisor.reap()] == [(2, None)]
    assert supervisor.reap() == [] and supervisor.restart_due(now=time.monotonic() + 3600) == []


def test_a_child_refusing_its_configuration_is_not_restarted():
    refused = ChildProcess("bad", [sys.executable, "-c", "raise SystemExit(78)"])
    supervisor = Supervisor([refused], output=io.StringIO())
    supervisor.start()
    refused.wait(10)
    assert [(death.status, death.restart_in) for death in supervisor.reap()] == [(78, None)]
    assert supervisor.restart_due(now=time.monotonic() + 3600) == []


def set_cluster_id(data_dir, cluster_id: str) -> None:
    """As if the data directory had been another cluster's."""
    db = sqlite3.connect(data_dir / "kvwire.sqlite3")
    with db:
        db.execute("UPDATE meta SET value = ? WHERE name = 'cluster_id'", (cluster_id,))
    db.close()


def test_data_directories_of_another_cluster_stop_up_at_start(tmp_path):
    NodeProcess("n1", data_dir=tmp_path / "data" / "n1", extra_args=["--cluster-id", "staging"]).start().wait_ready().terminate()
    up = one_node_up(tmp_path, free_port_run(1))
    try:
        assert up.wait_exit(timeout=30) == 1
        assert ("node n1 exited unexpectedly (exit status 78); its log is above. It refused its data directory or TLS "
                "files, so it is not restarted; stopping the cluster") in up.stderr
        assert "belongs to cluster 'staging', not 'kvwire'; use --cluster-id staging" in up.stderr
        assert "restarting" not in up.stderr and "Traceback" not in up.stderr
    finally:
        up.cleanup()


def test_a_node_refusing_its_data_directory_after_the_start_stays_down_and_the_others_go_on(tmp_path):
    base = free_port_run(3)
    up = Up(tmp_path, "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"))
    try:
        up.wait_printed("every node answers")
        assert ctl(tmp_path, "stop", "n2").returncode == 0
        set_cluster_id(tmp_path / "data" / "n2", "staging")
        started = ctl(tmp_path, "start", "n2")
        assert started.returncode == 1
        assert started.stderr.strip() == "Error: n2 exited as it started (exit status 78); its log is in kvwire up's output"
        message = ("node n2 exited unexpectedly (exit status 78); its log is above. It refused its data directory or "
                   "TLS files, so it is not restarted; it stays down until `kvwire up ctl start n2`, and the others go on")
        wait_for(lambda: message in up.stderr, timeout=15, what="up reporting n2's refusal")
        assert up.process.poll() is None and status_of(tmp_path)["n2"][0] == "exited"
        with Client([f"127.0.0.1:{base}", f"127.0.0.1:{base + 2}"], timeout=5) as client:
            assert client.put("still", "serving").counter >= 1
        # Put right, it starts again on request.
        set_cluster_id(tmp_path / "data" / "n2", "kvwire")
        assert ctl(tmp_path, "start", "n2").returncode == 0
        assert answers_ping(f"127.0.0.1:{base + 1}")  # ctl start returns once it answers
        assert "restarting" not in up.stderr and "Traceback" not in up.stderr
        up.stop_cleanly()
    finally:
        up.cleanup()


def test_variables_no_two_nodes_can_share_are_kept_from_them(tmp_path):
    # Exported for one `kvwire serve` earlier: every node after the first would find the
    # port taken, and nodes all joining would wait on each other.
    base, metrics, http_port = free_port_run(3), free_port(), free_port()
    env = {**os.environ, "KVWIRE_METRICS_LISTEN": f"127.0.0.1:{metrics}", "KVWIRE_HTTP_LISTEN": f"127.0.0.1:{http_port}",
           "KVWIRE_JOIN": "1", "KVWIRE_FAILURE_TIMEOUT": "0.8"}
    up = Up(tmp_path, "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"), env=env)
    try:
        up.wait_printed("every node answers")
        for port in (metrics, http_port):
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
        for port in range(base, base + 3):
            with RawConnection(f"127.0.0.1:{port}", timeout=5) as connection:
                health = connection.request(Health(1)).health
            assert health["joining"] is False
            assert health["cluster"]["failure_timeout_ms"] == 800  # the others reach every node
        assert "restarting" not in up.stderr
        up.stop_cleanly()
    finally:
        up.cleanup()


def test_options_after_a_double_dash_reach_every_node(tmp_path):
    base = free_port_run(1)
    # `up` refuses what `kvwire serve` would (test_cli_edges), but leaves the files the
    # options name to the node: this auth file is not one, and that the node refuses it
    # shows the option got there.
    auth_file = tmp_path / "not-an-auth-file"
    auth_file.write_text("not an auth file line\n")
    up = Up(tmp_path, "--nodes", "1", "--base-port", str(base), "--no-http", "--data-dir", str(tmp_path / "data"),
            "--", "--auth-file", str(auth_file))
    try:
        assert up.wait_exit(timeout=30) == 1
        # A configuration error: said once, and not restarted forever.
        assert "node n1 exited unexpectedly (exit status 2); its log is above. It refused its options, so it is not restarted" in up.stderr
        assert "restarting" not in up.stderr and "Traceback" not in up.stderr
        assert re.search(r"^n1 \| .*not-an-auth-file line 1: expected NAME ROLE TOKEN", up.stderr, re.MULTILINE), up.stderr
    finally:
        up.cleanup()


def test_a_single_node_runs_alone(tmp_path):
    base = free_port_run(1)
    up = one_node_up(tmp_path, base)
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        with Client(f"127.0.0.1:{base}") as client:
            assert client.health()["cluster"]["replication_enabled"] is False
        assert "REST API" not in up.stdout and "--http-listen" not in up.stderr
        up.stop_cleanly()
    finally:
        up.cleanup()


def test_a_failed_tests_cleanup_leaves_no_node_of_kvwire_up_running(tmp_path):
    # What Up.cleanup runs when a test fails half-way: kvwire up must take its
    # nodes with it. A bare SIGKILL of kvwire up left them running, orphaned.
    up = one_node_up(tmp_path, free_port_run(1))
    try:
        up.wait_printed("KVWIRE_ENDPOINTS=")
        [(_, node_pid, _)] = up.nodes().values()
        stop_gracefully(up.process)
        assert up.process.returncode == 0, up.stderr
        wait_for(lambda: process_gone(node_pid), timeout=10, what="the node gone with kvwire up")
    finally:
        up.cleanup()


def test_too_many_nodes_for_the_port_range_is_a_usage_error(tmp_path):
    result = run_up(tmp_path, "--nodes", "3", "--base-port", "65535")
    assert result.returncode == 2
    assert "no room for 3 nodes" in result.stderr
    assert not (tmp_path / ".kvwire").exists()


@pytest.mark.parametrize("line, error", [
    # A name that is no string was looked up as one: a TypeError, no reply, a traceback on up's stderr.
    (b'{"command": "stop", "node": ["n1"]}', 'not a request: stop needs "node", a node\'s name'),
    (b'{"command": "kill", "node": {"a": 1}}', 'not a request: kill needs "node", a node\'s name'),
    (b'{"command": "start"}', 'not a request: start needs "node", a node\'s name'),
    # A RecursionError (no reply) where the recursion limit is the default; a parse error
    # where it is higher (pytest-xdist's workers): a refusal either way.
    (b"[" * 4000 + b"\n", "bad request: "),
    (b"{nope\n", "bad request: Expecting property name"),
])
def test_a_malformed_control_request_gets_a_refusal_and_the_server_goes_on(tmp_path, line, error):
    import socket

    from kvwire.cli.control import ControlServer, send, socket_path

    handled = []
    server = ControlServer(tmp_path, lambda request: handled.append(request) or {"ok": True, "children": []})
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(socket_path(tmp_path)))
            sock.sendall(line if line.endswith(b"\n") else line + b"\n")
            reply = json.loads(sock.makefile("rb").readline())
        assert reply["ok"] is False and reply["error"].startswith(error), reply
        assert handled == []  # refused before it reached up
        assert send(tmp_path, {"command": "status"}) == {"ok": True, "children": []}
    finally:
        server.close()


@pytest.mark.parametrize("ending", ["reset", "closed"])
def test_a_ctl_request_that_up_drops_unanswered_says_it_may_not_have_been_done(tmp_path, ending):
    """What `kvwire up` stopping just as a request comes in looks like to ctl: a reset or a close, no reply."""
    import socket
    import struct
    import threading

    from kvwire.cli.control import ControlError, send, socket_path

    tmp_path.mkdir(exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(socket_path(tmp_path)))
        server.listen()

        def drop_one() -> None:
            peer, _ = server.accept()
            peer.recv(1024)
            if ending == "reset":  # SO_LINGER 0: the close sends a reset
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()

        thread = threading.Thread(target=drop_one)
        thread.start()
        with pytest.raises(ControlError, match="closed the connection without a reply .it is stopping, or stopped.: "
                                               "the request may not have been carried out"):
            send(tmp_path, {"op": "status"})
        thread.join(timeout=10)


def test_a_ctl_request_a_hung_up_does_not_answer_says_it_may_yet_be_done(tmp_path, monkeypatch):
    """A `kvwire up` stopped (SIGSTOP) reads the request when it runs again, and does it:
    a probe's `ctl kill n3` timed out, and n3 was killed later. "timed out" alone said
    nothing of that."""
    import socket

    from kvwire.cli import control
    from kvwire.cli.control import ControlError, send, socket_path

    monkeypatch.setattr(control, "REPLY_TIMEOUT_S", 0.5)
    tmp_path.mkdir(exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(socket_path(tmp_path)))
        server.listen()  # accepted by the kernel, never read: a hung `up`
        with pytest.raises(ControlError, match=r"did not answer within 0.5 s \(it is hung or stopped\): the request "
                                               "may yet be carried out; `kvwire up ctl status` says what runs"):
            send(tmp_path, {"command": "status"})


def test_a_ctl_request_interrupted_while_waiting_exits_130_and_says_it_may_have_been_done(tmp_path):
    """Ctrl-C while ctl waits for `up`'s answer printed click's "Aborted!" and exited 1, a
    refusal's status, though `up` may have carried the request out (a probe saw both)."""
    import signal
    import socket

    from kvwire.cli.control import socket_path

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(socket_path(tmp_path)))
        server.listen()
        ctl = subprocess.Popen([sys.executable, "-m", "kvwire", "up", "ctl", "status", "--data-dir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            server.settimeout(30)
            connection, _ = server.accept()
            with connection:
                connection.settimeout(30)
                assert connection.recv(1024)  # the request is sent: ctl now waits for the answer
                ctl.send_signal(signal.SIGINT)
                _, stderr = ctl.communicate(timeout=30)
        finally:
            ctl.kill()
    assert ctl.returncode == 130, stderr
    assert stderr == ("interrupted: the request may or may not have been carried out; `kvwire up ctl status` says "
                      "what runs\n"), stderr


def test_up_takes_an_ipv6_host_in_brackets_as_it_is_written_in_an_address(tmp_path):
    """``--host [::1]`` as ``--host ::1``: it was bracketed again ("cannot listen on [[::1]]:PORT")."""
    up = Up(tmp_path, "--host", "[::1]", "--nodes", "1", "--no-http", "--base-port", str(free_port()),
            "--data-dir", str(tmp_path / "data"), "--sync", "off")
    try:
        up.wait_printed("every node answers", timeout=30)
        up.stop_cleanly()
    finally:
        up.cleanup()


def test_with_an_auth_file_the_commands_to_try_name_a_token(tmp_path):
    """The try-it lines said `kvwire-cli put greeting hello`, which nodes with an auth file
    refuse (exit 4) for want of a token (found by a security probe)."""
    from kvwire.testing import write_auth_file

    token = "admin-token-0123456789abcdef"
    auth_file = write_auth_file(tmp_path / "auth", f"ops admin {token}\n")
    base, bridges = free_port_run(3), free_port_run(3)
    up = Up(tmp_path, "--base-port", str(base), "--http-base-port", str(bridges), "--data-dir", str(tmp_path / "data"),
            "--sync", "off", "--", "--auth-file", auth_file)
    try:
        up.wait_printed("every node answers")
        assert "export KVWIRE_TOKEN=..." in up.stdout
        assert '-H "Authorization: Bearer $KVWIRE_TOKEN"' in up.stdout
        env = {**{name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")},
               "KVWIRE_ENDPOINTS": f"127.0.0.1:{base}", "KVWIRE_TOKEN": token}
        put = subprocess.run([sys.executable, "-m", "kvwire.cli.client", "put", "greeting", "hello"], env=env,
                             capture_output=True, text=True, timeout=30)
        assert put.returncode == 0, put.stderr  # the printed settings, a token given, are what it takes
        up.stop_cleanly()
    finally:
        up.cleanup()
