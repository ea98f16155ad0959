"""kvwire-cli as real subprocesses: output, exit codes, and never a traceback."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from kvwire import Client
from kvwire.cli.client import exit_code_for
from kvwire.protocol import (
    ConflictError,
    ErrorCode,
    ErrorReply,
    HealthReply,
    KeyNotFoundError,
    KvwireError,
    NoQuorumError,
)
from kvwire.server.storage import DataDirError
from kvwire.testing import NodeProcess, ScriptedNode, error_classes, free_port, sample_error

CLI = [sys.executable, "-m", "kvwire.cli.client"]


def run_cli(*args, env=None, timeout=30, stdin=None):
    """Run kvwire-cli to completion; every run is checked for a traceback.

    ``stdin``: bytes to feed it; without them its stdin is empty, never the
    terminal's. Output is decoded as text either way.
    """
    # The caller's own KVWIRE_* settings must not leak into the tests.
    full_env = {name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")}
    full_env.update(env or {})
    result = subprocess.run(
        [*CLI, *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
        env=full_env,
    )
    result.stdout = result.stdout.decode("utf-8", "replace")
    result.stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def cli(shared_node):
    """kvwire-cli pointed at the shared node."""
    return lambda *args, **kwargs: run_cli("--endpoints", shared_node.address, *args, **kwargs)


# --- exit codes follow the error tree --------------------------------------------------



def test_the_walk_finds_the_whole_error_tree():
    assert {ConflictError, NoQuorumError, KeyNotFoundError, DataDirError} <= set(error_classes())


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_exits_with_the_code_its_attributes_give(cls):
    error = sample_error(cls)
    expected = 1 if isinstance(error, KeyNotFoundError) else 3 if cls.transient else 4
    assert exit_code_for(error) == expected


def test_a_new_error_class_exits_by_transient_alone():
    class NewlyTransient(KvwireError):
        transient = True

    class NewlyRefused(KvwireError):
        pass

    assert (exit_code_for(NewlyTransient("m")), exit_code_for(NewlyRefused("m"))) == (3, 4)


# --- success: exit 0 -------------------------------------------------------------------


def test_put_get_delete_text_output(cli):
    put = cli("put", "greeting", "hello world")
    assert put.returncode == 0, put.stderr
    assert put.stdout.startswith("OK (version ")
    got = cli("get", "greeting")
    assert (got.returncode, got.stdout) == (0, "hello world\n")
    deleted = cli("delete", "greeting")
    assert deleted.returncode == 0 and deleted.stdout.startswith("deleted (version ")
    assert cli("get", "greeting").returncode == 1


def test_json_output_parses(cli):
    put = cli("put", "doc", '{"a": [1, 2.5, null, true], "b": {"c": "d"}}', "--json", "-o", "json")
    assert put.returncode == 0, put.stderr
    put_doc = json.loads(put.stdout)
    assert put_doc["key"] == "doc" and set(put_doc["version"]) == {"counter", "node"}

    got = cli("get", "doc", "-o", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {
        "key": "doc",
        "value": {"a": [1, 2.5, None, True], "b": {"c": "d"}},
        "version": put_doc["version"],
    }
    # -o also works before the command.
    assert json.loads(cli("-o", "json", "get", "doc").stdout)["value"]["b"] == {"c": "d"}

    deleted = cli("delete", "doc", "-o", "json")
    assert json.loads(deleted.stdout)["version"]["counter"] > put_doc["version"]["counter"]


ESCAPES = "before\x1b[2J\x1b]0;title\x07\r\x9bafter\ttab"


def test_a_piped_get_prints_a_value_with_control_characters_exactly(cli, shared_node):
    """click.echo, which printed it before, removes ANSI sequences from anything but a terminal."""
    with Client(shared_node.address) as client:
        client.put("controls", ESCAPES)
    assert cli("get", "controls").stdout == ESCAPES + "\n"
    assert json.loads(cli("get", "controls", "-o", "json").stdout)["value"] == ESCAPES


def on_a_terminal(*args, stream: str = "stdout", status: int = 0) -> str:
    """What kvwire-cli writes to ``stream`` with it a terminal (a pseudo-terminal here)."""
    import pty
    import termios
    import tty

    controller, terminal = pty.openpty()
    tty.setraw(terminal, termios.TCSANOW)  # no newline translation: the bytes as written
    try:
        env = {name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")}
        outputs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: terminal}
        process = subprocess.run([*CLI, *args], stdin=subprocess.DEVNULL, timeout=30, env=env, **outputs)
        assert process.returncode == status, (process.stdout, process.stderr)
        os.close(terminal)
        terminal = None
        written = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything read
                break
            if not chunk:
                break
            written += chunk
        return written.decode()
    finally:
        os.close(controller)
        if terminal is not None:
            os.close(terminal)


def test_on_a_terminal_a_nodes_message_is_shown_escaped():
    """A node's message is printed as it came (a key in it is quoted already, but a node,
    or whatever answers on its port, may send anything): on a terminal, escaped."""
    def refusal(request):
        return ErrorReply(request.id, ErrorCode.BAD_REQUEST, "evil \x1b[2J\x1b]0;title\x07 message")

    with ScriptedNode(refusal, answers_hello=False) as node:
        written = on_a_terminal("--endpoints", node.address, "put", "k", "v", stream="stderr", status=4)
        piped = run_cli("--endpoints", node.address, "put", "k", "v").stderr
    assert "\x1b" not in written and "\x07" not in written, written
    assert "evil \\x1b[2J\\x1b]0;title\\x07 message" in written, written
    assert "evil \x1b[2J\x1b]0;title\x07 message" in piped  # to a pipe, as it came


def test_on_a_terminal_control_characters_are_shown_escaped(shared_node):
    with Client(shared_node.address) as client:
        client.put("controls", ESCAPES)
    endpoint = ["--endpoints", shared_node.address]
    assert on_a_terminal(*endpoint, "get", "controls") == "before\\x1b[2J\\x1b]0;title\\x07\\x0d\\x9bafter\ttab\n"
    shown = on_a_terminal(*endpoint, "get", "controls", "-o", "json")
    assert "\x1b" not in shown and "\x9b" not in shown and "\r" not in shown.replace("\r\n", "")
    assert json.loads(shown)["value"] == ESCAPES  # escaped the JSON way: still the same value


def test_text_get_prints_non_string_values_as_json(cli):
    cli("put", "n", "[1, 2]", "--json")
    assert cli("get", "n").stdout == "[1, 2]\n"
    cli("put", "s", "[1, 2]")  # without --json it is the string itself
    assert cli("get", "s").stdout == "[1, 2]\n"
    assert json.loads(cli("get", "s", "-o", "json").stdout)["value"] == "[1, 2]"


def test_bytes_travel_as_tagged_base64(cli):
    assert cli("put", "raw", '{"$bytes": "AP+A"}', "--json").returncode == 0
    got = json.loads(cli("get", "raw", "-o", "json").stdout)
    assert got["value"] == {"$bytes": "AP+A"}


def test_bytes_reach_python_clients_as_bytes(cli, shared_node):
    from kvwire import Client

    cli("put", "raw2", '{"$bytes": "aGk="}', "--json")
    with Client(shared_node.address) as client:
        assert client.get("raw2") == b"hi"


def stored(node, key):
    from kvwire import Client

    with Client(node.address) as client:
        return client.get(key)


# Just under the default 1 MiB limit on a value's msgpack encoding, and far
# over the argv limit; every byte value, most of them not UTF-8.
BIG_BYTES = (bytes(range(256)) * 3907)[:1_000_000]
NON_UTF8 = b"\xff\xfe\x00\x80 not text \xc3("


@pytest.mark.parametrize("value", [BIG_BYTES, NON_UTF8, b""], ids=["1MB", "non-utf8", "empty"])
def test_put_dash_stores_stdin_as_exactly_those_bytes(cli, shared_node, value):
    assert len(BIG_BYTES) == 1_000_000 and not BIG_BYTES.isascii()
    result = cli("put", "from-stdin", "-", stdin=value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK (version ")
    assert stored(shared_node, "from-stdin") == value


@pytest.mark.parametrize("value", [BIG_BYTES, NON_UTF8], ids=["1MB", "non-utf8"])
def test_put_value_file_stores_the_file_as_exactly_those_bytes(cli, shared_node, tmp_path, value):
    path = tmp_path / "value.bin"
    path.write_bytes(value)
    result = cli("put", "from-file", "--value-file", str(path), "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == "from-file"
    assert stored(shared_node, "from-file") == value


def test_value_file_dash_and_dev_stdin_read_stdin(cli, shared_node):
    assert cli("put", "vf-dash", "--value-file", "-", stdin=NON_UTF8).returncode == 0
    assert stored(shared_node, "vf-dash") == NON_UTF8
    assert cli("put", "vf-dev", "--value-file", "/dev/stdin", stdin=NON_UTF8).returncode == 0
    assert stored(shared_node, "vf-dev") == NON_UTF8


def test_put_json_from_stdin_and_file_stores_the_document(cli, shared_node, tmp_path):
    document = {"name": "caf\u00e9", "n": [1, 2.5, None, True], "raw": {"$bytes": "AP+A"}}
    expected = {"name": "caf\u00e9", "n": [1, 2.5, None, True], "raw": b"\x00\xff\x80"}
    text = json.dumps(document, ensure_ascii=False).encode("utf-8")
    assert cli("put", "json-stdin", "-", "--json", stdin=text).returncode == 0
    assert stored(shared_node, "json-stdin") == expected
    path = tmp_path / "doc.json"
    path.write_bytes(text)
    assert cli("put", "json-file", "--value-file", str(path), "--json").returncode == 0
    assert stored(shared_node, "json-file") == expected


def test_put_json_reads_numbers_as_the_rest_api_does(cli, shared_node):
    # kvwire.client.json_values, shared with the bridge: exact within msgpack's integers, a float beyond.
    assert cli("put", "big", "[18446744073709551615, 18446744073709551616, -9223372036854775809]", "--json").returncode == 0
    assert stored(shared_node, "big") == [2**64 - 1, 1.8446744073709552e19, -9.223372036854776e18]
    assert cli("get", "big").stdout == "[18446744073709551615, 1.8446744073709552e+19, -9.223372036854776e+18]\n"


def test_a_literal_dash_is_still_storable_as_a_json_string(cli, shared_node):
    assert cli("put", "dash", '"-"', "--json").returncode == 0
    assert stored(shared_node, "dash") == "-"
    assert cli("get", "dash").stdout == "-\n"


def test_put_value_is_still_a_string(cli, shared_node):
    assert cli("put", "plain", "caf\u00e9", stdin=b"ignored").returncode == 0
    assert stored(shared_node, "plain") == "caf\u00e9"


def test_put_help_documents_stdin_and_value_file():
    result = run_cli("put", "--help")
    assert result.returncode == 0
    assert "[VALUE]" in result.stdout and "--value-file PATH" in result.stdout
    assert "stdin" in result.stdout and "/dev/stdin" in result.stdout and """'"-"' --json""" in result.stdout


def test_health(cli):
    text = cli("health")
    assert text.returncode == 0, text.stderr
    assert "node_id: n1" in text.stdout.splitlines()
    assert "cluster.has_quorum: true" in text.stdout.splitlines()
    doc = json.loads(cli("health", "-o", "json").stdout)
    assert doc["node_id"] == "n1" and doc["cluster"]["has_quorum"] is True


def test_get_accepts_consistency(cli):
    cli("put", "c", "v")
    assert cli("get", "c", "--consistency", "one").stdout == "v\n"
    assert cli("get", "c", "--consistency", "quorum").stdout == "v\n"


def test_endpoints_come_from_the_environment(shared_node):
    result = run_cli("health", "-o", "json", env={"KVWIRE_ENDPOINTS": shared_node.address})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["node_id"] == "n1"


def test_fails_over_to_a_later_endpoint(shared_node):
    result = run_cli("--endpoints", f"127.0.0.1:{free_port()},{shared_node.address}", "put", "f", "1")
    assert result.returncode == 0, result.stderr


def test_help_documents_the_exit_codes():
    result = run_cli("--help")
    assert result.returncode == 0
    for line in ("0  success", "1  key not found", "2  usage error", "3  cluster unavailable", "4  the node refused"):
        assert line in result.stdout
    assert "CONFLICT" in result.stdout and "NO_QUORUM" in result.stdout


# --- exit 1: not found -----------------------------------------------------------------


def test_missing_key_exits_1(cli):
    for command in ("get", "delete"):
        result = cli(command, "no-such-key")
        assert result.returncode == 1
        assert "no-such-key" in result.stderr and "not found" in result.stderr
        assert result.stdout == ""


# --- exit 2: usage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["put", "k", "{not json", "--json"], "not valid JSON"),
        (["put", "k", '{"$bytes": "!!"}', "--json"], "base64"),
        (["put", "k", "1e400", "--json"], "beyond the range of a 64-bit float"),
        (["put", "k", "NaN", "--json"], "NaN is not JSON"),
        (["get", ""], "empty"),
        (["get", "k" * 1025], "1024"),
        (["get", "k", "--consistency", "all"], "consistency"),
        (["get"], "KEY"),
        (["frobnicate"], "frobnicate"),
        (["--timeout", "0", "get", "k"], "timeout"),
        (["-o", "yaml", "get", "k"], "output"),
        ([], "Missing command"),
    ],
)
def test_usage_errors_exit_2(cli, args, message):
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["put", "k", "v", "--value-file", "/etc/hostname"], b"", "Error: give VALUE or --value-file, not both"),
        (["put", "k", "-", "--value-file", "-"], b"x", "Error: give VALUE or --value-file, not both"),
        (["put", "k"], b"x", "Error: missing the value: give VALUE, '-' to read stdin, or --value-file PATH"),
        (["put", "k", "--json"], b"1", "Error: missing the value"),
        (
            ["put", "k", "-", "--json"],
            b'{"a": "\xff"}',
            "'VALUE' (stdin): --json needs UTF-8 text, but byte 0xff at offset 7 is not valid UTF-8",
        ),
        (["put", "k", "-", "--json"], b"{not json" + b"x" * 10_000, "'VALUE' (stdin): not valid JSON (Expecting"),
        (["put", "k", "-", "--json"], b"", "'VALUE' (stdin): not valid JSON (Expecting value"),
        (["put", "k", "-", "--json"], b'{"$bytes": "!!"}', "'VALUE' (stdin): {\"$bytes\": ...} must hold a base64"),
        (["put", "k", "-", "--json"], b"[1e400]", "'VALUE' (stdin): the number 1e400 is beyond the range of a 64-bit float"),
        (["put", "k", "-", "--json"], b'{"a": 1, "a": 2}', "'VALUE' (stdin): a JSON object names 'a' twice"),
        (["put", "k", "--value-file", "/dev/stdin", "--json"], b"\xc3(", "'--value-file' '/dev/stdin': --json needs UTF-8 text"),
    ],
)
def test_put_value_usage_errors_exit_2(cli, args, stdin, message):
    result = cli(*args, stdin=stdin)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stdout == ""
    assert "xxxxxxxxxx" * 10 not in result.stderr  # a long bad value is quoted cut short


def test_unreadable_value_file_exits_2_naming_path_and_reason(cli, tmp_path):
    missing = tmp_path / "missing.bin"
    result = cli("put", "k", "--value-file", str(missing))
    assert result.returncode == 2 and result.stdout == ""
    assert f"'--value-file': cannot read '{missing}': No such file or directory" in result.stderr

    result = cli("put", "k", "--value-file", str(tmp_path))
    assert result.returncode == 2
    assert f"cannot read '{tmp_path}': Is a directory" in result.stderr



def test_invalid_json_file_names_the_file(cli, tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b"[1, 2,")
    result = cli("put", "k", "--value-file", str(path), "--json")
    assert result.returncode == 2
    assert f"'--value-file' '{path}': not valid JSON" in result.stderr


def test_bad_endpoint_exits_2_naming_it():
    result = run_cli("--endpoints", "localhost", "get", "k")
    assert result.returncode == 2
    assert "'localhost'" in result.stderr


# --- exit 3: unavailable ------------------------------------------------------------------


def test_unreachable_node_exits_3():
    port = free_port()
    result = run_cli("--endpoints", f"127.0.0.1:{port}", "get", "k")
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in result.stderr and "refused" in result.stderr


def test_hung_node_times_out_with_exit_3(node):
    node.pause()
    try:
        result = run_cli("--endpoints", node.address, "--timeout", "0.5", "put", "k", "v")
    finally:
        node.resume()
    assert result.returncode == 3
    assert "within 0.5 s" in result.stderr


@pytest.mark.parametrize("code", [ErrorCode.NO_QUORUM, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT])
def test_unavailable_and_no_quorum_replies_exit_3(code):
    def refusal(request):
        return ErrorReply(request.id, code, "Failed to replicate to quorum of nodes")

    with ScriptedNode(refusal, answers_hello=False) as node:
        result = run_cli("--endpoints", node.address, "put", "k", "v")
    assert result.returncode == 3
    assert "Failed to replicate to quorum of nodes" in result.stderr


def test_a_node_message_of_several_lines_is_printed_as_one():
    def refusal(request):
        return ErrorReply(request.id, ErrorCode.BAD_REQUEST, "first line\nsecond line\r\nthird")

    with ScriptedNode(refusal, answers_hello=False) as node:
        result = run_cli("--endpoints", node.address, "put", "k", "v")
    assert result.returncode == 4
    assert result.stderr == "kvwire-cli: bad request: first line second line third\n"


@pytest.mark.parametrize("maybe_applied", [True, None])
def test_conflict_exits_3_like_no_quorum(maybe_applied):
    def conflict(request):
        return ErrorReply(request.id, ErrorCode.CONFLICT, "DELETE raced with a concurrent write", maybe_applied)

    with ScriptedNode(conflict, answers_hello=False) as node:
        result = run_cli("--endpoints", node.address, "delete", "k")
    assert result.returncode == 3, result.stderr
    assert "conflict: DELETE raced with a concurrent write" in result.stderr
    assert exit_code_for(ConflictError("m")) == exit_code_for(NoQuorumError("m")) == 3


@pytest.mark.parametrize("command, says", [(("put", "k", "v"), True), (("delete", "k"), True), (("get", "k"), False)])
def test_a_write_left_unanswered_says_it_may_have_been_applied(command, says):
    """A PUT or DELETE sent and never answered said only "no reply within 0.5 s", exit 3,
    which reads "try again later"; the library's error says maybe_applied (a CLI probe's finding)."""
    with ScriptedNode(lambda request: ScriptedNode.SILENT, answers_hello=False) as node:
        result = run_cli("--timeout", "0.5", "--endpoints", node.address, *command)
    assert result.returncode == 3, result.stderr
    assert "no reply within 0.5 s" in result.stderr, result.stderr
    assert ("it may have been applied: read the key before sending it again" in result.stderr) is says, result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_health_without_quorum_exits_3_after_printing_it():
    report = {"status": "degraded", "cluster": {"has_quorum": False, "healthy_nodes": 1}}
    with ScriptedNode(lambda request: HealthReply(request.id, report), answers_hello=False) as node:
        result = run_cli("--endpoints", node.address, "health", "-o", "json")
    assert result.returncode == 3
    assert json.loads(result.stdout) == report


# --- exit 4: refused --------------------------------------------------------------------


def test_value_over_the_node_limit_exits_4(tmp_path):
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--max-value-bytes", "100"]) as small:
        result = run_cli("--endpoints", small.address, "put", "k", "x" * 200)
    assert result.returncode == 4
    assert "too large" in result.stderr and "limit" in result.stderr


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_value_from_stdin_or_file_over_the_node_limit_exits_4(tmp_path, source):
    path = tmp_path / "value.bin"
    path.write_bytes(b"\xff" * 200)
    args = ["-"] if source == "stdin" else ["--value-file", str(path)]
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--max-value-bytes", "100"]) as small:
        result = run_cli("--endpoints", small.address, "put", "k", *args, stdin=path.read_bytes())
    assert result.returncode == 4
    assert "too large" in result.stderr and "limit is 100 bytes" in result.stderr


def test_wrong_cluster_exits_4(cli):
    result = cli("--cluster-id", "elsewhere", "get", "k")
    assert result.returncode == 4
    assert "elsewhere" in result.stderr


def test_garbage_from_the_node_exits_with_a_message_not_a_traceback():
    with ScriptedNode(lambda request: b"\x00\x00\x00\x02\xc1\xc1", answers_hello=False) as node:
        result = run_cli("--endpoints", node.address, "get", "k")
    assert result.returncode == 3  # the connection is unusable, like a node that went away
    assert "invalid reply" in result.stderr


# --- exit 130: interrupted ------------------------------------------------------------------


def test_ctrl_c_exits_130_quietly():
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(10)
        port = silent.getsockname()[1]
        process = subprocess.Popen(
            [*CLI, "--endpoints", f"127.0.0.1:{port}", "--timeout", "60", "get", "k"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As a terminal's foreground job gets it: started as a background job
            # of a script (`.ci/run &`), the suite itself inherits SIGINT ignored,
            # and Python keeps ignoring it in the child.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            connection, _ = silent.accept()
            with connection:
                connection.settimeout(10)
                assert connection.recv(4)  # its HELLO: the command is waiting on the network
                process.send_signal(signal.SIGINT)
                stdout, stderr = process.communicate(timeout=10)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "Traceback" not in stderr and stdout == ""


def test_a_value_over_the_frame_limit_is_too_large_not_unavailable(tmp_path):
    # A frame over the node's limit would make it drop the connection, which reads as a
    # lost node; the client refuses to send it. (A file over the default frame limit is
    # refused before it is read whole: test_cli_edges.)
    path = tmp_path / "huge.bin"
    path.write_bytes(b"x" * 1_000_000)
    limits = ["--max-value-bytes", "100000", "--max-frame-bytes", "200000"]
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=limits) as small:
        result = run_cli("--endpoints", small.address, "put", "huge", "--value-file", str(path))
    assert result.returncode == 4, result.stderr
    assert "too large" in result.stderr and f"{small.address} takes at most 102048 from a client" in result.stderr


def test_every_endpoint_given_is_tried_before_the_command_fails(shared_node):
    """The client's default of three attempts left a fourth endpoint, up, untried: exit 3
    in milliseconds, most of --timeout unused (a probe, 2026-12-07)."""
    dead = [f"127.0.0.1:{free_port('127.0.0.1')}" for _ in range(3)]
    result = run_cli("--endpoints", ",".join([*dead, shared_node.address]), "put", "fourth", "reached")
    assert result.returncode == 0, result.stderr
    result = run_cli("--endpoints", ",".join([*dead, shared_node.address]), "get", "fourth")
    assert (result.returncode, result.stdout.strip()) == (0, "reached"), result.stderr
