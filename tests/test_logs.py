"""``--log-format text|json``: one line per event, fields as key=value or JSON keys (issue 12, part 4).

Real ``kvwire serve``/``bridge``/``up`` processes, and the formatters on made-up records.
"""

from __future__ import annotations

import io
import json
import os
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvwire import Client, NoQuorumError
from kvwire.cli.logformat import ContextFilter, JsonFormatter, TextFormatter, make_handler, timestamp
from kvwire.testing import LocalCluster, NodeProcess, free_port, free_port_run, stop_gracefully, wait_for
from kvwire.testing.bridge import BridgeProcess

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_LINE = re.compile(rf"^({TS}) ({'|'.join(LEVELS)}) ([\w.\-]+): (.*)$")
# One logfmt field: a bare value, or a double-quoted one with backslash escapes.
FIELD = re.compile(r'(?:^| )([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|[^\s"=]*)(?= |$)')


def logfmt_fields(line: str) -> dict[str, str]:
    """The key=value fields of a text line, unquoted (an independent reading of the format)."""
    fields = {}
    for key, raw in FIELD.findall(line):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], m[1]), raw[1:-1])
        fields[key] = raw
    return fields


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        response.read()
        return response.status


def run_kvwire(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "kvwire", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def stderr_lines(process) -> list[str]:
    text = process.log()
    assert text.endswith("\n"), f"the log does not end with a whole line: {text[-200:]!r}"
    return text.splitlines()


def serve_and_stop(tmp_path, args, env=None) -> list[str]:
    """A node with its bridge at debug level, one REST request (an access-log line), SIGTERM; its stderr lines."""
    http_port = free_port()
    node = NodeProcess("n1", data_dir=tmp_path / "n1", env=env,
                       extra_args=["--sync", "off", "--log-level", "debug", "--http-listen", f"127.0.0.1:{http_port}", *args])
    with node:
        url = f"http://127.0.0.1:{http_port}/kv-store/v1/health/"
        wait_for(lambda: _answers(url), timeout=15, what="the node's bridge")
        wait_for(lambda: "first_request_line" in node.log(), timeout=10, what="the access-log line")
        assert node.terminate() == 0
    return stderr_lines(node)


def _answers(url: str) -> bool:
    try:
        return get(url) == 200
    except OSError:
        return False


# --- real processes -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["option", "environment"])
def test_json_every_stderr_line_is_an_object_carrying_the_node(tmp_path, how):
    if how == "option":
        lines = serve_and_stop(tmp_path, ["--log-format", "json"])
    else:
        lines = serve_and_stop(tmp_path, [], env={"KVWIRE_LOG_FORMAT": "json"})
    records = []
    for line in lines:
        record = json.loads(line)  # every line, no exception
        assert isinstance(record, dict), line
        assert record["node"] == "n1", line
        assert re.fullmatch(TS, record["ts"]) and record["level"] in LEVELS, line
        assert record["logger"] and isinstance(record["msg"], str), line
        records.append(record)
    messages = [record["msg"] for record in records]
    assert any("listening on" in message for message in messages), messages
    assert any("storage flushed and closed; bye" in message for message in messages), messages
    access = [record for record in records if record["logger"] == "kvwire.http.access"]
    assert access and access[0]["first_request_line"] == "GET /kv-store/v1/health/ HTTP/1.1", access
    assert access[0]["response_status"] == 200  # a number stays a number


def test_text_lines_have_the_shape_and_quote_a_field_with_a_space(tmp_path):
    lines = serve_and_stop(tmp_path, ["--log-format", "text"])
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match, f"not TIME LEVEL LOGGER: message: {line!r}"
        assert logfmt_fields(line).get("node") == "n1", line
    assert any(line.endswith("storage flushed and closed; bye node=n1") for line in lines), lines
    access = [line for line in lines if TEXT_LINE.match(line)[3] == "kvwire.http.access"]
    assert access, lines
    assert ' first_request_line="GET /kv-store/v1/health/ HTTP/1.1"' in access[0]
    assert logfmt_fields(access[0])["first_request_line"] == "GET /kv-store/v1/health/ HTTP/1.1"


def test_text_is_the_default(tmp_path):
    lines = serve_and_stop(tmp_path, [])
    assert all(TEXT_LINE.match(line) for line in lines), lines


def test_a_standalone_bridge_tags_its_lines_with_its_address(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    bridge = BridgeProcess([dead], log_path=tmp_path / "bridge.log", args=["--log-format", "json"])
    with bridge:
        assert bridge.signal(signal.SIGTERM) == 0
    records = [json.loads(line) for line in stderr_lines(bridge)]
    assert len(records) >= 3, records  # listening, received SIGTERM, stopped
    assert all(record["bridge"] == f"127.0.0.1:{bridge.port}" for record in records), records
    assert all("node" not in record for record in records), records


def test_a_peer_going_down_is_one_line_with_the_peer(tmp_path):
    with LocalCluster(2, data_dir=tmp_path, heartbeat_interval=0.1, failure_timeout=0.5, write_timeout=1.0,
                      node_args=["--sync", "off", "--log-format", "json"]) as cluster:
        n1 = cluster["n1"]
        before = len(stderr_lines(n1))
        cluster.kill("n2")
        cluster.wait_peers("n1", down=["n2"], timeout=5)
        # n1 goes on running with n2 DOWN for a write timeout (two failure timeouts) before NO_QUORUM:
        # a DOWN logged again on every missed heartbeat or reconnection attempt would show.
        with Client([n1.address], timeout=5.0) as client, pytest.raises(NoQuorumError):
            client.put("needs-n2", 1)
        cluster.start("n2").wait_ready("n2")

        def up_again() -> list[dict]:
            return [r for r in map(json.loads, stderr_lines(n1)[before:]) if _about_n2(r) and " UP" in r["msg"]]

        wait_for(up_again, timeout=10, what="n1 logging n2 UP again")
        records = [json.loads(line) for line in stderr_lines(n1)[before:]]
    down = [record for record in records if _about_n2(record) and "DOWN" in record["msg"]]
    assert len(down) == 1, down
    assert logging.getLevelName(down[0]["level"]) >= logging.INFO
    assert down[0]["node"] == "n1"
    assert down[0].get("peer") == "n2", f"the DOWN line has no peer field: {down[0]}"
    up = [r for r in records if _about_n2(r) and " UP" in r["msg"]]
    assert len(up) == 1, up
    assert records.index(down[0]) < records.index(up[0])


def _about_n2(record: dict) -> bool:
    return record.get("peer") == "n2" or re.search(r"\bn2\b", record["msg"]) is not None


def test_up_passes_the_format_to_its_nodes_and_keeps_its_prefix(tmp_path):
    base = free_port_run(1)
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        up = subprocess.Popen(
            [sys.executable, "-m", "kvwire", "up", "--nodes", "1", "--no-http", "--base-port", str(base),
             "--data-dir", str(tmp_path / "data"), "--sync", "off", "--", "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        )
    try:
        def answers() -> bool:
            assert up.poll() is None, err.read_text()
            return "every node answers" in out.read_text()

        wait_for(answers, timeout=30, what="kvwire up ready")
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0, err.read_text()
    finally:
        stop_gracefully(up)
    node_lines = [line for line in err.read_text().splitlines() if not line.startswith("kvwire up:")]
    assert len(node_lines) >= 3, err.read_text()
    for line in node_lines:
        prefix, _, rest = line.partition(" | ")
        assert prefix == "n1", line
        assert json.loads(rest)["node"] == "n1", line


@pytest.mark.parametrize("command", ["serve", "bridge"])
@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_bad_log_format_exits_2_with_one_error_line(command, how):
    env = {name: value for name, value in os.environ.items() if not name.startswith("KVWIRE_")}
    if how == "option":
        result = run_kvwire(command, "--log-format", "xml", env=env)
    else:
        result = run_kvwire(command, env={**env, "KVWIRE_LOG_FORMAT": "xml"})
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "--log-format" in errors[0] and "'xml' is not one of 'text', 'json'" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_names_the_option_and_its_variable():
    for command in ("serve", "bridge"):
        result = run_kvwire(command, "--help")
        assert "--log-format [text|json]" in result.stdout and "KVWIRE_LOG_FORMAT" in result.stdout


# --- the formatters on made-up records ----------------------------------------------------------


def record(msg="event", *args, level_=logging.INFO, exc_info_=None, **extra) -> logging.LogRecord:
    logger = logging.getLogger("kvwire.test")
    return logger.makeRecord(logger.name, level_, __file__, 1, msg, args, exc_info_, extra=extra or None)


TRICKY = {
    "plain": "n2",
    "space": "two words",
    "equals": "a=b",
    "quote": 'say "hi"',
    "backslash": "C:\\dir\\",
    "newline": "line one\nline two\r\tend",
    "empty": "",
    "control": "bell\x07",
}


def test_text_quotes_and_escapes_values_so_they_read_back():
    line = TextFormatter().format(record("peer %s DOWN", "n2", **TRICKY))
    assert "\n" not in line and "\r" not in line
    assert TEXT_LINE.match(line)[4].startswith("peer n2 DOWN plain=n2 space=")
    assert " plain=n2 " in line and ' space="two words"' in line and ' equals="a=b"' in line
    assert r' quote="say \"hi\""' in line and r' backslash="C:\\dir\\"' in line
    assert r' newline="line one\nline two\r\tend"' in line and ' empty=""' in line
    fields = logfmt_fields(line)
    for key, value in TRICKY.items():
        if key != "control":
            assert fields[key] == value, key
    assert "\x07" not in line and r"\u0007" in line


def test_text_renders_numbers_booleans_none_and_nested_fields():
    line = TextFormatter().format(record(op="put", duration_ms=1.25, attempts=3, ok=True, hinted=False, why=None,
                                         headers={"User-Agent": "curl 8"}))
    assert line.endswith(' op=put duration_ms=1.25 attempts=3 ok=true hinted=false why=null headers.User-Agent="curl 8"')


def test_text_puts_the_context_first_and_skips_private_attributes():
    rec = record(peer="n2", _internal="hidden")
    ContextFilter(node="n1").filter(rec)
    line = TextFormatter().format(rec)
    assert line.endswith(" event node=n1 peer=n2"), line


def test_a_message_with_newlines_stays_one_line():
    line = TextFormatter().format(record("first\nsecond"))
    assert "\n" not in line and line.endswith(r"first\nsecond")
    assert json.loads(JsonFormatter().format(record("first\nsecond")))["msg"] == "first\nsecond"


def _failing_record(**extra) -> logging.LogRecord:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        return record("it failed", level_=logging.ERROR, exc_info_=sys.exc_info(), **extra)


def test_an_exception_is_one_exc_field():
    line = TextFormatter().format(_failing_record(peer="n3"))
    assert "\n" not in line
    exc = logfmt_fields(line)["exc"]
    assert exc.startswith("Traceback (most recent call last):") and exc.endswith("ValueError: boom\nsecond line")
    assert logfmt_fields(line)["peer"] == "n3"
    payload = JsonFormatter().format(_failing_record())
    assert "\n" not in payload
    assert json.loads(payload)["exc"].endswith("ValueError: boom\nsecond line")


def test_json_has_the_core_keys_and_every_field():
    class Opaque:
        def __str__(self):
            return "opaque!"

    payload = JsonFormatter().format(record(
        "write %s", "k", peer="n2", duration_ms=1.5, ok=True, none=None, items=(1, "two"), nested={"a": float("nan")},
        thing=Opaque(), level="mine", ts="mine too", text="ünïcode",
    ))
    assert "\n" not in payload and payload.isascii()
    line = json.loads(payload)
    assert list(line)[:4] == ["ts", "level", "logger", "msg"]
    assert re.fullmatch(TS, line["ts"]) and line["level"] == "INFO" and line["logger"] == "kvwire.test"
    assert line["msg"] == "write k"
    assert line["peer"] == "n2" and line["duration_ms"] == 1.5 and line["ok"] is True and line["none"] is None
    assert line["items"] == [1, "two"] and line["nested"] == {"a": "nan"} and line["thing"] == "opaque!"
    assert line["field_level"] == "mine" and line["field_ts"] == "mine too" and line["text"] == "ünïcode"
    assert "exc" not in line


def test_a_broken_log_call_is_still_one_line():
    line = TextFormatter().format(record("%s and %s", "only one"))
    assert "\n" not in line and "unformattable log message" in line


def test_the_timestamp_is_utc_with_milliseconds():
    assert timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert timestamp(1700000000.9999) == "2023-11-14T22:13:20.999Z"


def test_the_handler_tags_records_of_every_logger():
    stream = io.StringIO()
    handler = make_handler("json", stream=stream, context={"node": "n7"})
    other = logging.getLogger("aiohttp.test-logs")
    other.addHandler(handler)
    other.propagate = False
    try:
        other.warning("from a library", extra={"node": "kept"})
        other.warning("plain")
    finally:
        other.removeHandler(handler)
        other.propagate = True
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["node"] == "kept" and second["node"] == "n7"


def test_an_extra_named_like_a_reserved_key_is_renamed_not_lost():
    rec = _failing_record(exc="mine")
    text = logfmt_fields(TextFormatter().format(rec))
    assert text["field_exc"] == "mine" and text["exc"].startswith("Traceback")
    line = json.loads(JsonFormatter().format(rec))
    assert line["field_exc"] == "mine" and line["exc"].startswith("Traceback")


def test_hinting_and_quorum_transitions_are_logged_once_each(tmp_path):
    with LocalCluster(3, data_dir=tmp_path, heartbeat_interval=0.1, failure_timeout=0.5,
                      node_args=["--sync", "off", "--log-format", "json"]) as cluster:
        n1 = cluster["n1"]
        before = len(stderr_lines(n1))

        def events() -> list[dict]:
            return [r for r in map(json.loads, stderr_lines(n1)[before:]) if "event" in r]

        def named(name: str) -> list[dict]:
            return [r for r in events() if r["event"] == name]

        cluster.kill("n3")
        cluster.wait_peers("n1", down=["n3"], timeout=5)
        with Client([n1.address], timeout=5.0) as client:
            for i in range(5):
                client.put(f"missed-{i}", i)  # n3 misses all five: one hinting line, not five
        cluster.start("n3").wait_ready("n3")
        wait_for(lambda: named("hints_delivered"), timeout=10, what="n1 logging n3's hints delivered")
        cluster.kill("n2")
        cluster.kill("n3")
        wait_for(lambda: named("quorum_lost"), timeout=5, what="n1 logging its quorum lost")
        # Killed, n2 catches up from every peer before it votes again: with n3 down it
        # cannot, and n1 says so, and that its quorum is still lost, not back for a heartbeat.
        cluster.start("n2")
        wait_for(lambda: named("peer_joining"), timeout=10, what="n1 logging n2 joining")
        cluster.start("n3")
        wait_for(lambda: named("quorum_available"), timeout=20, what="n1 logging its quorum back")
        records = events()
    started, stopped = named_in(records, "hinting_started"), named_in(records, "hints_delivered")
    assert [r["peer"] for r in started] == ["n3"], started
    assert [r["peer"] for r in stopped] == ["n3"], stopped
    assert "(5 since this node started)" in stopped[0]["msg"]
    lost = named_in(records, "quorum_lost")
    assert len(lost) == 1 and logging.getLevelName(lost[0]["level"]) == logging.ERROR, lost
    assert len(named_in(records, "quorum_available")) == 1
    assert records.index(started[0]) < records.index(stopped[0]) < records.index(lost[0])
    # n3, killed and restarted at first, and n2 after the loss: each caught up before it voted.
    joining = [(r["peer"], records.index(r) > records.index(lost[0])) for r in named_in(records, "peer_joining")]
    assert ("n3", False) in joining and ("n2", True) in joining, joining


def named_in(records: list[dict], name: str) -> list[dict]:
    return [r for r in records if r["event"] == name]


def test_a_stalled_event_loop_and_a_slow_commit_each_say_how_long(tmp_path):
    """A node that answers nothing for a while says why: its loop was held, or its disk was slow."""
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=["--log-format", "json", "--sync", "full"]) as node:

        def events(name: str) -> list[dict]:
            return [r for r in map(json.loads, stderr_lines(node)) if r.get("event") == name]

        # The loop held: SIGSTOP for 0.6 s (the stall's length is the fault under test).
        node.pause()
        time.sleep(0.6)
        node.resume()
        stalls = wait_for(lambda: events("loop_stalled"), timeout=5, what="the stall logged")
        assert max(r["late_ms"] for r in stalls) >= 400, stalls
        assert all(f"ran {r['late_ms']} ms late" in r["msg"] for r in stalls), stalls  # one figure, not two
        assert all(logging.getLevelName(r["level"]) == logging.WARNING for r in stalls)
        assert not events("slow_commit")

        # The disk slow: another connection holds SQLite's write lock for 0.7 s while a PUT waits on it.
        db = sqlite3.connect(tmp_path / "n1" / "kvwire.sqlite3", timeout=5, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            with Client([node.address], timeout=5.0) as client, ThreadPoolExecutor(1) as pool:
                put = pool.submit(client.put, "waits-for-the-disk", 1)
                time.sleep(0.7)
                assert not put.done()  # the commit is waiting on the lock, not failed
                db.execute("ROLLBACK")
                assert put.result(timeout=5).counter == 1
        finally:
            db.close()
        (slow,) = wait_for(lambda: events("slow_commit"), timeout=5, what="the slow commit logged")
        assert slow["commit_ms"] >= 500 and slow["writes"] == 1, slow
        assert f"took {slow['commit_ms']} ms" in slow["msg"], slow
        assert logging.getLevelName(slow["level"]) == logging.WARNING


def test_a_fatal_signal_leaves_the_python_stacks_in_the_log(tmp_path):
    """A storage probe made SQLite's mapped -shm file unwritable (chattr +i): the next
    PUT ended the node with SIGBUS and not one line. faulthandler writes the stacks
    to stderr, where the log goes, before the process dies of the signal."""
    node = NodeProcess("n1", data_dir=tmp_path / "n1")
    with node:
        status = node.signal_and_wait(signal.SIGBUS)
    assert status == -signal.SIGBUS
    log = node.log()
    assert "Fatal Python error: Bus error" in log and "Current thread" in log


def test_a_node_that_reaches_no_peer_says_so_once(tmp_path):
    """Peers start DOWN and only changes were logged: a node whose --cluster named
    addresses where nothing runs said nothing after its listening line (an
    observability probe's finding). It now warns once, naming the peers."""
    from kvwire.server.node import NO_QUORUM_AT_START_WARNING_S
    from kvwire.testing.cluster import new_secret_file

    port, gone2, gone3 = free_port(), free_port("127.0.0.2"), free_port("127.0.0.3")
    members = f"n1=127.0.0.1:{port},n2=127.0.0.2:{gone2},n3=127.0.0.3:{gone3}"
    node = NodeProcess("n1", data_dir=tmp_path / "n1", port=port, extra_args=[
        "--cluster", members, "--cluster-secret-file", new_secret_file(str(tmp_path)), "--sync", "off"])
    started = time.monotonic()
    with node:
        wait_for(lambda: "event=no_quorum_at_start" in node.log(), timeout=NO_QUORUM_AT_START_WARNING_S + 10,
                 what="the warning")
        assert time.monotonic() - started >= NO_QUORUM_AT_START_WARNING_S - 0.5
        [line] = [line for line in node.log().splitlines() if "event=no_quorum_at_start" in line]
        assert f"n2=127.0.0.2:{gone2}, n3=127.0.0.3:{gone3}" in line and "1 of 3 nodes UP, 2 needed" in line


def test_a_peer_rejoining_under_writes_is_not_said_to_miss_them(tmp_path):
    """A joining peer applies the writes it is sent, but its answers count for no
    majority, so each is hinted and delivered at once: its peers logged "hinting peer
    n3: it missed a write" and "stopped: every hint delivered" in pairs, nine in 0.4 s,
    while it rejoined (an observability probe's finding). Only its downtime is said."""
    import threading

    stop_writing = threading.Event()
    written = []

    with LocalCluster(3, data_dir=tmp_path, sync="off") as cluster:
        def write() -> None:
            with Client(cluster.endpoints_of("n1"), timeout=5) as client:
                for number in range(20_000):  # bounded in count, and in time below
                    if stop_writing.is_set():
                        return
                    client.put(f"k{number % 200}", number)
                    written.append(number)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            wait_for(lambda: len(written) > 200, timeout=10, what="writes going")
            cluster.kill("n3")
            wait_for(lambda: "event=hinting_started" in cluster["n1"].log(), timeout=10, what="n1 hinting n3")
            cluster.start("n3")
            wait_for(lambda: "event=peer_joined peer=n3" in cluster["n1"].log(), timeout=15, what="n3 rejoined")
            at_join = len(written)
            wait_for(lambda: len(written) > at_join + 200, timeout=10, what="writes after the rejoin")
        finally:
            stop_writing.set()
            writer.join(15)
        log = cluster["n1"].log()
        assert log.count("event=hinting_started") == 1, [line for line in log.splitlines() if "hinting" in line]
