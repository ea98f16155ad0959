"""``kvwire serve`` as a user runs it: options, environment variables, bad arguments."""

import os
import subprocess
import sys

import pytest

from kvwire.protocol import Hello
from kvwire.testing import RawConnection, free_port, wait_for


def run_serve(*args, env=None, timeout=15):
    return subprocess.run(
        [sys.executable, "-m", "kvwire", "serve", *args],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "localhost"], "is not HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "outside 1-65535"),
        (["--node-id", "bad id"], "node id"),
        (["--sync", "always"], "'always' is not one of"),
        (["--max-value-bytes", "0"], "0 is not in the range"),
        (["--max-frame-bytes", "2000", "--max-value-bytes", "1000"], "max_frame_bytes (2000) must be at least"),
        (["--cache-entries", "lots"], "'lots' is not a valid integer"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_and_no_traceback(tmp_path, args, message):
    result = run_serve("--data-dir", str(tmp_path / "d"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_options_come_from_kvwire_environment_variables(tmp_path):
    port = free_port()
    env = {**os.environ, "KVWIRE_LISTEN": f"127.0.0.1:{port}", "KVWIRE_NODE_ID": "envnode",
           "KVWIRE_CLUSTER_ID": "envcluster", "KVWIRE_DATA_DIR": str(tmp_path / "d")}
    process = subprocess.Popen([sys.executable, "-m", "kvwire", "serve"], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def hello():
            assert process.poll() is None, process.stderr.read().decode()
            try:
                with RawConnection(f"127.0.0.1:{port}", timeout=1) as conn:
                    return conn.request(Hello(1))
            except OSError:
                return None

        reply = wait_for(hello, timeout=15, what="the node answering HELLO")
        assert (reply.node, reply.cluster) == ("envnode", "envcluster")
        assert (tmp_path / "d" / "kvwire.sqlite3").exists()
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def test_help_lists_every_option_with_its_environment_variable():
    result = subprocess.run([sys.executable, "-m", "kvwire", "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for option in ["--node-id", "--listen", "--data-dir", "--cluster-id", "--sync", "--max-key-bytes",
                   "--max-value-bytes", "--max-frame-bytes", "--max-connections", "--max-inflight",
                   "--cache-entries", "--log-level"]:
        assert option in result.stdout
        assert "KVWIRE_" + option[2:].upper().replace("-", "_") in result.stdout
