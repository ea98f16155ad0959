"""``python -m kvwire.sim``: run seeds of the cluster simulation and check every history.

Exit 0 when every run checks clean; 1 with the first failing seed, the
command line that replays it, and a shrunk history; 2 for bad options.
"""

from __future__ import annotations

import signal
import sys


def _interrupted_while_starting(signum: int, frame: object) -> None:
    print("python -m kvwire.sim: interrupted by SIGINT before any seed ran", file=sys.stderr)
    raise SystemExit(130)


# Run as a program, until main() runs, a Ctrl-C ends the imports below with one
# line, not their traceback.
if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import argparse  # noqa: E402 (after the handler, on purpose)
import functools
import json
import multiprocessing
import os
import time
from typing import Iterator

from ..check import DEFAULT_MAX_STEPS, format_report
from ..server.core import MUTANTS
from .nemesis import ALL_FAULT_KINDS, FAULT_KINDS, OPT_IN_FAULT_KINDS
from .run import RunResult, run_seed
from .workload import CLIENT_TIMEOUT

DEFAULT_FAULTS = ",".join(FAULT_KINDS)
# Every mutant is caught within this many seeds (tests/test_sim.py checks it);
# CI also runs 2,000 seeds of the real core.
DEFAULT_SEEDS = 1000
DEFAULT_OPS = 200


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kvwire.sim",
        description="Deterministic simulation of a kvwire cluster: seeded faults, checked histories.",
    )
    parser.add_argument("--seed", type=_whole, default=0, help="first seed (default 0)")
    parser.add_argument("--seeds", type=_positive, default=DEFAULT_SEEDS,
                        help=f"how many seeds to run from --seed (default {DEFAULT_SEEDS})")
    parser.add_argument("--ops", type=_positive, default=DEFAULT_OPS, help=f"client operations per run (default {DEFAULT_OPS})")
    parser.add_argument("--nodes", type=int, choices=(1, 3, 5), default=3, help="cluster size (default 3)")
    parser.add_argument("--faults", type=_faults, default=DEFAULT_FAULTS,
                        help=f"comma list of fault kinds, or 'none' (default {DEFAULT_FAULTS}; also "
                             f"{', '.join(OPT_IN_FAULT_KINDS)}: a node restored from a backup of its disk, "
                             "a node stopped cleanly)")
    parser.add_argument("--mutant", choices=MUTANTS, help="run a deliberately broken core; a clean exit would be a miss")
    parser.add_argument("--clients", type=_positive, default=5, help="concurrent clients (default 5)")
    parser.add_argument("--client-timeout", type=_seconds, default=CLIENT_TIMEOUT, metavar="SECONDS",
                        help=f"how long a client waits for an answer before it gives up and may send the "
                             f"request again elsewhere (default {CLIENT_TIMEOUT:g})")
    parser.add_argument("--max-steps", type=_positive, default=DEFAULT_MAX_STEPS, metavar="N",
                        help=f"the linearizability checker's search budget per key (default {DEFAULT_MAX_STEPS}); "
                             "a key past it makes the run fail as undecided, so raise it for many clients on few keys")
    parser.add_argument("--idless-puts", type=_share, default=0.0, metavar="SHARE",
                        help="the share of PUTs sent without a request id and never sent again, as a node's own "
                             "HTTP bridge sends one its caller gave no id (default 0: every PUT has one)")
    parser.add_argument("--jobs", type=_positive, default=1,
                        help="worker processes running seeds side by side (default 1); results are the same")
    parser.add_argument("--trace", action="store_true", help="print the failing run's event trace")
    parser.add_argument("--json", action="store_true", help="print one JSON summary line instead of text")
    return parser


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> int:
    value = _whole(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def _faults(text: str) -> tuple[str, ...]:
    """As kvwire chaos reads its --faults: a run without faults is asked for by name
    ('none'), not by an empty list, and a kind named twice is refused, as it would
    weigh the nemesis' draw towards it unasked."""
    if text.strip() == "none":
        return ()
    if not text.strip():
        raise argparse.ArgumentTypeError(f"it names no fault kind; give some of {', '.join(ALL_FAULT_KINDS)}, "
                                         "or none")
    kinds = tuple(part.strip() for part in text.split(","))
    unknown = [kind for kind in kinds if kind not in ALL_FAULT_KINDS]
    if unknown:
        named = ", ".join(repr(kind) for kind in unknown)  # an empty one ("crash,,pause") shows as ''
        raise argparse.ArgumentTypeError(f"unknown fault kind {named}; choose from {', '.join(ALL_FAULT_KINDS)}")
    twice = sorted({kind for kind in kinds if kinds.count(kind) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{', '.join(twice)} named more than once")
    return kinds


def _replay_command(args: argparse.Namespace, seed: int) -> str:
    parts = ["python -m kvwire.sim", f"--seed {seed}", f"--ops {args.ops}", f"--nodes {args.nodes}",
             f"--faults {','.join(args.faults) or 'none'}", f"--clients {args.clients}"]
    if args.client_timeout != CLIENT_TIMEOUT:
        parts.append(f"--client-timeout {args.client_timeout:g}")
    if args.max_steps != DEFAULT_MAX_STEPS:
        parts.append(f"--max-steps {args.max_steps}")
    if args.idless_puts:
        parts.append(f"--idless-puts {args.idless_puts:g}")
    if args.mutant:
        parts.append(f"--mutant {args.mutant}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here, KeyboardInterrupt below
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    faults: dict[str, int] = {}
    operations = 0
    checked = 0
    try:
        for seed, result in _results(args):
            checked += 1
            if not result.ok:
                return _failed(args, seed, result, time.perf_counter() - started)
            operations += len(result.operations)
            for kind, count in result.faults.items():
                faults[kind] = faults.get(kind, 0) + count
    except KeyboardInterrupt:
        # One line, as kvwire chaos and bench say it, not a traceback from every worker.
        print(f"python -m kvwire.sim: interrupted by SIGINT after {checked} of {args.seeds} seeds from "
              f"{args.seed}, all clean", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - started
    rate = args.seeds / elapsed if elapsed else float("inf")
    if args.json:
        print(json.dumps({"ok": True, "seeds_run": args.seeds, "operations": operations, "faults": faults,
                          "seconds": round(elapsed, 3), "seeds_per_second": round(rate, 2)}))
    else:
        print(f"ok: {args.seeds} seeds from {args.seed}, {operations} operations checked, "
              f"faults {_describe(faults)}; {elapsed:.1f} s, {rate:.1f} seeds/s")
    return 0


def _failed(args: argparse.Namespace, seed: int, result: RunResult, elapsed: float) -> int:
    if args.json:
        print(json.dumps({"ok": False, "seed": seed, "replay": _replay_command(args, seed),
                          "problems": result.problems, "seeds_run": seed - args.seed + 1,
                          "operations": len(result.operations), "faults": result.faults,
                          "seconds": round(elapsed, 3), **({"trace": result.trace} if args.trace else {})}))
        return 1
    print(f"FAILED: seed {seed} (run {seed - args.seed + 1} of {args.seeds}, {elapsed:.1f} s)")
    print(f"replay: {_replay_command(args, seed)}")
    print(f"faults injected in that run: {_describe(result.faults)}")
    for problem in result.problems[:20]:
        print(f"  - {problem}")
    print(format_report(result.report))
    if args.trace:
        print("trace:")
        print("\n".join(result.trace))
    return 1


def _run_one(seed: int, args: argparse.Namespace) -> tuple[int, RunResult]:
    return seed, run_seed(seed, operations=args.ops, nodes=args.nodes, faults=args.faults,
                          mutant=args.mutant, clients=args.clients, client_timeout=args.client_timeout,
                          max_steps=args.max_steps, idless_puts=args.idless_puts)


def _results(args: argparse.Namespace) -> Iterator[tuple[int, RunResult]]:
    """Each seed's result, in seed order; with --jobs, computed by a pool of processes.

    Each run depends only on its seed, so the order of completion cannot
    change any result, and the first failing seed reported is the same.
    """
    seeds = range(args.seed, args.seed + args.seeds)
    if args.jobs == 1:
        for seed in seeds:
            yield _run_one(seed, args)
        return
    # The workers leave SIGINT to this process, which stops the pool: each printed
    # its own KeyboardInterrupt traceback. It is held back while the pool forks: a
    # Ctrl-C then reached a worker before it ignored SIGINT, or left this process
    # in a half-made pool, and now it is taken once the pool can be stopped.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool = multiprocessing.get_context("fork").Pool(args.jobs, initializer=_ignore_sigint)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        raise
    with pool:  # stops the workers however this ends, a Ctrl-C taken at the next line included
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        yield from pool.imap(functools.partial(_run_one, args=args), seeds, chunksize=8)


def _ignore_sigint() -> None:
    """A worker's start: ignoring SIGINT drops one held back since the fork, then it is let through."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


# Counts that are parts of a fault kind's, not faults of their own (kvwire.sim.nemesis).
_PARTS = {"wipe": ("crash", "disk lost"), "restored": ("restore", "from a backup"),
          "clean_stop": ("stop", "clean"), "unclean_stop": ("stop", "unclean")}


def _describe(faults: dict[str, int]) -> str:
    """``crash 12 (disk lost 1), pause 9``: each part after its kind; PUTs sent without a
    request id (counted with the faults, to show they ran) are no fault, and said apart."""
    parts: dict[str, list[str]] = {}
    for part, (kind, name) in _PARTS.items():
        if faults.get(part):
            parts.setdefault(kind, []).append(f"{name} {faults[part]}")
    described = [f"{kind} {count}" + (f" ({', '.join(parts[kind])})" if kind in parts else "")
                 for kind, count in sorted(faults.items()) if kind not in _PARTS and kind != "idless_puts"]
    text = ", ".join(described) or "none"
    if faults.get("idless_puts"):
        text += f"; {faults['idless_puts']} PUTs without a request id"
    return text


def _main_for_a_pipe() -> int:
    try:
        return main()
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more is wanted, and no
        # traceback. Python's own recipe: point stdout at /dev/null, or the flush
        # at exit raises again. 141 is what a shell reports for SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(_main_for_a_pipe())
