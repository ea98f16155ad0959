"""``python -m kvwire.check HISTORY.jsonl [--states STATES.json] [--max-steps N]``

Exit status: 0 every check passed, 1 a violation (the report says which),
3 undecided (a key's search exceeded its budget), 2 bad usage or a bad input file.
"""

from __future__ import annotations

import argparse
import json
import sys

from .history import load_jsonl
from .linearizability import DEFAULT_MAX_STEPS
from .report import check_history, format_report

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE, EXIT_UNKNOWN = 0, 1, 2, 3


class InputError(Exception):
    """A file that cannot be read or parsed; its message names the file."""


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kvwire.check",
        description="Check a client history (JSON lines) for linearizability per key and unique version tags.",
        epilog="Exit status: 0 ok, 1 violation, 2 bad usage or input, 3 undecided (search budget exhausted).",
    )
    parser.add_argument("history", help="the history, one JSON operation per line")
    parser.add_argument("--states", help="JSON: node id -> key -> [version, deleted, value]; checks the replicas converged")
    parser.add_argument("--max-steps", type=_positive, default=DEFAULT_MAX_STEPS, help="search budget per key (default %(default)s)")
    return parser


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from None


def _load_states(path: str) -> dict:
    try:
        states = json.loads(_read(path))
    except ValueError as error:
        raise InputError(f"{path}: not valid JSON: {error}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to read") from None
    if not isinstance(states, dict) or not all(isinstance(held, dict) for held in states.values()):
        raise InputError(f"{path}: expected an object of node id -> object of key -> [version, deleted, value]")
    return states


# Values nest as deep as a node takes them (1,023 levels): comparing them recurses
# once a level, past Python's default limit of 1,000 frames.
RECURSION_LIMIT = 5_000


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)  # exits 2 on bad usage
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    try:
        try:
            operations = load_jsonl(_read(arguments.history))
        except ValueError as error:
            raise InputError(f"{arguments.history}: {error}") from None
        states = _load_states(arguments.states) if arguments.states else None
        try:
            report = check_history(operations, replica_states=states, max_steps=arguments.max_steps)
        except ValueError as error:  # a malformed replica state
            raise InputError(f"{arguments.states}: {error}") from None
        except RecursionError:
            raise InputError("a value is nested too deeply to compare") from None
    except InputError as error:
        print(f"kvwire.check: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(format_report(report), end="")
    return {"ok": EXIT_OK, "violation": EXIT_VIOLATION}.get(report.verdict, EXIT_UNKNOWN)


def _main_interruptible() -> int:
    try:
        return main()
    except KeyboardInterrupt:
        # One line, as kvwire chaos and bench say it: a long search stopped by Ctrl-C
        # printed a traceback (a tools probe's finding).
        print("kvwire.check: interrupted by SIGINT; nothing was checked to the end", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_main_interruptible())
