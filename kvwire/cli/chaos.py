"""``kvwire chaos``: three real nodes, clients, a nemesis, and a checked history."""

from __future__ import annotations

import json
import sys

import click

from ..check.linearizability import DEFAULT_MAX_STEPS
from .options import DirectoryPath

EXIT_OK, EXIT_ANOMALIES, EXIT_USAGE, EXIT_CANNOT_RUN = 0, 1, 2, 3


@click.command()
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True, help="Seconds of load and faults.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seeds every choice of the clients and the nemesis.  [default: random, printed]")
@click.option("--clients", type=click.IntRange(min=1, max=256), default=6, show_default=True, help="Concurrent clients, each with one connection per node.")
@click.option("--library-clients", type=click.IntRange(min=0, max=256), default=None, help="Of --clients, how many go through kvwire's client library (AsyncClient: its failover, retries and request ids), each call one operation, rather than one raw connection per node.  [default: a third of --clients, rounded down]")
@click.option("--faults", default="kill,pause,partition,stop", show_default=True, metavar="KIND,...", help="Fault kinds taking turns: kill (kill -9, restart), pause (SIGSTOP, SIGCONT), partition (iptables; needs root), stop (SIGTERM, a clean stop, which must exit 0; restart). 'none' for no faults.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True, help="Most operations per second, all clients together.")
@click.option("--keys", type=click.IntRange(min=1), default=8, show_default=True, help="Keys in use at a time; each is retired after --ops-per-key operations.")
@click.option("--ops-per-key", type=click.IntRange(min=1), default=200, show_default=True, help="Operations on a key before a fresh key replaces it.")
@click.option("--max-steps", type=click.IntRange(min=1), default=DEFAULT_MAX_STEPS, show_default=True, help="The linearizability checker's search budget per key; a key whose search runs past it makes the run undecided (status 1), not a violation found. Raise it for many clients on few keys.")
@click.option("--out", type=DirectoryPath(), default=None, help="Write history.jsonl, local_reads.jsonl, replicas.json, summary.json and the nodes' data and logs (nodes/) here.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True, help="json prints summary.json.")
def chaos(duration, seed, clients, library_clients, faults, rate, keys, ops_per_key, max_steps, out, output) -> None:
    """Run 3 nodes on 127.0.0.1-3 under faults while clients record every operation, then check the history.

    Exit status: 0 no anomaly, 1 anomalies (the report says which), 2 bad usage,
    3 the run could not be made (iptables unusable, a node would not start),
    128 + the signal on SIGINT or SIGTERM (the nodes are stopped first).
    """
    from ..bench.output import prepare_directory
    from ..chaos import ChaosConfig, run_chaos
    from ..chaos.config import parse_faults
    from ..chaos.firewall import FirewallUnavailable
    from ..chaos.report import format_table, summary, write_outputs
    from ..chaos.run import ChaosInterrupted

    try:
        config = ChaosConfig(
            duration=duration, clients=clients, library_clients=library_clients, faults=parse_faults(faults), out=out,
            rate=rate,
            keys=keys, ops_per_key=ops_per_key, max_steps=max_steps, **({} if seed is None else {"seed": seed}),
        )
        if out is not None:
            prepare_directory(out, "--out")  # a run of minutes must not end unable to write its files
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    progress = lambda line: click.echo(line, err=True)  # noqa: E731
    progress(f"kvwire chaos: seed {config.seed}, {config.duration:g} s, {config.clients} clients "
             f"({config.library} through the client library), faults {','.join(config.faults) or 'none'}")
    try:
        result = run_chaos(config, log=progress)
    except ChaosInterrupted as exc:
        progress(f"kvwire chaos: {exc}")
        sys.exit(128 + exc.signum)
    except (FirewallUnavailable, RuntimeError) as exc:
        progress(f"kvwire chaos: cannot run: {exc}")
        sys.exit(EXIT_CANNOT_RUN)
    if out is not None:
        write_outputs(result, out)
    if output == "json":
        click.echo(json.dumps(summary(result), indent=2))
    else:
        click.echo(format_table(result), nl=False)
    sys.exit(EXIT_OK if result.ok else EXIT_ANOMALIES)
