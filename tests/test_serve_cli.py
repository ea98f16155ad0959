"""``kvwire serve`` as a user runs it: options, environment variables, bad arguments, stop signals."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvwire.protocol import Hello
from kvwire.testing import NodeProcess, RawConnection, accepts_connections, free_port, wait_for


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
        # "$" matched before a final newline; ".." as a data directory name is its parent.
        (["--node-id", "n1\n"], "node id 'n1\\n' must be"),
        (["--node-id", ".."], "node id '..' must be"),
        (["--cluster-id", "kv\n"], "cluster id 'kv\\n' must be"),
        (["--sync", "always"], "'always' is not one of"),
        (["--max-value-bytes", "0"], "0 is not in the range"),
        (["--max-frame-bytes", "2000", "--max-value-bytes", "1000"], "--max-frame-bytes (2000) must be at least"),
        (["--cache-entries", "lots"], "'lots' is not a valid integer"),
        (["--heartbeat-interval", "1e-6"], "--heartbeat-interval (1e-06 s) must be at least 0.01 s"),
        (["--listen", "a..b:24240"], "'a..b' is not a host name"),  # was a CRITICAL traceback, exit 1
        (["--http-listen", "a..b:24241"], "'a..b' is not a host name"),
        (["--cluster", "n1=127.0.0.1:24240,n2=a..b:24246"], "'a..b' is not a host name"),  # the link died silently
        # A probe (2026-12-07): accepted, each broke something only later.
        # Anti-entropy's rounds all failed, unlogged; a node restarted after a kill never joined.
        (["--cluster", "n1=127.0.0.1:24240,n2=127.0.0.1:24246", "--insecure", "--max-key-bytes", "16",
          "--max-value-bytes", "64", "--max-frame-bytes", "1104"],
         "--max-frame-bytes (1104) must be at least 113024 in a cluster with --max-key-bytes 16"),
        # Peer links count in it: every client was refused while the peers saw the node UP.
        (["--cluster", "n1=127.0.0.1:24240,n2=127.0.0.1:24246,n3=127.0.0.1:24247", "--insecure",
          "--max-connections", "2"], "--max-connections (2) must exceed the 2 links its peers open to it"),
        # Every HEALTH failed to encode, and its connection closed.
        (["--retry-attempts", "18446744073709551616"], "--retry-attempts must be from 0 to 1000"),
        (["--failure-timeout", "1e21", "--heartbeat-interval", "1e20"], "must be a positive, finite number of seconds, at most 1,000,000,000"),
        (["--disk-stall-timeout", "0"], "Invalid value for '--disk-stall-timeout'"),
        (["--scrub-rate", "-1"], "Invalid value for '--scrub-rate'"),
        (["--scrub-rate", "1000001"], "--scrub-rate must be an integer from 0 (off) to 1000000"),
        (["--disk-stall-timeout", "0.01"], "--disk-stall-timeout (0.01 s) must be at least 0.1 s"),
        (["--disk-stall-timeout", "inf"], "--disk-stall-timeout must be a positive, finite number of seconds"),
        # No handshake could pass: HELLO_REPLY's member list holds at most 255.
        (["--insecure", "--cluster", ",".join(f"n{i}=127.0.0.1:{20000 + i}" for i in range(1, 257))],
         "--cluster names 256 members; a cluster has at most 255"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_and_no_traceback(tmp_path, args, message):
    result = run_serve("--data-dir", str(tmp_path / "d"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command, env, message", [
    (["serve"], {"KVWIRE_FAILURE_TIMEOUT": "0.2"},
     "--failure-timeout (0.2 s) must exceed twice --heartbeat-interval (0.1 s)"),
    (["serve"], {"KVWIRE_NODE_ID": "a/b", "KVWIRE_LOG_LEVEL": "warning"}, "node id 'a/b' must be"),
    (["bridge"], {"KVWIRE_MAX_VALUE_BYTES": "5000000000"}, "must fit the 4-byte length prefix"),
])
def test_a_setting_refused_from_the_environment_names_the_variables_and_options(tmp_path, command, env, message):
    """The checks' own messages named Python fields (failure_timeout) and no variable: with
    an environment file, which line was wrong had to be guessed."""
    result = subprocess.run([sys.executable, "-m", "kvwire", *command], capture_output=True, text=True, timeout=30,
                            cwd=tmp_path, stdin=subprocess.DEVNULL,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("KVWIRE_")}, **env})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert f"(settings from the environment: {', '.join(env)})" in result.stderr


@pytest.mark.parametrize("command, option, variable, value", [
    (["kvwire", "serve"], "--failure-timeout", "KVWIRE_FAILURE_TIMEOUT", "abc"),
    (["kvwire", "bridge"], "--max-value-bytes", "KVWIRE_MAX_VALUE_BYTES", "lots"),
    (["kvwire-cli", "get", "k"], "--endpoints", "KVWIRE_ENDPOINTS", "nonsense"),
    (["kvwire-cli", "get", "k"], "--timeout", "KVWIRE_TIMEOUT", "-1"),
])
def test_a_value_refused_names_its_variable_only_when_it_came_from_it(tmp_path, command, option, variable, value):
    """click named the variable of every option refused, set or not: people went looking
    for the faulty line of an environment file that had none."""
    program, *args = command
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KVWIRE_")}

    def run(arguments, env):
        return subprocess.run([str(Path(sys.executable).with_name(program)), *arguments], capture_output=True,
                              text=True, timeout=30, cwd=tmp_path, stdin=subprocess.DEVNULL, env=env)

    # kvwire's options follow their command; kvwire-cli's come before it.
    given = run([*args[:1], option, value, *args[1:]] if program == "kvwire" else [option, value, *args], clean)
    assert given.returncode == 2 and f"Invalid value for '{option}'" in given.stderr, given.stderr
    assert variable not in given.stderr and "Traceback" not in given.stderr
    from_environment = run(args, {**clean, variable: value})
    assert from_environment.returncode == 2, from_environment.stderr
    assert f"Invalid value for '{option}' (settings from the environment: {variable})" in from_environment.stderr


@pytest.mark.parametrize("command, env, expected", [
    # Checked with the other settings, a bad address named no option, and blamed every variable set.
    (["serve", "--listen", "127.0.0.1:1", "--http-listen", "abc"], {},
     "Error: Invalid value for '--http-listen': 'abc' is not HOST:PORT"),
    (["serve", "--listen", "127.0.0.1:1", "--metrics-listen", "abc"], {"KVWIRE_LOG_LEVEL": "debug"},
     "Error: Invalid value for '--metrics-listen': 'abc' is not HOST:PORT"),
    (["bridge", "--listen", "abc"], {"KVWIRE_ENDPOINTS": "127.0.0.1:1"},
     "Error: Invalid value for '--listen': 'abc' is not HOST:PORT"),
    (["bridge"], {"KVWIRE_ENDPOINTS": "127.0.0.1:1,b"},
     "Error: Invalid value for '--endpoints' (settings from the environment: KVWIRE_ENDPOINTS): invalid endpoint: 'b'"),
    # A refusal naming its option names only that option's variable, not KVWIRE_LOG_LEVEL.
    (["bridge", "--tls-ca", "/nonexistent"], {"KVWIRE_LOG_LEVEL": "debug"}, "Error: --tls-ca /nonexistent: no such file"),
])
def test_a_refused_address_or_file_names_its_option_and_no_unrelated_variable(tmp_path, command, env, expected):
    """A CLI probe's finding: 'abc' is not HOST:PORT, for which of three options?, and
    '(settings from the environment: KVWIRE_LOG_LEVEL)' after a bad --tls-ca."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KVWIRE_")}
    result = subprocess.run([sys.executable, "-m", "kvwire", *command], capture_output=True, text=True, timeout=30,
                            cwd=tmp_path, stdin=subprocess.DEVNULL, env={**clean, **env})
    assert result.returncode == 2, result.stderr
    [last] = result.stderr.splitlines()[-1:]
    assert last.startswith(expected), last
    assert "KVWIRE_LOG_LEVEL" not in last and "Traceback" not in result.stderr


def test_a_refusal_keeps_the_users_paths_and_values_as_given(tmp_path):
    """Field names became options everywhere in the message: a file named tls_cert.pem
    was shown as --tls-cert.pem, a node id 'a node_id' as 'a --node-id'."""
    bad_pem = tmp_path / "tls_cert.pem"
    bad_pem.write_text("not a certificate")
    result = subprocess.run([sys.executable, "-m", "kvwire", "bridge", "--tls-cert", str(bad_pem), "--tls-key",
                             str(bad_pem)], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and f"{bad_pem}: not a PEM certificate" in result.stderr, result.stderr
    result = run_serve("--data-dir", str(tmp_path / "d"), "--node-id", "a node_id")
    assert result.returncode == 2 and "node id 'a node_id' must be" in result.stderr, result.stderr


def test_usage_error_renames_fields_only_as_words_of_the_message():
    import click

    from kvwire.cli.options import usage_error

    @click.command()
    @click.option("--failure-timeout")
    @click.option("--heartbeat-interval")
    @click.option("--tls-cert")
    def command(**_):
        rewritten.extend(usage_error(message).message for message, _ in cases)

    cases = [
        # Apostrophes are no quotes; a sentence's full stop and "=" end a word.
        ("the node's failure_timeout must exceed its peers' heartbeat_interval",
         "the node's --failure-timeout must exceed its peers' --heartbeat-interval"),
        ("must exceed twice heartbeat_interval.", "must exceed twice --heartbeat-interval."),
        ("failure_timeout=3 is wrong", "--failure-timeout=3 is wrong"),
        # The user's own: a path and a quoted value stay as given.
        ("--tls-cert /tmp/tls_cert.pem: bad", "--tls-cert /tmp/tls_cert.pem: bad"),
        ("node id 'a failure_timeout' x", "node id 'a failure_timeout' x"),
    ]
    rewritten: list[str] = []
    command([], standalone_mode=False)
    assert rewritten == [expected for _, expected in cases]


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
                   "--max-inflight-bytes", "--cache-entries", "--log-level"]:
        assert option in result.stdout
        assert "KVWIRE_" + option[2:].upper().replace("-", "_") in result.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
@pytest.mark.parametrize("with_bridge, listen", [(False, None), (True, "--http-listen"), (False, "--metrics-listen")],
                         ids=["node", "node-and-bridge", "node-and-metrics"])
def test_a_stop_signal_shuts_down_cleanly_and_exits_0(tmp_path, signum, with_bridge, listen):
    # The CLI owns the process's signals (kvwire/cli/signals.py); the node and
    # the bridge only see their stop event set. --metrics-listen alone runs no bridge,
    # and its stop said it stopped one.
    http_port = free_port()
    extra = ["--sync", "off", *([listen, f"127.0.0.1:{http_port}"] if listen else [])]
    node = NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=extra)
    with node:
        if listen:
            wait_for(lambda: accepts_connections(f"127.0.0.1:{http_port}", timeout=1), timeout=15, what="the node's HTTP port")
        assert node.signal_and_wait(signum) == 0
    log = node.log()
    doing = "stopping the HTTP bridge, then finishing" if with_bridge else "finishing"
    assert f"received {signal.Signals(signum).name}; {doing} requests in flight" in log, log
    assert "storage flushed and closed; bye" in log and "Traceback" not in log
    assert ("HTTP bridge on 127.0.0.1" in log) == with_bridge


def test_serve_loads_none_of_the_other_commands_and_each_loads_when_asked():
    # Every node start pays for what `kvwire serve` imports; the load generator,
    # the test cluster and `up` come in only with their own commands (cli.lazy).
    code = (
        "import sys\n"
        "from kvwire.cli.main import main\n"
        "def run(*args):\n"
        "    try:\n"
        "        main([*args, '--help'], standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "run('serve')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('kvwire.bench', 'kvwire.testing', 'kvwire.chaos', 'kvwire.cli.up')))\n"
        "assert not loaded, loaded\n"
        "for name in ('up', 'bridge', 'bench', 'chaos', 'certs', 'backup'):\n"
        "    run(name)\n"
        "    assert f'kvwire.cli.{name}' in sys.modules, name\n"
        "assert 'kvwire.bench.command' in sys.modules\n"
    )
    passes_in_a_fresh_interpreter(code)
    listed = subprocess.run([sys.executable, "-m", "kvwire", "--help"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    commands = [line.split()[0] for line in listed.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert commands == ["backup", "bench", "bridge", "certs", "chaos", "secret", "serve", "up"]


def test_serve_and_the_bridge_options_load_no_aiohttp():
    # `kvwire serve` without --http-listen never loads aiohttp, though the CLI
    # reads the bridge's defaults from kvwire.http_bridge.
    code = (
        "import sys, kvwire.cli.main\n"
        "from kvwire.http_bridge import DEFAULT_MAX_BODY_BYTES, BridgeConfig\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp loaded'\n"
        "from kvwire.http_bridge import serve_bridge\n"
        "assert 'aiohttp' in sys.modules, 'the lazy import did not load the server'\n"
    )
    passes_in_a_fresh_interpreter(code)


def passes_in_a_fresh_interpreter(code: str) -> None:
    """Run ``code`` in a new Python process (so sys.modules starts empty); its asserts must hold."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("listen_host, warned", [("127.0.0.1", True), ("127.0.0.2", False), ("0.0.0.0", False)])
def test_a_node_listening_elsewhere_than_its_own_cluster_entry_warns(tmp_path, listen_host, warned):
    """A --cluster copied without --listen: the node listened on 127.0.0.1:7379, its
    peers dialled the address its entry gives, and nothing said why they never met."""
    port, peer_port = free_port(listen_host), free_port()  # free where the node binds it
    args = ["--cluster", f"n1=127.0.0.2:{port},n2=127.0.0.1:{peer_port}", "--insecure"]
    with NodeProcess("n1", data_dir=tmp_path / "n1", host=listen_host, port=port, extra_args=args) as node:
        wait_for(lambda: "listening on" in node.log(), timeout=10, what="the node listening")
        log = node.log()
    assert ("but its own --cluster entry says its peers reach it at 127.0.0.2:" in log) == warned, log


def test_a_node_started_with_stderr_closed_serves(tmp_path):
    """``kvwire serve ... 2>&-`` (a supervisor that closes fd 2): faulthandler, which
    leaves the stacks on stderr at a fatal signal, found no stderr and the node
    exited 1 at start without a word (a reviewer's finding)."""
    from kvwire.protocol import Ping, Pong

    port = free_port("127.0.0.1")
    command = [sys.executable, "-m", "kvwire", "serve", "--node-id", "n1", "--listen", f"127.0.0.1:{port}",
               "--data-dir", str(tmp_path / "n1"), "--sync", "off"]
    process = subprocess.Popen(["sh", "-c", 'exec "$@" 2>&-', "sh", *command], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: process.poll() is not None or accepts_connections(f"127.0.0.1:{port}"), timeout=15,
                 what="the node listening")
        assert process.poll() is None, f"exited {process.returncode}"
        with RawConnection(f"127.0.0.1:{port}") as connection:
            assert isinstance(connection.request(Ping(1)), Pong)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
