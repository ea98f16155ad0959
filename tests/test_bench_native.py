"""``kvwire bench --generator native``: the compiled generator (bench/c/kvload.c),
built with the machine's C compiler and run against real node processes."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from kvwire import Client, KeyNotFoundError
from kvwire.protocol import PutReply, Version
from kvwire.testing import LocalCluster, NodeProcess, ScriptedNode, wait_for, write_auth_file

TOKEN = "bench-token-0123456789abcdef"


def bench(*args, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "kvwire", "bench", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env=None if env is None else {**os.environ, **env},
    )


def run_json(*args, **kwargs):
    result = bench(*args, "-o", "json", **kwargs)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def test_gets_from_the_compiled_generator_report_as_the_python_one_does(node):
    report = run_json("--endpoints", node.address, "--mix", "get", "--generator", "native", "--connections", "8",
                      "--duration", "1.5", "--warmup", "0.5", "--keys", "500", "--server-pid", str(node.pid))
    assert report["generator"] == "native" and report["workload"] == "get" and report["mode"] == "closed loop"
    assert report["ops"] > 0 and report["ops_per_s"] == pytest.approx(report["ops"] / 1.5, rel=0.2)
    assert report["errors"] == 0 and report["connections_lost"] == 0 and report["unanswered"] == 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"] <= latency["max"] < 5000
    assert 0 < report["server_cpu_us_per_op"] < 10_000
    assert 0 < report["client_cpu_cores"] <= 2 and report["preload_s"] is not None


def test_an_endpoint_may_name_its_host(node):
    """Python splits HOST:PORT (brackets off an IPv6 address); kvload resolves the
    host and tries each address it gets, as Python's clients do."""
    port = node.address.rsplit(":", 1)[1]
    report = run_json("--endpoints", f"localhost:{port}", "--mix", "get", "--generator", "native",
                      "--connections", "2", "--duration", "0.5", "--warmup", "0", "--keys", "10")
    assert report["ops"] > 0 and report["errors"] == 0


def test_quorum_puts_and_gets_over_three_nodes_as_the_suite_runs_them(tmp_path):
    """Scenario 2's compiled rows: connections spread over three nodes, quorum
    consistency, every node's CPU counted. The PUTs are real writes: the first
    and the last key end up, at the generator's value size, on every node."""

    def held(client, key):
        try:
            return client.get(key, consistency="one")
        except KeyNotFoundError:
            return None  # the third node may apply a write a moment after the majority
    with LocalCluster(3, data_dir=tmp_path) as cluster:
        cluster.wait_ready()
        pids = [node.pid for node in cluster]
        common = ["--endpoints", ",".join(cluster.endpoints), "--generator", "native", "--connections", "6",
                  "--duration", "1", "--warmup", "0.2", "--keys", "40", "--value-size", "33",
                  "--server-pid", ",".join(map(str, pids))]
        puts = run_json(*common, "--mix", "put")
        gets = run_json(*common, "--mix", "get", "--consistency", "quorum")
        for report in (puts, gets):
            assert report["ops"] > 0 and report["errors"] == 0 and report["unanswered"] == 0
            assert report["endpoints"] == cluster.endpoints and 0 < report["server_cpu_us_per_op"] < 100_000
        for node in cluster:
            with Client([node.address], timeout=5.0) as client:
                for index in (0, 39):
                    value = wait_for(lambda: held(client, f"key:{index:08d}"), timeout=10,
                                     what=f"key {index} on {node.node_id}")
                    assert isinstance(value, bytes) and len(value) == 33


def test_error_replies_are_errors_by_code_not_operations_as_in_the_python_generator(tmp_path):
    """Values over the node's --max-value-bytes: every PUT is answered TOO_LARGE. An error
    is no operation: no throughput and no latency, as the Python generator reports it."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--max-value-bytes", "64", "--sync", "off"]) as node:
        common = ["--endpoints", node.address, "--mix", "put", "--value-size", "100", "--connections", "2",
                  "--duration", "1", "--warmup", "0", "--keys", "10"]
        native = run_json(*common, "--generator", "native")
        python = run_json(*common, "--generator", "python")
    for report in (native, python):
        assert report["ops"] == 0 and report["ops_per_s"] == 0, report
        assert report["errors"] > 0 and report["error_codes"] == {"TOO_LARGE": report["errors"]}, report
        assert report["latency_ms"]["p50"] is None and report["measured_s"] == pytest.approx(1, abs=0.3)


def test_cpu_is_sampled_over_the_window_not_the_drain_after_it():
    """The node answers three PUTs at once, then each after 1.8 s: the one in flight when
    the 1 s window closes keeps kvload draining for 0.8 s more. The --server-pid is a
    process spinning on one core, so over the window it is at most one core busy; sampled
    until the drain's end but divided by the window, it showed nearly two."""
    answered = []

    async def three_then_slow(request):
        answered.append(request)
        if len(answered) > 3:
            await asyncio.sleep(1.8)
        return PutReply(request.id, Version(1, "scripted"))

    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.monotonic() + 30\n"
                                "while time.monotonic() < end: pass"])
    try:
        with ScriptedNode(three_then_slow, answers_hello=False) as node:
            report = run_json("--endpoints", node.address, "--mix", "put", "--generator", "native",
                              "--connections", "1", "--duration", "1", "--warmup", "0", "--keys", "10",
                              "--server-pid", str(spinner.pid))
    finally:
        spinner.kill()
        spinner.wait()
    assert report["ops"] == 3 and report["unanswered"] == 0, report
    assert 0 < report["server_cpu_cores"] <= 1.05, report


def test_a_frame_over_the_nodes_limit_is_one_error_by_its_code_as_in_the_compiled_generator(tmp_path):
    """PUTs over the node's --max-frame-bytes: the node answers an ERROR TOO_LARGE without
    an id and closes the connection. Each such request is one error, TOO_LARGE, in both
    generators; the Python one counted it twice, as an unexpected reply and as lost."""
    with NodeProcess("n1", data_dir=tmp_path / "n1",
                     extra_args=["--max-value-bytes", "64", "--max-frame-bytes", "4096", "--sync", "off"]) as node:
        common = ["--endpoints", node.address, "--mix", "put", "--value-size", "10000", "--connections", "2",
                  "--duration", "1", "--warmup", "0", "--keys", "10"]
        reports = {generator: run_json(*common, "--generator", generator) for generator in ("native", "python")}
    for generator, report in reports.items():
        assert report["ops"] == 0 and report["errors"] > 0, (generator, report)
        assert report["error_codes"] == {"TOO_LARGE": report["errors"]}, (generator, report)


def test_a_node_restarted_mid_run_is_dialled_again_as_the_python_generator_does(tmp_path):
    """kill -9 of the node mid-run: the requests in flight are errors ("connection lost"), the
    connections are dialled again every 50 ms (refusals counted) and the load goes on against
    the restarted node, until --duration. The node restarts empty, so every key it holds at
    the end was written after the restart."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as node:
        runner = subprocess.Popen(
            [sys.executable, "-m", "kvwire", "bench", "--endpoints", node.address, "--mix", "put", "--generator",
             "native", "--connections", "2", "--duration", "4", "--warmup", "0", "--keys", "10", "-o", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            with Client([node.address], timeout=5.0) as client:
                wait_for(lambda: client.health()["keys"] == 10, timeout=10, what="the load writing every key")
            node.kill()
            shutil.rmtree(node.data_dir)
            node.start().wait_ready()
            stdout, stderr = runner.communicate(timeout=30)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.communicate()
        assert runner.returncode == 0, stderr
        report = json.loads(stdout)
        with Client([node.address], timeout=5.0) as client:
            assert client.health()["keys"] > 0  # written by the connections dialled again
    assert report["connections_lost"] >= 2 and report["measured_s"] == pytest.approx(4, abs=0.5)
    assert report["ops"] > 0 and report["errors"] == report["error_codes"].get("connection lost", 0)
    assert report["unanswered"] == 0


def test_a_token_is_sent_and_never_reported(tmp_path):
    auth_file = write_auth_file(tmp_path, f"bench  admin  {TOKEN}\n")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("not-the-token-the-node-knows")
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--auth-file", auth_file]) as node:
        common = ["--endpoints", node.address, "--mix", "put", "--connections", "2", "--duration", "1",
                  "--warmup", "0", "--keys", "10"]
        for generator in ("native", "python"):
            result = bench(*common, "--generator", generator, "--token-file", str(token_file), "-o", "json")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["errors"] == 0 and report["ops"] > 0
            assert "token" not in report and TOKEN not in result.stdout
        refused = bench(*common, "--generator", "native", "--token-file", str(wrong_file))
    assert refused.returncode == 1
    assert "the node refused HELLO" in refused.stderr and "Traceback" not in refused.stderr


def test_a_node_at_its_connection_limit_is_reported_in_its_own_words(tmp_path):
    """A node refusing the second connection (--max-connections 1) answers it ERROR
    UNAVAILABLE "too many connections": both generators say so, not that the token may be
    wrong, and the Python one gives no TLS hint, as a kvwire answer came in plain text."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--max-connections", "1", "--sync", "off"]) as node:
        common = ["--endpoints", node.address, "--mix", "put", "--connections", "2", "--duration", "1",
                  "--warmup", "0", "--keys", "10"]
        results = {generator: bench(*common, "--generator", generator) for generator in ("native", "python")}
    for generator, result in results.items():
        assert result.returncode == 1, (generator, result.stderr)
        assert "refused HELLO: " in result.stderr and "too many connections" in result.stderr, (generator, result.stderr)
        assert "wrong token" not in result.stderr and "--tls" not in result.stderr, (generator, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_refused_endpoint_exits_1_without_a_traceback():
    result = bench("--endpoints", "127.0.0.1:1", "--mix", "put", "--generator", "native", "--duration", "1")
    assert result.returncode == 1
    assert "cannot connect to 127.0.0.1:1: Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_endpoint_that_never_completes_a_connect_is_given_up_after_5_s():
    """A listener whose backlog is full (it never accepts): the kernel leaves the connect
    unanswered for over 2 minutes. kvload gives up after 5 s, as the Python generator does."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers = []
    try:
        for _ in range(3):  # fill the backlog: these stay queued, unaccepted
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        endpoint = "127.0.0.1:%d" % listener.getsockname()[1]
        started = time.monotonic()
        result = bench("--endpoints", endpoint, "--mix", "put", "--generator", "native", "--connections", "2",
                       "--duration", "1", "--warmup", "0", timeout=30)
        took = time.monotonic() - started
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert result.returncode == 1, result.stderr
    assert f"cannot connect to {endpoint}: no connection within 5 s" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and took < 15


def test_no_c_compiler_says_how_to_get_one(node, tmp_path):
    result = bench("--endpoints", node.address, "--mix", "get", "--generator", "native", "--duration", "1",
                   env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "CC": str(tmp_path / "no-such-cc")})
    assert result.returncode == 1
    assert "--generator native needs a C compiler: apt-get install gcc" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, named", [
    (["--mix", "get=90,put=10"], "a --mix of more than one op"),
    (["--mix", "delete"], "--mix delete"),
    (["--pipeline", "4"], "--pipeline above 1"),
    (["--rate", "100"], "--rate"),
    (["--distribution", "zipfian"], "--distribution zipfian"),
    (["--tls"], "TLS"),
    (["--generator", "rust"], "'rust' is not one of 'python', 'native'"),
])
def test_what_the_compiled_generator_does_not_do_exits_2(args, named):
    result = bench("--generator", "native", *args, timeout=15)
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr
