"""kvwire-cli, kvwire serve and kvwire up at their edges, as real processes: a stdout
that is closed or whose reader left, values JSON cannot carry, option values that
are almost right, inputs without end, and a Ctrl-C before the program is running."""

import asyncio
import base64
import json
import logging
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvwire import Client
from kvwire.cli.client_io import JSON_BYTES_PER_VALUE_BYTE
from kvwire.protocol import DEFAULT_LIMITS
from kvwire.cli.entry import interrupted_status
from kvwire.client.token_file import MAX_TOKEN_FILE_BYTES
from kvwire.protocol import Put, PutReply
from kvwire.testing import (
    NodeProcess,
    RawConnection,
    free_port,
    free_port_run,
    stop_gracefully,
    wait_for,
    write_auth_file,
)
from msgspec import Raw
from test_cli import CLI, run_cli

# What kvwire-cli reads of a value at the default limits: a frame's worth.
MAX_VALUE_BYTES = DEFAULT_LIMITS.max_frame_bytes

BIN = Path(sys.executable).parent
# What a user runs: the console scripts (setup.py entry_points), and `python -m kvwire`,
# which is also how kvwire up and kvwire.testing start every node.
KVWIRE_SCRIPT = [str(BIN / "kvwire")]
KVWIRE_MODULE = [sys.executable, "-m", "kvwire"]
KVWIRE_CLI_SCRIPT = [str(BIN / "kvwire-cli")]


@pytest.fixture
def cli(shared_node):
    """kvwire-cli pointed at the shared node."""
    return lambda *args, **kwargs: run_cli("--endpoints", shared_node.address, *args, **kwargs)


def stored(node, key):
    with Client(node.address) as client:
        return client.get(key)


def clean_env(**settings):
    """The environment without the caller's KVWIRE_* settings, plus ``settings``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")}
    env.update(settings)
    return env


# --- 1. a closed stdout, or one whose reader went away: exit 4 ---------------------------


def run_into_a_gone_reader(*args):
    """kvwire-cli ARGS with stdout a pipe nobody reads any more, as after `| head -0`: every write fails (EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([*CLI, *args], stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE,
                                timeout=30, env=clean_env())
    finally:
        os.close(write_end)
    return result.returncode, result.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("args", [["get", "gone-reader"], ["get", "gone-reader", "-o", "json"], ["health"],
                                  ["health", "-o", "json"], ["--help"], ["put", "--help"], ["--version"]],
                         ids=shlex.join)
def test_a_reader_gone_from_stdout_exits_4_quietly(cli, shared_node, args):
    assert cli("put", "gone-reader", "v").returncode == 0
    code, stderr = run_into_a_gone_reader("--endpoints", shared_node.address, *args)
    assert (code, stderr) == (4, "")  # 1 would say "not found"; nobody is left to read a message


def test_a_put_whose_output_cannot_be_written_is_done_all_the_same(shared_node):
    code, stderr = run_into_a_gone_reader("--endpoints", shared_node.address, "put", "gone-put", "stored")
    assert (code, stderr) == (4, "")
    assert stored(shared_node, "gone-put") == "stored"


@pytest.fixture(scope="module")
def large_value_node(tmp_path_factory):
    """A node holding a value of 1,000,000 characters, far more than a pipe holds (64 KiB)."""
    with NodeProcess("n1", data_dir=tmp_path_factory.mktemp("large") / "n1", host="127.0.71.1",
                     extra_args=["--sync", "normal"]) as node:
        with Client(node.address) as client:
            client.put("large", "x" * 1_000_000)
        yield node


@pytest.mark.parametrize("output", ["text", "json"])
@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED", "buffered"])
def test_a_reader_gone_partway_through_a_large_value_exits_4_quietly(large_value_node, unbuffered, output):
    """`kvwire-cli get large | head -c 10`: with PYTHONUNBUFFERED set, stdout wrote through to
    the pipe, the write stopped short when head left, and the rest was dropped: exit 0."""
    env = {name: value for name, value in clean_env().items() if name != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb", buffering=0) as reader:
        process = subprocess.Popen([*KVWIRE_CLI_SCRIPT, "--endpoints", large_value_node.address, "-o", output,
                                    "get", "large"], stdin=subprocess.DEVNULL, stdout=write_end,
                                   stderr=subprocess.PIPE, env=env)
        os.close(write_end)
        # Returns once the CLI has begun its write, which the full pipe then holds up.
        assert reader.read(10)
    _, stderr = process.communicate(timeout=30)
    assert (process.returncode, stderr.decode("utf-8", "replace")) == (4, "")


@pytest.mark.parametrize("args", [["get", "closed"], ["health"], ["put", "closed-put", "x"], ["--help"]],
                         ids=shlex.join)
def test_a_closed_stdout_exits_4_with_one_line_before_doing_anything(shared_node, args):
    # As `kvwire-cli ARGS >&-`: fd 1 is closed when Python starts.
    command = shlex.join([*CLI, "--endpoints", shared_node.address, *args])
    result = subprocess.run(["sh", "-c", f"exec {command} >&-"], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL, env=clean_env())
    assert result.returncode == 4
    assert result.stderr.splitlines() == ["kvwire-cli: stdout is closed; nothing was done, as there is nowhere to say how it went"]
    with pytest.raises(KeyError):
        stored(shared_node, "closed-put")


@pytest.mark.parametrize("args", [["health"], ["--help"]], ids=shlex.join)
def test_an_unwritable_stdout_is_one_line_naming_the_reason(shared_node, args):
    with open("/dev/full", "w") as full:
        result = subprocess.run([*CLI, "--endpoints", shared_node.address, *args], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=30, stdin=subprocess.DEVNULL, env=clean_env())
    assert result.returncode == 4
    assert result.stderr.splitlines() == ["kvwire-cli: cannot write to stdout: No space left on device"]


@pytest.mark.parametrize("args", [["secret", "{dir}/s.key"], ["--help"], ["--version"], ["certs", "{dir}/tls"]],
                         ids=lambda args: args[0])
def test_a_kvwire_command_whose_stdout_is_full_says_so_in_one_line(tmp_path, args):
    """Every kvwire command but kvwire-cli ended in a traceback, exit 1, once its work was
    done: a script retrying it was then refused, the secret being there (a probe, 2026-12-07)."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "kvwire", *(arg.format(dir=tmp_path) for arg in args)],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
                                stdin=subprocess.DEVNULL, env=clean_env())
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "kvwire: cannot write to stdout: No space left on device; what the command did before its output is done"]
    if args[0] == "secret":
        assert (tmp_path / "s.key").stat().st_size > 16


# --- 2. JSON in and out is JSON; any value a node holds prints ---------------------------


@pytest.mark.parametrize("text, message", [
    ("NaN", "NaN is not JSON"),
    ("[Infinity]", "Infinity is not JSON"),
    ("-Infinity", "-Infinity is not JSON"),
    ("1e999", "beyond the range of a 64-bit float"),
    ('{"a": 1, "a": 2}', "names 'a' twice"),
    ('{"$bytes": "AP+"}', "base64"),
    ("[" * 2000 + "]" * 2000, "nested too deeply"),
])
def test_put_json_refuses_what_is_not_json(cli, text, message):
    for result in (cli("put", "not-json", "--json", "--", text), cli("put", "not-json", "-", "--json", stdin=text.encode())):
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "unexpected" not in result.stderr


@pytest.mark.parametrize("number, shown", [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")])
def test_a_float_json_cannot_carry_prints_as_text_and_is_refused_as_json(cli, shared_node, number, shown):
    with Client(shared_node.address) as client:  # another client stored it
        client.put("not-finite", {"x": [number]})
    text = cli("get", "not-finite")
    assert (text.returncode, text.stdout) == (0, f'{{"x": [{shown}]}}\n')
    as_json = cli("get", "not-finite", "-o", "json")
    assert (as_json.returncode, as_json.stdout) == (4, "")
    assert as_json.stderr.splitlines() == [
        "kvwire-cli: cannot show the value as JSON: the value holds a float NaN or infinity, which JSON cannot carry; "
        "the text output (-o text) shows it"]


def test_a_map_json_would_merge_is_refused_in_both_outputs(cli, shared_node):
    with Client(shared_node.address) as client:
        client.put("merging", {b"x": 1, "$bytes:eA==": 2})  # b"x" is shown as "$bytes:eA=="
    for args in (["get", "merging"], ["get", "merging", "-o", "json"]):
        result = cli(*args)
        assert (result.returncode, result.stdout) == (4, "")
        assert len(result.stderr.splitlines()) == 1 and "read it with the Python client" in result.stderr


def test_a_map_that_would_pass_for_bytes_is_refused_in_both_outputs(cli, shared_node):
    with Client(shared_node.address) as client:
        client.put("bytes-lookalike", {"$bytes": "YWI="})  # JSON would show b"ab" so
    for args in (["get", "bytes-lookalike"], ["get", "bytes-lookalike", "-o", "json"]):
        result = cli(*args)
        assert (result.returncode, result.stdout) == (4, "")
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert 'only key is "$bytes"' in result.stderr and "read it with the Python client" in result.stderr


@pytest.mark.parametrize("depth", [500, 510])
def test_a_deeply_nested_value_prints_in_both_outputs(cli, shared_node, depth):
    text = "[" * depth + "]" * depth
    assert cli("put", "deep", "-", "--json", stdin=text.encode()).returncode == 0
    shown = cli("get", "deep")
    assert (shown.returncode, shown.stdout) == (0, text + "\n"), shown.stderr
    as_json = cli("get", "deep", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout.startswith('{"key": "deep", "value": ' + "[" * depth)
    assert json.loads(as_json.stdout)["version"]["node"] == "n1"


def test_a_value_nested_as_deep_as_a_node_takes_prints(cli, shared_node):
    # 1,023 levels, the most a node reads; deeper than a client packs (511), but a node
    # holds what any client sent it: here, msgpack bytes written by hand.
    depth = 1023
    with RawConnection(shared_node.address) as connection:
        reply = connection.request(Put(1, "deepest", Raw(b"\x91" * (depth - 1) + b"\x90")))
    assert isinstance(reply, PutReply), reply
    shown = cli("get", "deepest")
    assert (shown.returncode, shown.stdout) == (0, "[" * depth + "]" * depth + "\n"), shown.stderr
    as_json = cli("get", "deepest", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout.startswith('{"key": "deepest", "value": ' + "[" * depth + "]" * depth + ", ")


# --- 3. option values that are almost right: usage errors --------------------------------


@pytest.mark.parametrize("args, env, message", [
    (["--timeout", "nan"], {}, "'nan' is not a number of seconds"),
    (["--timeout", "NaN"], {}, "'NaN' is not a number of seconds"),
    ([], {"KVWIRE_TIMEOUT": "nan"}, "'nan' is not a number of seconds"),
    (["--timeout", "inf"], {}, "inf is not in the range"),
    (["--timeout", "-1"], {}, "-1.0 is not in the range"),
    (["--timeout", ""], {}, "'' is not a number of seconds"),
    (["--timeout", "soon"], {}, "Invalid value for '--timeout': 'soon' is not a number of seconds"),
    (["--cluster-id", ""], {}, "it is empty; leave the option out to accept nodes of any cluster"),
    (["--cluster-id", "\udcff"], {}, "not UTF-8 text"),
    (["--endpoints", "\udcff:1"], {}, "not UTF-8 text"),
    (["--endpoints", ""], {}, "'' is not HOST:PORT"),
    (["--endpoints", "http://127.0.0.1:7379"], {}, "without a scheme"),
    (["--endpoints", "127.0.0.1:7379:5"], {}, "give one port"),
    # The resolver's UnicodeError escaped as "unexpected error", exit 4, and the good endpoint after it went untried.
    (["--endpoints", "a..b:1,127.0.0.1:1"], {}, "'a..b' is not a host name (an empty label"),
    (["--endpoints", "x" * 64 + ":1"], {}, "or a label over 63 characters"),
    (["--endpoints", "[::1]]:7379"], {}, "unbalanced brackets around the host"),
    (["--endpoints", "[127.0.0.1]:7379"], {}, "brackets hold an IPv6 address, and '127.0.0.1' is not one"),
    (["--endpoints", "127.0.0.1:\u00b2"], {}, "the port in ASCII digits"),  # int() took "²": a traceback's text
    (["--endpoints", "127.0.0.1:\u0662\u0663\u0660\u0660\u0661"], {}, "the port in ASCII digits"),  # was port 23001
    (["--endpoints", "127.0.0.1:" + "9" * 5000], {}, "is outside 1-65535"),
    ([], {"KVWIRE_TOKEN": "\udcff"}, "Invalid value for KVWIRE_TOKEN: it holds a byte that is not UTF-8 text, at offset 0"),
    (["--token-file", ""], {}, "the path is empty"),
    (["--max-key-bytes", "0"], {}, "0 is not in the range x>=1"),
    (["--max-key-bytes", "4294967295"], {}, "--max-key-bytes 4294967295 with --max-value-bytes 1048576 is too large: "
                                            "a frame holding such a key and value would not fit"),
    ([], {"KVWIRE_MAX_VALUE_BYTES": "4294967295"}, "--max-key-bytes 1024 with --max-value-bytes 4294967295 is too "
                                                   "large: a frame holding such a key and value would not fit the 4-byte "
                                                   "length prefix (settings from the environment: KVWIRE_MAX_VALUE_BYTES)"),
    (["--max-value-bytes", "0"], {}, "0 is not in the range x>=1"),
    ([], {"KVWIRE_MAX_KEY_BYTES": "many"}, "'many' is not a valid integer"),
    (["--tls-ca", ""], {}, "the path is empty"),
    (["--tls-cert", ""], {}, "the path is empty"),
    (["-o", ""], {}, "'' is not one of"),
])
def test_bad_option_values_are_usage_errors(args, env, message):
    result = run_cli("--endpoints", "127.0.0.1:1", *args, "get", "k", env=env)  # the last --endpoints wins
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "unexpected" not in result.stderr, result.stderr
    assert "\ufffd" not in result.stderr  # the bad byte itself is not echoed


@pytest.mark.parametrize("settings, error, named", [
    ({"TLS_CA": "/nonexistent"}, "--tls-ca /nonexistent: no such file{note}", ["TLS_CA"]),
    ({"TLS_CA": "{text}"}, "--tls-ca {text}: not a PEM CA certificate (no certificate or crl found){note}", ["TLS_CA"]),
    ({"TLS_CERT": "{text}"}, "--tls-cert needs --tls-key: a certificate and its private key go together{note}",
     ["TLS_CERT"]),
    # The certificate is read first, and refused: the key's variable is no place to look.
    ({"TLS_CERT": "{text}", "TLS_KEY": "{text}"}, "--tls-cert {text}: not a PEM certificate (no certificate or crl "
                                                  "found){note}", ["TLS_CERT"]),
    ({"TOKEN_FILE": "/nonexistent"},
     "Invalid value for '--token-file'{note}: cannot read /nonexistent: No such file or directory", ["TOKEN_FILE"]),
    ({"TOKEN_FILE": "{empty}"}, "Invalid value for '--token-file'{note}: {empty} is empty", ["TOKEN_FILE"]),
    ({"CLUSTER_ID": "\udcff"}, "Invalid value for '--cluster-id'{note}: it holds a byte that is not UTF-8 text, "
                               "at offset 0", ["CLUSTER_ID"]),
    ({"ENDPOINTS": "\udcff:1"}, "Invalid value for '--endpoints'{note}: it holds a byte that is not UTF-8 text, "
                                "at offset 0", ["ENDPOINTS"]),
], ids=["ca-missing", "ca-not-pem", "cert-without-key", "cert-not-pem", "token-file-missing", "token-file-blank",
        "cluster-id-not-utf8", "endpoints-not-utf8"])
def test_a_bad_file_or_text_from_the_environment_names_its_variable(tmp_path, settings, error, named):
    """KVWIRE_TLS_CA=/nonexistent said "--tls-ca /nonexistent: no such file", and no
    --tls-ca was on the command line: the error now names the variable, as other options' do.
    Only the variables at fault are named: KVWIRE_ENDPOINTS, always set here, only when it is."""
    (tmp_path / "text").write_text("not PEM\n")
    (tmp_path / "empty").write_text(" \n")
    paths = {"text": tmp_path / "text", "empty": tmp_path / "empty"}
    settings = {"ENDPOINTS": "127.0.71.1:1", **{name: value.format(**paths) for name, value in settings.items()}}
    from_env = run_cli("get", "k", env={f"KVWIRE_{name}": value for name, value in settings.items()})
    assert from_env.returncode == 2, from_env.stderr
    note = f" (settings from the environment: {', '.join(f'KVWIRE_{name}' for name in named)})"
    assert from_env.stderr.splitlines()[-1] == f"Error: {error.format(**paths, note=note)}"
    # The same settings as options: the option alone is named.
    options = [part for name, value in settings.items() for part in (f"--{name.lower().replace('_', '-')}", value)]
    given = run_cli(*options, "get", "k")
    assert given.returncode == 2, given.stderr
    assert given.stderr.splitlines()[-1] == f"Error: {error.format(**paths, note='')}"


def test_a_token_file_that_is_not_utf8_is_a_usage_error_naming_it(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"secret-\xff-token\n")
    result = run_cli("--token-file", str(path), "--endpoints", "127.0.0.1:1", "get", "k")
    assert result.returncode == 2
    assert f"{path} holds a byte that is not UTF-8 text, at offset 7" in result.stderr
    assert "secret" not in result.stderr


# --- 4. Ctrl-C while the program starts -------------------------------------------------


# Seconds after the entry module (kvwire.cli.entry) has taken over SIGINT: into the
# imports of the command (0.1 to 0.4 s by command) and past them. Before that a signal
# is Python's own (in the interpreter's first 20-30 ms no code of kvwire's has run, and
# none can catch it). `python -X importtime` (PYTHONPROFILEIMPORTTIME) writes a line as
# each import ends: the entry module's, then the first of the command's imports, which
# begin only once the handler is in place, so the clock starts at that second line;
# timed from the entry module's own line, the signal could land in the few statements
# between it and the handler, and the test would be flaky.
EARLY = [0.0, 0.05, 0.15, 0.3]
ENTRY_IMPORTED = re.compile(r"^import time:.*\| +kvwire\.cli\.entry$", re.MULTILINE)


def handler_in_place(stderr: str) -> bool:
    """Whether an import has ended since the entry module's: SIGINT is handled by then."""
    entry = ENTRY_IMPORTED.search(stderr)
    return entry is not None and "import time:" in stderr[entry.end():]


def interrupt_after(command, delay, tmp_path, env, signum=signal.SIGINT, **popen):
    """Start ``command`` and send it ``signum`` (SIGINT) ``delay`` seconds after its entry module
    took over SIGINT; its exit status, and its stderr without the import-time lines that timed it."""
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            # Faulthandler: a process still running long after the SIGINT is sent SIGABRT,
            # which prints every thread's stack, so that a failure says where it was.
            env={**env, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONFAULTHANDLER": "1"},
            # As a terminal's foreground job gets it (see test_cli.test_ctrl_c_exits_130_quietly).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen,
        )
    try:
        wait_for(lambda: handler_in_place(stderr_path.read_text()) or process.poll() is not None,
                 timeout=30, interval=0.002, what="the entry module to take over SIGINT")
        time.sleep(delay)  # the delay is what is tested: where in its start the signal lands
        assert process.poll() is None, f"exited on its own: {process.returncode}\n{stderr_path.read_text()}"
        process.send_signal(signum)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=10)
            pytest.fail(f"still running 30 s after SIGINT ({delay} s after the entry module took it over); its "
                        f"stderr, stacks last:\n{_without_import_times(stderr_path)}", pytrace=False)
    finally:
        stop_gracefully(process)
    return process.returncode, _without_import_times(stderr_path)


def _without_import_times(stderr_path) -> str:
    return "".join(line for line in stderr_path.read_text().splitlines(keepends=True) if "import time:" not in line)


@pytest.mark.parametrize("delay", EARLY)
def test_ctrl_c_while_kvwire_cli_starts_exits_130_quietly(tmp_path, delay):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code, stderr = interrupt_after([*KVWIRE_CLI_SCRIPT, "--endpoints", address, "--timeout", "60", "get", "k"],
                                       delay, tmp_path, clean_env())
    assert (code, stderr.strip()) == (130, "")


# Commands that run until SIGTERM or SIGINT and then exit 0 (README), in a data directory.
SERVERS = {
    "serve": lambda data: [*KVWIRE_SCRIPT, "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", data, "--sync", "off"],
    "serve-python-m": lambda data: [*KVWIRE_MODULE, "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", data],
    "bridge": lambda data: [*KVWIRE_SCRIPT, "bridge", "--listen", f"127.0.0.1:{free_port()}", "--endpoints", "127.0.0.1:1"],
    "up": lambda data: [*KVWIRE_SCRIPT, "up", "--nodes", "1", "--no-http", "--base-port", str(free_port_run(1)),
                        "--data-dir", data, "--sync", "off"],
}


@pytest.mark.parametrize("delay", EARLY)
@pytest.mark.parametrize("server", list(SERVERS))
def test_ctrl_c_while_a_server_starts_exits_0_quietly(tmp_path, server, delay):
    code, stderr = interrupt_after(SERVERS[server](str(tmp_path / "data")), delay, tmp_path, clean_env(), cwd=tmp_path)
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr, stderr


@pytest.mark.parametrize("delay", EARLY[:2])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
@pytest.mark.parametrize("server", ["serve", "up"])
def test_sigterm_or_sighup_while_a_server_starts_exits_0_quietly(tmp_path, server, signum, delay):
    """Only SIGINT was taken over early: SIGTERM or SIGHUP in a server's first tenth of
    a second killed it (143, 129), where the README says it exits 0 (a deploy probe)."""
    code, stderr = interrupt_after(SERVERS[server](str(tmp_path / "data")), delay, tmp_path, clean_env(),
                                   signum=signum, cwd=tmp_path)
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_a_ctrl_c_whose_exit_was_swallowed_still_stops_a_server_as_it_starts(monkeypatch, caplog):
    # The entry point's handler ran, but its SystemExit was raised inside a finalizer
    # (a generator the garbage collector closed), where Python only reports it.
    from kvwire.cli import early_sigint, entry
    from kvwire.cli.signals import run_until_stop_signal

    monkeypatch.setattr(early_sigint, "received", False)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # _exit_on_sigint replaces it
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert entry._exit_on_sigint(0)
        with pytest.raises(SystemExit):
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # swallowed by whatever it ran in

        async def serve(stop):
            await asyncio.wait_for(stop.wait(), timeout=2)  # without the fix: TimeoutError
            return "stopped"

        with caplog.at_level("INFO", logger="test-signals"):
            assert run_until_stop_signal(serve, logging.getLogger("test-signals"), "stopping") == "stopped"
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "received SIGINT; stopping" in caplog.text


def test_an_early_ctrl_c_exits_as_the_command_documents_a_later_one():
    assert [interrupted_status(args) for args in (["serve"], ["bridge", "--listen", ":1"], ["up", "--nodes", "1"])] == [0, 0, 0]
    assert [interrupted_status(args) for args in ([], ["--help"], ["up", "ctl", "status"], ["bench"], ["secret", "f"])] \
        == [130] * 5


def test_a_ctrl_c_whose_exit_python_can_only_report_prints_no_traceback(monkeypatch, capsys):
    # Seen in CI: SIGINT arrived while an import ran an import lock's weakref callback,
    # where the handler's SystemExit cannot propagate; Python printed "Exception
    # ignored in ..." and a traceback, and the node then stopped as it should.
    import weakref

    from kvwire.cli import early_sigint, entry

    class Referent:
        pass

    monkeypatch.setattr(early_sigint, "received", False)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own report
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert entry._exit_on_sigint(0)
        handler = signal.getsignal(signal.SIGINT)
        referent = Referent()
        interrupted_here = weakref.ref(referent, lambda ref: handler(signal.SIGINT, None))
        del referent  # the callback runs the handler: its SystemExit can only be reported
        failing = Referent()
        other_error = weakref.ref(failing, lambda ref: 1 / 0)
        del failing  # any other error in such a callback is still reported
    finally:
        signal.signal(signal.SIGINT, previous)
    assert interrupted_here() is None and other_error() is None and early_sigint.received
    err = capsys.readouterr().err
    assert "SystemExit" not in err, err
    assert "ZeroDivisionError" in err and "Traceback" in err


def test_a_ctrl_c_whose_exit_python_wraps_in_another_error_still_exits_quietly(monkeypatch):
    # Seen in CI: SIGINT during a class definition of an import, and dataclasses'
    # __set_name__ turned the early handler's SystemExit into a RuntimeError: a traceback, exit 1.
    import dataclasses

    from kvwire.cli import early_sigint, entry

    monkeypatch.setattr(early_sigint, "received", False)
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert entry._exit_on_sigint(130)
        handler = signal.getsignal(signal.SIGINT)

        class Interrupting:
            def __set_name__(self, owner, name):
                handler(signal.SIGINT, None)  # as if SIGINT arrived right there

        with pytest.raises(SystemExit) as exited:
            with entry.exit_quietly_once_interrupted(130):
                @dataclasses.dataclass
                class Defined:  # noqa: F841
                    field: object = Interrupting()
        assert exited.value.code == 130 and exited.value.__cause__ is None
        # Without a Ctrl-C, an error is the error.
        monkeypatch.setattr(early_sigint, "received", False)
        with pytest.raises(ZeroDivisionError):
            with entry.exit_quietly_once_interrupted(130):
                1 / 0
    finally:
        signal.signal(signal.SIGINT, previous)


# --- 5. kvwire up refuses what its nodes would, before starting any -----------------------


@pytest.mark.parametrize("args, message", [
    (["stray"], "every node would refuse the arguments passed on to kvwire serve (stray): Got unexpected extra argument (stray)"),
    (["--", "--bogus"], "No such option '--bogus'"),
    (["--", "--write-timeout", "0"], "Invalid value for '--write-timeout'"),
    (["--", "--cache-entries"], "'--cache-entries' requires an argument"),
    # What up sets for each node itself would win, every node the same: refused, with what to use.
    (["--", "--listen", "1.2.3.4:5"], "--listen cannot be passed on to every node: up gives each node its address"),
    (["--", "--data-dir", "shared"], "--data-dir cannot be passed on to every node: use kvwire up --data-dir"),
    (["--", "--sync", "off"], "--sync cannot be passed on to every node: use kvwire up --sync"),
    (["--", "--http-listen", "127.0.0.1:1"], "--http-listen cannot be passed on to every node"),
    (["--", "--join"], "--join cannot be passed on to every node"),
    # Options that do not go together: every node started, each refused them, exit 1 (a deploy probe).
    (["--", "--failure-timeout", "0.1"], "--failure-timeout (0.1 s) must exceed twice --heartbeat-interval"),
    (["--", "--tombstone-grace", "1"], "--tombstone-grace (1.0 s) must be at least four times --write-timeout"),
    (["--", "--max-frame-bytes", "100"], "--max-frame-bytes (100) must be at least"),
    (["--", "--http-allowed-hosts", "kv.example"], "--http-allowed-hosts is for the REST API of --http-listen"),
    # A malformed --host started every node elsewhere or nowhere, and gave up 30 s later (a probe).
    (["--host", ""], "'--host': is empty"),
    (["--host", "[::1"], "unbalanced brackets around the host"),
    (["--host", "127.0.0.1:80"], "give the host alone, without a port"),
    (["--host", "http://127.0.0.1"], "give the host alone, without a scheme"),
    (["--host", "127.0.0.1 "], "holds a space"),
])
def test_up_refuses_bad_node_arguments_before_starting_anything(tmp_path, args, message):
    base = free_port_run(1)
    result = subprocess.run([*KVWIRE_MODULE, "up", "--nodes", "1", "--no-http", "--base-port", str(base),
                             "--data-dir", str(tmp_path / "data"), *args],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing started


# --- 6. inputs without end are read only as far as a value or a token can go ----------------


@pytest.mark.parametrize("as_json", [False, True], ids=["raw", "json"])
def test_a_value_from_dev_zero_is_a_usage_error_naming_it(as_json):
    flags = ["--json"] if as_json else []
    limit = JSON_BYTES_PER_VALUE_BYTE * MAX_VALUE_BYTES if as_json else MAX_VALUE_BYTES
    from_file = run_cli("--endpoints", "127.0.0.1:1", "put", "k", "--value-file", "/dev/zero", *flags)
    assert from_file.returncode == 2
    assert f"Invalid value for '--value-file': '/dev/zero' holds more than {limit} bytes" in from_file.stderr
    with open("/dev/zero", "rb") as zeros:
        result = subprocess.run([*CLI, "--endpoints", "127.0.0.1:1", "put", "k", "-", *flags], stdin=zeros,
                                capture_output=True, text=True, timeout=30, env=clean_env())
    assert result.returncode == 2
    assert f"Invalid value for 'VALUE' (stdin): stdin holds more than {limit} bytes" in result.stderr


def test_the_bound_on_a_value_is_the_largest_frame(shared_node, tmp_path):
    path = tmp_path / "value"
    path.write_bytes(b"x" * MAX_VALUE_BYTES)  # read whole; too large for the node's frames, which it says
    largest = run_cli("--endpoints", shared_node.address, "put", "k", "--value-file", str(path))
    assert largest.returncode == 4 and "too large" in largest.stderr, largest.stderr
    with open(path, "ab") as file:
        file.write(b"x")
    over = run_cli("--endpoints", shared_node.address, "put", "k", "--value-file", str(path))
    assert over.returncode == 2 and f"holds more than {MAX_VALUE_BYTES} bytes" in over.stderr


def test_values_as_large_as_the_nodes_take_with_max_value_bytes(tmp_path):
    """A node given --max-value-bytes above the default frame took values kvwire-cli
    would not read ("the most kvwire-cli reads"); --max-value-bytes, as the node's,
    lets it send them and read them back."""
    value = os.urandom(5 * 1024 * 1024)
    path = tmp_path / "five-mib"
    path.write_bytes(value)
    limit = str(6 * 1024 * 1024)
    with NodeProcess("n1", data_dir=tmp_path / "n1",
                     extra_args=["--sync", "normal", "--max-value-bytes", limit, "--max-frame-bytes", str(8 * 1024 * 1024)]) as node:
        refused = run_cli("--endpoints", node.address, "put", "big", "--value-file", str(path))
        assert refused.returncode == 2 and f"holds more than {MAX_VALUE_BYTES} bytes, the most kvwire-cli reads" \
            in refused.stderr and "raise --max-value-bytes" in refused.stderr, refused.stderr
        stored = run_cli("--endpoints", node.address, "--max-value-bytes", limit, "put", "big", "--value-file", str(path))
        assert stored.returncode == 0, stored.stderr
        read = subprocess.run([*CLI, "--endpoints", node.address, "get", "big", "-o", "json"], capture_output=True,
                              timeout=30, env={**clean_env(), "KVWIRE_MAX_VALUE_BYTES": limit})
        assert read.returncode == 0, read.stderr
        assert base64.b64decode(json.loads(read.stdout)["value"]["$bytes"]) == value


def test_keys_as_long_as_the_nodes_take_with_max_key_bytes(tmp_path):
    key = "k" * 1500
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--sync", "normal", "--max-key-bytes", "2048"]) as node:
        refused = run_cli("--endpoints", node.address, "put", key, "v")
        assert refused.returncode == 2 and "key is 1500 bytes in UTF-8; the limit is 1024" in refused.stderr
        assert run_cli("--endpoints", node.address, "--max-key-bytes", "2048", "put", key, "v").returncode == 0
        read = run_cli("--endpoints", node.address, "get", key, env={"KVWIRE_MAX_KEY_BYTES": "2048"})
        assert read.returncode == 0 and read.stdout == "v\n", read.stderr
        # Past the node's own limit, the node refuses it.
        over = run_cli("--endpoints", node.address, "--max-key-bytes", "4096", "put", "k" * 3000, "v")
        assert over.returncode == 4 and "too large: key is longer than 2048 bytes" in over.stderr, over.stderr


def test_a_token_file_from_dev_zero_is_a_usage_error_naming_it():
    result = run_cli("--token-file", "/dev/zero", "--endpoints", "127.0.0.1:1", "get", "k")
    assert result.returncode == 2
    assert f"Invalid value for '--token-file': /dev/zero is larger than {MAX_TOKEN_FILE_BYTES} bytes" in result.stderr


# --- 7. a token loses the whitespace around it, from a file or KVWIRE_TOKEN --------------------

TOKEN = "cli-edges-token-0123456789abcdef"


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    auth_file = write_auth_file(root, f"writer  write  {TOKEN}\n")
    with NodeProcess("n1", data_dir=root / "n1", extra_args=["--auth-file", auth_file, "--sync", "off"]) as node:
        yield node


@pytest.mark.parametrize("spelled", [TOKEN, f"  {TOKEN}\n", f"\t{TOKEN} \r\n"], ids=["bare", "spaces", "tab-crlf"])
def test_a_token_from_a_file_or_the_environment_is_stripped(auth_node, tmp_path, spelled):
    path = tmp_path / "token"
    path.write_text(spelled)
    from_file = run_cli("--endpoints", auth_node.address, "--token-file", str(path), "put", "t", "v")
    assert from_file.returncode == 0, from_file.stderr
    from_env = run_cli("--endpoints", auth_node.address, "get", "t", env={"KVWIRE_TOKEN": spelled})
    assert (from_env.returncode, from_env.stdout) == (0, "v\n"), from_env.stderr


def test_a_blank_kvwire_token_is_no_token(auth_node):
    result = run_cli("--endpoints", auth_node.address, "get", "t", env={"KVWIRE_TOKEN": " \n"})
    assert result.returncode == 4 and "needs a token" in result.stderr


# --- 8. a VALUE (or KEY) that begins with '-' ------------------------------------------------


def test_a_value_beginning_with_a_dash_goes_after_double_dash(cli, shared_node):
    assert "kvwire-cli put k --json -- -5" in run_cli("put", "--help").stdout
    assert cli("put", "negative", "-5", "--json").returncode == 2  # an option, as --help says
    assert cli("put", "negative", "--json", "--", "-5").returncode == 0
    assert stored(shared_node, "negative") == -5
    assert cli("put", "--", "-dash-key", "-x").returncode == 0
    assert cli("get", "--", "-dash-key").stdout == "-x\n"


@pytest.mark.parametrize("args", [
    ["serve", "--data-dir", ""], ["serve", "--auth-file", ""], ["serve", "--cluster-secret-file", ""],
    ["up", "--data-dir", ""], ["up", "ctl", "status", "--data-dir", ""], ["certs", ""], ["secret", ""],
    ["backup", "", "copy"], ["backup", "n1", ""], ["chaos", "--out", ""], ["chaos", "--out", "  "],
], ids=lambda args: "-".join(arg or "''" for arg in args))
def test_an_empty_path_is_a_usage_error_not_the_current_directory(tmp_path, args):
    """Path('') is '.': `serve --data-dir ''` served from the current directory (mode 755),
    `certs ''` wrote the CA's key there."""
    result = subprocess.run([*KVWIRE_MODULE, *args], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, env=clean_env())
    assert result.returncode == 2, result.stderr
    assert "the path is empty" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- 9. kvwire serve: two listeners on one address ----------------------------------------


@pytest.mark.parametrize("listeners, message", [
    (["--listen", "127.0.0.1:{p}", "--http-listen", "127.0.0.1:{p}"], "--listen and --http-listen must differ: both are 127.0.0.1:{p}"),
    (["--listen", "127.0.0.1:{p}", "--metrics-listen", "127.0.0.1:{p}"], "--listen and --metrics-listen must differ"),
    (["--listen", "127.0.0.1:{q}", "--http-listen", "127.0.0.1:{p}", "--metrics-listen", "127.0.0.1:{p}"],
     "--http-listen and --metrics-listen must differ"),
    (["--listen", "0.0.0.0:{p}", "--http-listen", "127.0.0.1:{p}"], "overlap"),
    # The same address spelled otherwise got past the check, then failed to bind (exit 1).
    (["--listen", "127.0.0.1:{p}", "--http-listen", "localhost:{p}"], "127.0.0.1:{p} and localhost:{p} are the same address"),
    (["--listen", "127.0.0.1:{p}", "--metrics-listen", "127.1:{p}"], "127.0.0.1:{p} and 127.1:{p} are the same address"),
    (["--listen", "[::1]:{p}", "--http-listen", "[0:0:0:0:0:0:0:1]:{p}"], "are the same address"),
])
def test_serve_refuses_two_listeners_on_one_address_before_binding(tmp_path, listeners, message):
    p, q = free_port(), free_port()
    args = [arg.format(p=p, q=q) for arg in listeners]
    result = subprocess.run([*KVWIRE_MODULE, "serve", "--data-dir", str(tmp_path / "n1"), *args],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=clean_env())
    assert result.returncode == 2, result.stderr
    assert message.format(p=p) in result.stderr and "already in use" not in result.stderr
    assert not (tmp_path / "n1").exists()


@pytest.mark.parametrize("closed", [(1,), (1, 2), (0, 1, 2)], ids=["stdout", "stdout-stderr", "all-three"])
def test_kvwire_with_standard_fds_closed_fails_plainly_not_with_a_uvloop_abort(closed):
    """A socket numbered 0-2 made uvloop abort on closing it (libuv asserts fd > 2): `kvwire bench >&-`
    against a refused endpoint died of SIGABRT. The entry point now opens /dev/null on a closed one."""
    refused = f"127.0.0.1:{free_port()}"

    def close_them() -> None:
        for fd in closed:
            os.close(fd)

    result = subprocess.run([*KVWIRE_SCRIPT, "bench", "--endpoints", refused, "--connections", "1", "--duration", "1",
                             "--warmup", "0", "--keys", "10"], preexec_fn=close_them, timeout=60)
    assert result.returncode == 1
