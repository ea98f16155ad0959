"""``python -m kvwire.check``: exit 0 ok, 1 violation, 2 bad usage or input, 3 undecided."""

import json
import signal
import subprocess
import sys

import pytest

from kvwire.bench.cpu import server_cpu_seconds
from kvwire.check import Operation, dump_jsonl, load_jsonl
from kvwire.check.__main__ import main
from kvwire.testing import wait_for


def op(index, kind, start, end, outcome, value=None, version=None):
    return Operation(index, kind, "k", start, end, outcome, value, version, "n1", index)


LINEARIZABLE = [op(0, "put", 0, 1, "ok", "a", (1, "n1")), op(1, "get", 2, 3, "ok", "a", (1, "n1"))]
STALE_READ = [op(0, "put", 0, 1, "ok", "a"), op(1, "put", 2, 3, "ok", "b"), op(2, "get", 4, 5, "ok", "a")]
HARD = [op(n, "put", 0, 100, "ok", n) for n in range(30)] + [op(30, "get", 101, 102, "ok", 0), op(31, "get", 103, 104, "ok", 1)]


def _nested(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


def write_history(tmp_path, operations, name="history.jsonl"):
    path = tmp_path / name
    path.write_text(dump_jsonl(operations))
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_dump_and_load_round_trip():
    assert load_jsonl(dump_jsonl(STALE_READ + [op(3, "delete", 6, None, "unknown")])) == STALE_READ + [op(3, "delete", 6, None, "unknown")]


def test_linearizable_history_exits_0(tmp_path, capsys):
    code, out, err = run(capsys, write_history(tmp_path, LINEARIZABLE))
    assert (code, err) == (0, "") and out.startswith("verdict: ok")


def test_violation_exits_1_with_the_report(tmp_path, capsys):
    code, out, _ = run(capsys, write_history(tmp_path, STALE_READ))
    assert code == 1
    assert "verdict: violation" in out and "problem: key 'k' is not linearizable" in out and "#2 client 2" in out


def test_replica_disagreement_exits_1(tmp_path, capsys):
    states = tmp_path / "states.json"
    states.write_text(json.dumps({"n1": {"k": [[1, "n1"], False, "a"]}, "n2": {}}))
    code, out, _ = run(capsys, write_history(tmp_path, LINEARIZABLE), "--states", str(states))
    assert code == 1 and "replicas disagree on key 'k'" in out


def test_exhausted_budget_exits_3(tmp_path, capsys):
    code, out, _ = run(capsys, write_history(tmp_path, HARD), "--max-steps", "200")
    assert code == 3 and "verdict: unknown" in out and "undecided" in out


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"client": 0, "kind": "put", "key": "k", "start": 0, "end": 1, "outcome": "ok", "value": 1}\n{not json\n', "line 2: "),
        ('\n{"client": 0, "kind": "put", "key": "k", "start": 0, "end": 1, "outcome": "ok", "colour": 1}\n', "line 2: unknown field(s) 'colour'"),
        ('{"client": 0, "kind": "get", "key": "k", "start": 0, "outcome": "ok"}\n', "line 1: missing field(s) 'end'"),
        ('{"client": 0, "kind": "put", "key": "k", "start": 0, "end": 1, "outcome": "not_found"}\n', "line 1: a put cannot have outcome 'not_found'"),
        ('{"client": 0, "kind": "get", "key": "k", "start": 2, "end": 1, "outcome": "ok"}\n', "line 1: "),
        ('{"client": 0, "kind": "get", "key": "k", "start": "soon", "end": null, "outcome": "unknown"}\n', "line 1: start and end must be finite"),
        ('{"client": 0, "kind": "get", "key": "k", "start": 0, "end": 1, "outcome": "ok", "version": 7}\n', "line 1: version must be"),
        ('{"client": 0, "kind": "get", "key": "k", "start": 0, "end": 1, "outcome": "ok", "version": ["x", "n1"]}\n', "line 1: version must be"),
        ('{"client": 0, "kind": "scan", "key": "k", "start": 0, "end": 1, "outcome": "ok"}\n', "line 1: 'scan' is not a valid OpKind"),
        ("[1, 2]\n", "line 1: expected a JSON object"),
        ('{"client": [1], "kind": "get", "key": "k", "start": 0, "end": 1, "outcome": "not_found"}\n', "line 1: client must be an integer, got [1]"),
        ('{"client": true, "kind": "get", "key": "k", "start": 0, "end": 1, "outcome": "not_found"}\n', "line 1: client must be an integer, got True"),
        ('{"client": 0, "kind": "get", "key": "k", "start": 0, "end": 1, "outcome": "not_found", "node": 5}\n', "line 1: node must be a string, got 5"),
        ('{"client": 0, "kind": "get", "key": "k", "start": 0, "end": 1, "outcome": "not_found", "index": "z"}\n', "line 1: index must be an integer, got 'z'"),
        # An OverflowError and a RecursionError, with tracebacks and exit 1 ("a violation").
        ('{"client": 0, "kind": "get", "key": "k", "start": 0, "end": 1' + "0" * 400 + ', "outcome": "ok"}\n',
         "line 1: start and end must be finite"),
        ('{"client": 0, "kind": "put", "key": "k", "start": 0, "end": 1, "outcome": "ok", "value": '
         + "[" * 100_000 + "]" * 100_000 + "}\n", "line 1: nested too deeply to read"),
        ('{"client": 0, "kind": "get", "key": "k", "start": 0, "end": "later", "outcome": "ok"}\n',
         "line 1: start and end must be finite"),
    ],
    ids=lambda case: case[:40] if isinstance(case, str) else None,
)
def test_bad_history_line_exits_2_naming_the_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    code, out, err = run(capsys, str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"kvwire.check: {path}: {message}"), err


def test_missing_history_file_exits_2(tmp_path, capsys):
    code, _, err = run(capsys, str(tmp_path / "absent.jsonl"))
    assert code == 2 and "cannot read" in err and "absent.jsonl" in err


@pytest.mark.parametrize(
    "content, message",
    [("{oops", "not valid JSON"), ("[]", "expected an object"), ('{"n1": {"k": 5}}', "node 'n1' key 'k'"),
     ('{"n1": {"k": [[1, "n1"], "false", "a"]}}', "node 'n1' key 'k'"),  # "false" read as true
     ('{"n1": {"k": [[1.7, "n1"], false, "a"]}}', "node 'n1' key 'k'"),  # 1.7 read as 1
     ('{"n1": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply")],
)
def test_bad_states_file_exits_2(tmp_path, capsys, content, message):
    states = tmp_path / "states.json"
    states.write_text(content)
    code, _, err = run(capsys, write_history(tmp_path, LINEARIZABLE), "--states", str(states))
    assert code == 2 and message in err and "states.json" in err


@pytest.mark.parametrize("history, verdict", [
    # A node keeps bool, int and float apart (msgpack's types): true is not the 1 written.
    ([op(0, "put", 0, 1, "ok", 1), op(1, "put", 2, 3, "ok", 2), op(2, "get", 4, 5, "ok", True)], 1),
    ([op(0, "put", 0, 1, "ok", 1), op(1, "put", 2, 3, "ok", 2), op(2, "get", 4, 5, "ok", 1.0)], 1),
    # The map written, read back with its entries in another order; NaN read after NaN written.
    ([op(0, "put", 0, 1, "ok", {"a": 1, "b": 2}), op(1, "get", 2, 3, "ok", {"b": 2, "a": 1})], 0),
    ([op(0, "put", 0, 1, "ok", float("nan")), op(1, "get", 2, 3, "ok", float("nan"))], 0),
    # As deep as a node takes a value: comparing it recursed past Python's limit (exit 1).
    ([op(0, "put", 0, 1, "ok", deep := _nested(1023)), op(1, "get", 2, 3, "ok", deep)], 0),
], ids=["true-for-1", "1.0-for-1", "map-order", "nan", "nested-1023"])
def test_values_are_the_same_as_a_node_tells_them(tmp_path, capsys, history, verdict):
    """Python's == took true for 1 (a violation missed) and NaN for no value written, and
    the lost-write check compared maps by repr (violations that were none)."""
    code, out, _ = run(capsys, write_history(tmp_path, history))
    assert code == verdict, out


@pytest.mark.parametrize("argv", [[], ["h.jsonl", "--max-steps", "0"], ["h.jsonl", "--max-steps", "many"], ["h.jsonl", "--bogus"]])
def test_bad_usage_exits_2(capsys, argv):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "usage:" in capsys.readouterr().err


def test_module_runs_as_a_program_without_tracebacks(tmp_path):
    good = write_history(tmp_path, STALE_READ)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    violation = subprocess.run([sys.executable, "-m", "kvwire.check", good], capture_output=True, text=True, timeout=60)
    broken = subprocess.run([sys.executable, "-m", "kvwire.check", str(bad)], capture_output=True, text=True, timeout=60)
    assert violation.returncode == 1 and "verdict: violation" in violation.stdout
    assert broken.returncode == 2 and "line 1" in broken.stderr and "Traceback" not in broken.stderr


def test_a_read_before_any_put_of_its_value_is_explained_as_such(tmp_path, capsys):
    """The shrunk history drops a PUT that began only after the read: "no PUT wrote" the
    value then read as false beside the full history (a tools probe's finding)."""
    early = [op(0, "get", 0, 1, "ok", "x"), op(1, "put", 2, 3, "ok", "x")]
    code, out, _ = run(capsys, write_history(tmp_path, early))
    assert code == 1 and "had begun to write by the time the read ended" in out, out


def test_ctrl_c_during_a_long_search_is_one_line_not_a_traceback(tmp_path):
    history = write_history(tmp_path, [op(n, "put", 0, 100, "ok", n) for n in range(400)]
                            + [op(400 + n, "get", 101 + 2 * n, 102 + 2 * n, "ok", n % 7) for n in range(40)])
    process = subprocess.Popen([sys.executable, "-m", "kvwire.check", history, "--max-steps", "1000000000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Searching: past the imports and the file's reading.
        wait_for(lambda: process.poll() is not None or server_cpu_seconds([process.pid]) >= 1.0,
                 timeout=60, what="a second of the checker's search")
        assert process.poll() is None, "the search ended before it could be interrupted"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err == "kvwire.check: interrupted by SIGINT; nothing was checked to the end\n", err

