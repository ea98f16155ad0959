"""``kvwire bench`` as a user runs it: short real runs against a real node, and bad options."""

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from kvwire import Client
from kvwire.protocol import ErrorReply, PutReply, Version
from kvwire.testing import NodeProcess, ScriptedNode, free_port, wait_for


def bench(*args, timeout=40):
    return subprocess.run(
        [sys.executable, "-m", "kvwire", "bench", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def run_json(*args):
    result = bench(*args, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def assert_sane_latency(latency):
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"] <= latency["max"] < 5000


def test_smoke_two_seconds_against_one_node(node):
    report = run_json(
        "--endpoints", node.address, "--mix", "get", "--connections", "8", "--duration", "2", "--warmup", "0.5",
        "--keys", "500", "--server-pid", str(node.pid),
    )
    assert report["workload"] == "get" and report["mode"] == "closed loop"
    assert report["endpoints"] == [node.address]
    assert report["ops"] > 0 and report["ops_per_s"] > 0
    assert report["ops_per_s"] == pytest.approx(report["ops"] / 2, rel=0.2)
    assert report["errors"] == 0 and report["error_codes"] == {} and report["not_found"] == 0
    assert report["unanswered"] == 0 and report["connections_lost"] == 0
    assert report["off_fast_path"] == 0  # every reply was matched the fast way: the layout is still known
    assert_sane_latency(report["latency_ms"])
    assert list(report["latency_ms_by_op"]) == ["get"]
    assert 0 < report["server_cpu_us_per_op"] < 10_000
    assert report["preload_s"] is not None


def test_a_mix_with_deletes_counts_not_found_as_answers_and_reports_each_op(node):
    report = run_json(
        "--endpoints", node.address, "--mix", "get=60,put=20,delete=20", "--distribution", "zipfian",
        "--connections", "4", "--pipeline", "4", "--duration", "1.5", "--warmup", "0", "--keys", "200",
    )
    assert report["workload"] == "get60/put20/delete20"
    assert report["errors"] == 0, report["error_codes"]
    assert report["not_found"] > 0  # deleted keys read or deleted again
    assert set(report["latency_ms_by_op"]) == {"get", "put", "delete"}
    for latency in report["latency_ms_by_op"].values():
        assert_sane_latency(latency)


def test_open_loop_sends_at_the_rate_asked_and_keeps_the_result_file(tmp_path):
    # The pacing is under test, not the disk: without fsync a shared disk's stall
    # cannot hold the one request in flight per lane past the window's end.
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as node:
        report = run_json(
            "--endpoints", node.address, "--mix", "put", "--rate", "400", "--connections", "4", "--duration", "2",
            "--warmup", "0.5", "--out", str(tmp_path / "results"),
        )
    assert report["mode"] == "open loop" and report["rate"] == 400
    assert report["ops"] == pytest.approx(800, rel=0.1)
    assert report["errors"] == 0 and report["off_fast_path"] == 0
    # A lane sends its next request once the one in flight is answered (--pipeline 1),
    # so a node that stalls near the end of the window leaves a few requests due and
    # unsent (CI saw 8 after a 0.12 s fsync stall, before this node ran without fsync);
    # falling behind the rate would leave a good share of the window's 800.
    # test_bench_recorder checks the count.
    assert report["late_unsent"] < 80
    assert_sane_latency(report["latency_ms"])
    [saved] = (tmp_path / "results").glob("*.json")
    assert json.loads(saved.read_text())["ops"] == report["ops"]


def test_an_open_loop_slower_than_one_request_a_lane_a_run_still_sends_its_share(node):
    # 4 connections at 1 request/s: each lane sends every 4 s. Each lane's first send at a
    # random point of its 4 s sent none in a 2 s window, and the run exited 1, "no reply
    # came back" (a tools probe's finding); spread evenly, lanes 0 and 1 send in it.
    report = run_json("--endpoints", node.address, "--rate", "1", "--connections", "4", "--duration", "2",
                      "--warmup", "0.1", "--keys", "100")  # the probe's run, which sent none
    assert report["mode"] == "open loop" and report["errors"] == 0
    assert 1 <= report["ops"] <= 3, report["ops"]


def test_open_loop_reconnects_after_the_node_restarts_and_counts_the_outage(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1") as node:
        run = subprocess.Popen(
            [sys.executable, "-m", "kvwire", "bench", "--endpoints", node.address, "--mix", "put", "--rate", "300",
             "--connections", "2", "--duration", "4", "--warmup", "0", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        try:
            with Client([node.address], timeout=2) as client:
                wait_for(lambda: client.health()["committed_rows"] >= 100, timeout=10, what="100 PUTs committed")
            node.kill()
            node.start()
            out, err = run.communicate(timeout=30)
        finally:
            run.kill()
    assert run.returncode == 0, err
    report = json.loads(out)
    assert report["connections_lost"] >= 1
    # Only the requests in flight when it died failed (2 connections, 1 each);
    # refused reconnects are counted apart, not as failed requests.
    assert report["errors"] <= 2 and set(report["error_codes"]) <= {"connection lost"}
    # The requests due while the node was away count from when they were due.
    assert report["latency_ms"]["max"] > 50
    assert report["ops"] > 0.5 * 300 * 4


def test_requests_caps_the_run_and_every_reply_sent_is_counted(node):
    report = run_json(
        "--endpoints", node.address, "--mix", "put", "--connections", "6", "--workers", "3", "--pipeline", "16",
        "--requests", "1000", "--duration", "30", "--warmup", "0",
    )
    assert report["budget_exhausted"] and report["ops"] == 1000
    assert report["unanswered"] == 0 and report["errors"] == 0
    assert report["ops_per_s"] < 1000 / 0.01  # the window closed with the last reply, not at once


def test_more_keys_than_one_sequence_holds_are_all_reachable(node):
    report = run_json(
        "--endpoints", node.address, "--mix", "put", "--keys", "200000", "--connections", "8", "--pipeline", "16",
        "--requests", "100000", "--duration", "60", "--warmup", "0",
    )
    assert report["ops"] == 100_000
    with Client([node.address], timeout=5) as client:
        # 100,000 uniform draws from 200,000 keys hit about 78,700 of them
        # (200,000 x (1 - e^-0.5), give or take a few hundred); a generator
        # cycling 65,536 draws could not pass 65,536.
        assert client.health()["keys"] > 72_000


def test_an_open_loop_that_falls_behind_says_so(node):
    result = bench("--endpoints", node.address, "--mix", "get", "--keys", "100", "--rate", "5000000",
                   "--connections", "2", "--duration", "1", "--warmup", "0")
    assert result.returncode == 0, result.stderr
    assert "the open loop fell behind" in result.stdout


@pytest.mark.parametrize("mix", ["get", "put"])  # a GET run preloads first; a PUT run's workers connect
def test_a_node_that_refuses_connections_is_one_line_naming_it(mix):
    dead = f"127.0.0.1:{free_port()}"
    result = bench("--endpoints", dead, "--mix", mix, "--duration", "1", "--warmup", "0", timeout=60)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"{dead}: Connection refused" in result.stderr, result.stderr


def test_a_listener_that_closes_each_connection_is_one_line_naming_it():
    """A real listener that takes the preload's 16 connections and closes them all at
    once (a node refusing clients, or not kvwire): a clean close, with no error to
    name, and one line however many connections failed together."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def close_together() -> None:
        listener.settimeout(0.1)
        held: list[socket.socket] = []
        first_at = None
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
                held.append(connection)
                first_at = first_at or time.monotonic()
            except TimeoutError:
                pass
            if held and (len(held) >= 16 or time.monotonic() - first_at > 2):
                for connection in held:
                    connection.close()
                held.clear()

    closer = threading.Thread(target=close_together, daemon=True)
    closer.start()
    try:
        endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
        result = bench("--endpoints", endpoint, "--mix", "get", "--duration", "1", "--warmup", "0", timeout=60)
    finally:
        stop.set()
        closer.join()
        listener.close()
    assert result.returncode == 1, result.stderr
    # One line: closed with the HELLO unread, the kernel may reset instead, which is named.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "(None)" not in lines[0], result.stderr
    assert lines[0].startswith(f"python -m kvwire bench load: ConnectionError: {endpoint}: node closed the "
                               "connection before answering HELLO"), result.stderr


@pytest.mark.parametrize("greeting, says", [
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "this looks like an HTTP server, not a kvwire node"),
    (b"SSH-2.0-OpenSSH_9.2p1\r\n", "this looks like an SSH server, not a kvwire node"),
])
def test_a_load_pointed_at_another_kind_of_server_says_so_in_one_line(greeting, says):
    """Pointed at a bridge's HTTP port: every connection printed 'closing a connection:
    reply frame of 1213486160 bytes', 16 lines, and the last blamed TLS (a CLI probe's
    finding). One line now, naming the server as the client library does."""
    with ScriptedNode(lambda request: None, greeting=greeting) as other:
        result = bench("--endpoints", other.address, "--mix", "get", "--duration", "0.3", "--warmup", "0", timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"python -m kvwire bench load: ConnectionError: {other.address}: {says}"), lines
    assert "--tls" not in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mix", "scan"], "--mix wants OP=WEIGHT"),
        (["--mix", "get=90,put=x"], "weight for put must be a whole number"),
        (["--mix", "get=0"], "--mix weights add up to 0"),
        (["--keys", "1"], "--keys must be at least 2 x --pipeline"),
        (["--endpoint", "localhost"], "is not HOST:PORT"),
        (["--server-pid", "abc"], "is not a comma-separated list of process ids"),
        (["--rate", "0"], "--rate must be in (0, 10000000]"),
        (["--distribution", "pareto"], "'pareto' is not one of 'uniform', 'zipfian'"),
        (["--consistency", "all"], "'all' is not one of 'quorum', 'one'"),
        (["-o", "xml"], "'xml' is not one of 'table', 'json'"),
        (["--out", "/proc/nope"], "--out /proc/nope: cannot write there"),
        (["--keys", "2000000"], "at most 1000000"),
        (["--workers", "0"], "--workers must be 1-64, got 0"),
        (["--workers", "4", "--connections", "2"], "--connections must be from --workers (4) to 10000, got 2"),
        (["--warmup", "-1"], "--warmup must be in [0, 600] seconds, got -1"),
        (["--requests", "0"], "--requests must be at least --workers (1), got 0"),
        (["--connections", "many"], "'many' is not a valid integer"),
        (["--token-file", "/nonexistent.token"], "--token-file: cannot read /nonexistent.token: No such file"),
        (["--token-file", "/dev/zero"], "--token-file: /dev/zero is larger than"),
        (["--no-such-option"], "No such option '--no-such-option'"),
        (["sweet"], "No such command 'sweet'"),
        # The suite's own options, checked before anything starts.
        (["suite", "--scenarios", "a"], "--scenarios must be numbers from 1 to 6"),
        (["suite", "--scenarios", "9"], "--scenarios must name some of 1, 2, 3, 4, 5, 6"),
        (["suite", "--failover-rate", "0"], "--failover-rate must be in (0, 50000]"),
        (["suite", "--out", "/etc/passwd"], "--out /etc/passwd/"),
        (["suite", "--duration", "0.5"], "--duration must be 1-120 s, got 0.5"),
        (["suite", "--warmup", "31"], "--warmup must be 0-30 s, got 31"),
        (["failover", "--via", "client", "--kill-at", "16"], "need 0 < --kill-at < --restart-at < --duration"),
        (["failover", "--rate", "0"], "--rate must be in (0, 50000], got 0"),
        (["failover", "--sync", "sometimes"], "--sync must be off, normal or full, got 'sometimes'"),
        # nan passes every comparison; each float option refuses it before anything starts.
        (["--duration", "nan"], "--duration must be in [0.1, 3600] seconds, got nan"),
        (["--duration", "0.001"], "--duration must be in [0.1, 3600] seconds, got 0.001"),
        (["--warmup", "nan"], "--warmup must be in [0, 600] seconds, got nan"),
        (["--rate", "nan"], "--rate must be in (0, 10000000] requests/s, got nan"),
        (["refill", "--duration", "nan"], "Invalid value for '--duration': 'nan' is not a finite number"),
        (["scale", "--duration", "nan"], "Invalid value for '--duration': 'nan' is not a finite number"),
        (["scale", "--warmup", "nan"], "Invalid value for '--warmup': 'nan' is not a finite number"),
        (["security-cost", "--duration", "nan"], "Invalid value for '--duration': 'nan' is not a finite number"),
        (["security-cost", "--warmup", "nan"], "Invalid value for '--warmup': 'nan' is not a finite number"),
        (["suite", "--duration", "nan"], "--duration must be 1-120 s, got nan"),
        (["suite", "--failover-rate", "nan"], "--failover-rate must be in (0, 50000], got nan"),
        (["failover", "--kill-at", "nan"], "need 0 < --kill-at < --restart-at < --duration, got --kill-at nan"),
        (["failover", "--interval", "inf"], "--interval must be in (0, 20], got inf"),
        # An empty path would mean the current directory.
        (["--out", ""], "Invalid value for '--out': an empty path names no directory"),
        (["suite", "--out", ""], "Invalid value for '--out': an empty path names no directory"),
        (["failover", "--out", ""], "Invalid value for '--out': an empty path names no directory"),
        (["failover", "--workdir", ""], "Invalid value for '--workdir': an empty path names no directory"),
        (["failover", "--haproxy-config", "/nonexistent.cfg"], "--haproxy-config /nonexistent.cfg: no such file"),
        (["detection", "--rounds", "0"], "0 is not in the range 1<=x<=100"),
    ],
)
def test_bad_options_exit_2_with_a_message_and_no_traceback(args, message):
    result = bench(*args, timeout=15)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_refused_suite_workdir_leaves_no_results_directory(tmp_path):
    out = tmp_path / "out"
    result = bench("suite", "--out", str(out), "--workdir", "/etc/passwd", timeout=15)
    assert result.returncode == 2 and "--workdir /etc/passwd: cannot write there" in result.stderr
    assert not out.exists()
    # And the mirror case: a refused --out leaves no --workdir this run made.
    workdir = tmp_path / "work"
    result = bench("suite", "--out", "/etc/passwd", "--workdir", str(workdir), timeout=15)
    assert result.returncode == 2 and "--out /etc/passwd/" in result.stderr
    assert not workdir.exists()


@pytest.fixture
def quiet_node(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "off"]) as started:
        yield started


def test_requests_that_end_the_run_early_report_the_time_measured(quiet_node):
    """10 requests end a run asked for 5 s within milliseconds: the header says what was
    measured, and CPU figures that /proc's 10 ms ticks cannot give over so short a window
    are left out, not shown as more cores than the machine has."""
    args = ["--endpoints", quiet_node.address, "--connections", "2", "--duration", "5", "--warmup", "0", "--keys", "10",
            "--requests", "10", "--server-pid", str(quiet_node.pid)]
    report = run_json(*args)
    assert report["budget_exhausted"] and report["ops"] == 10 and 0 < report["measured_s"] < 1
    for cores in (report["machine_cpu_cores"], report["server_cpu_cores"]):
        assert cores is None or cores <= report["cpu_count"], report
    table = bench(*args)
    assert table.returncode == 0, table.stderr
    assert f"{report['duration']:g} s after" not in table.stdout and "s measured (of --duration 5) after 0 s warm-up" in table.stdout
    assert "None" not in table.stdout and "CPU          this generator" in table.stdout


async def _put_answered_after_50_ms(request):
    await asyncio.sleep(0.05)
    return PutReply(request.id, Version(1, "scripted"))


def test_requests_over_workers_that_end_apart_are_rated_over_the_time_measured(quiet_node):
    """Two workers, 20 requests each: worker 0 loads a real node and is done within
    milliseconds, worker 1 a node answering each PUT after 50 ms, done after about 1 s.
    The rate is all the ops over that second (not the sum of each worker's own rate),
    and the node's and the machine's CPU are sampled over that second too, so they are
    reported (over worker 0's milliseconds alone they were too short a sample)."""
    with ScriptedNode(_put_answered_after_50_ms, answers_hello=False) as slow:
        report = run_json("--endpoints", f"{quiet_node.address},{slow.address}", "--mix", "put", "--workers", "2",
                          "--connections", "2", "--requests", "40", "--duration", "8", "--warmup", "0",
                          "--keys", "10", "--server-pid", str(quiet_node.pid))
    assert report["ops"] == 40 and report["budget_exhausted"] and report["measured_s"] >= 0.9, report
    assert report["ops_per_s"] == pytest.approx(report["ops"] / report["measured_s"], abs=1), report  # rounded
    assert report["server_cpu_us_per_op"] is not None and report["machine_cpu_cores"] is not None, report


def test_requests_spent_in_the_warm_up_leave_nothing_measured_and_say_so(quiet_node):
    result = bench("--endpoints", quiet_node.address, "--connections", "2", "--duration", "5", "--warmup", "1",
                   "--rate", "100", "--requests", "10", "--keys", "10")
    assert result.returncode == 0, result.stderr
    assert "None" not in result.stdout, result.stdout
    assert "CPU          not measured: the run ended before its measured window began" in result.stdout
    assert "--requests reached in the warm-up" in result.stdout and "0 s measured (of --duration 5)" in result.stdout


@pytest.mark.parametrize("output", ["table", "json"])
def test_a_run_that_got_no_reply_in_its_measured_time_says_so_and_exits_1(quiet_node, tmp_path, output):
    """The node hangs (SIGSTOP) once the connections are open, before the measured window: no
    reply comes back in it. A row of 0 ops/s and empty percentiles would read as a measurement;
    instead one line on stderr, nothing on stdout (in JSON either), no --out file, exit 1."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kvwire", "bench", "--endpoints", quiet_node.address, "--mix", "put", "--connections",
         "2", "--warmup", "2", "--duration", "0.3", "--keys", "10", "--progress", "-o", output,
         "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        # The progress bar is drawn once every worker's connections have said HELLO.
        wait_for(lambda: process.stderr.read(1) == "[", timeout=30, what="the load under way")
        quiet_node.pause()
        stdout, stderr = process.communicate(timeout=40)
    finally:
        quiet_node.resume()
        process.kill()
    assert process.returncode == 1, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]  # after the progress bar, which text mode splits at its carriage returns
    assert line.startswith("python -m kvwire bench load: no reply came back in the ") and " s measured (" in line
    assert "give a longer --duration, or check the nodes" in line
    assert not list((tmp_path / "out").iterdir())


def test_an_out_directory_gone_by_the_end_is_one_error_line_and_exit_1(quiet_node, tmp_path):
    """--out is checked before the run; replaced by a file while the run goes on, the
    result cannot be written at the end: it is still on stdout, and one Error: line says
    why, with no traceback."""
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "kvwire", "bench", "--endpoints", quiet_node.address, "--mix", "put", "--connections",
         "2", "--duration", "1.5", "--warmup", "0", "--keys", "10", "-o", "json", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        with Client([quiet_node.address], timeout=5.0) as client:
            wait_for(lambda: client.health()["keys"] == 10, timeout=10, what="the load writing every key")
        out.rmdir()
        out.write_text("not a directory any more")
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 1, stderr
    assert json.loads(stdout)["ops"] > 0
    assert "Traceback" not in stderr and stderr.strip().splitlines() == [
        f"Error: --out {out}: cannot write the result there (File exists); it is on stdout above"], stderr


def test_help_lists_the_load_options_and_the_other_benchmarks():
    result = bench("--help", timeout=15)
    assert result.returncode == 0, result.stderr
    assert "Usage: python -m kvwire bench [OPTIONS] [COMMAND] [ARGS]..." in result.stdout
    assert "Options (of load, the default command):" in result.stdout
    for option in ("--endpoints, --endpoint", "--mix, --op", "--requests, --max-requests", "-o, --output", "--json"):
        assert option in result.stdout
    commands = result.stdout.split("Commands:")[1].split()
    assert {"detection", "failover", "load", "suite"} <= set(commands)


def test_json_is_output_json_and_load_may_be_named(node):
    result = bench("load", "--endpoints", node.address, "--mix", "put", "--connections", "2", "--requests", "200",
                   "--warmup", "0", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ops"] == 200 and report["errors"] == 0


def test_a_refused_endpoint_exits_1_without_a_traceback():
    result = bench("--endpoints", "127.0.0.1:1", "--mix", "put", "--duration", "1", timeout=15)
    assert result.returncode == 1
    assert "Connection refused" in result.stderr and "Traceback" not in result.stderr


def test_the_progress_bar_shows_live_throughput_on_stderr(node):
    result = bench("--endpoints", node.address, "--mix", "put", "--connections", "2", "--duration", "1.5",
                   "--warmup", "0", "--progress")
    assert result.returncode == 0, result.stderr
    assert "ops/s" in result.stderr and "[#" in result.stderr
    assert "throughput" in result.stdout  # the table, on stdout, after the bar is cleared


async def test_a_node_that_takes_the_preloads_puts_and_goes_silent_fails_it_after_the_silence_limit():
    """A node that answers HELLO and then nothing held the preload for its whole limit
    (40 s for 10,000 keys) before the run said anything (a CLI probe's finding)."""
    from kvwire.bench.preload import preload
    from kvwire.bench.settings import Settings

    async with ScriptedNode(lambda request: ScriptedNode.SILENT, answers_hello=False) as silent:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"heard no answer to its PUTs for 1 s \(0 of 10000 answered\)"):
            await preload(Settings(endpoints=(silent.address,), connections=4), b"v" * 100, silence_limit=1.0)
        assert time.monotonic() - started < 20  # not the 40 s limit
        assert len(silent.received) > 4  # it did take PUTs: the silence is after them
