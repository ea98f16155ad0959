"""``python -m bench.load`` as a user runs it: a short real run per op against a node, and bad options."""

import json
import subprocess
import sys

import pytest


def run_load(*args, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "bench.load", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("op", ["get", "put"])
def test_a_short_run_reports_sane_figures(node, op):
    result = run_load(
        "--endpoint", node.address, "--op", op, "--connections", "4", "--duration", "1", "--warmup", "0",
        "--keys", "100", "--server-pid", str(node.pid), "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["op"] == op
    assert report["endpoints"] == [node.address]
    assert report["ops"] > 0 and report["ops_per_s"] > 0
    assert report["errors"] == 0 and report["error_codes"] == {}
    assert report["unanswered"] == 0 and report["connections_lost"] == 0
    latency = report["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    assert report["server_cpu_us_per_op"] > 0
    assert (report["preload_s"] is None) == (op == "put")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--op", "delete"], "invalid choice: 'delete'"),
        (["--keys", "1"], "--keys must be at least 2 x --pipeline"),
        (["--endpoint", "localhost"], "is not HOST:PORT"),
        (["--server-pid", "abc"], "is not a comma-separated list of process ids"),
    ],
)
def test_bad_options_exit_2_with_a_message_and_no_traceback(args, message):
    result = run_load(*args, timeout=15)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
