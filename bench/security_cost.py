"""What security costs a 3-node cluster: quorum PUT and GET throughput plain,
with TLS on every link, and with TLS and client tokens (README "Security").

    kvwire bench security-cost --rounds 3

What a round measures is in the command's help, below.
"""

from __future__ import annotations

import json
import statistics
import tempfile

import click

from kvwire.bench.interrupt import stops_cleanly
from kvwire.bench.load import run_load
from kvwire.bench.option_types import FloatRange
from kvwire.bench.settings import Settings
from kvwire.testing import LocalCluster

MIXES = ("put", "get")
# mode -> (TLS on every link, an auth file on the nodes and a token on each connection)
MODES = {"plain": (False, False), "tls": (True, False), "tls+auth": (True, True)}


def measure(mix: str, mode: str, *, duration: float, warmup: float, connections: int) -> dict:
    """One load run against a fresh cluster set up as ``mode`` says."""
    tls, auth = MODES[mode]
    with tempfile.TemporaryDirectory(prefix="kvwire-security-cost-") as root, \
            LocalCluster(3, data_dir=root, tls=tls, auth=auth) as cluster:
        options = cluster.client_options
        settings = Settings(
            endpoints=tuple(cluster.endpoints), mix={mix: 1}, connections=connections, duration=duration, warmup=warmup,
            server_pids=tuple(node.pid for node in cluster),
            tls=tls, tls_ca=_path(options.get("ca")), tls_cert=_path(options.get("cert")),
            tls_key=_path(options.get("key")), token=options.get("token"),
        )
        return run_load(settings)


def _path(value: object) -> str | None:
    return None if value is None else str(value)


@click.command("security-cost", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Rounds, each measuring every workload in every mode.")
@click.option("--duration", type=FloatRange(1, 60), default=5.0, show_default=True,
              help="Measured seconds of each run, after the warm-up.")
@click.option("--warmup", type=FloatRange(0, 60), default=1.0, show_default=True,
              help="Seconds of load before each run's measured time.")
@click.option("--connections", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Connections of each run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@stops_cleanly("its nodes were stopped and their data removed")
def security_cost(ctx: click.Context, rounds: int, duration: float, warmup: float, connections: int, as_json: bool) -> None:
    """Quorum PUT and GET throughput of a 3-node cluster: plain TCP, mutual TLS on
    every link, and mutual TLS with client tokens (an auth file on the nodes).

    Each run starts a fresh cluster on 127.0.0.1-3 (default --sync full) and
    loads it as `kvwire bench --mix put|get` does, its connections spread over
    the three nodes. The modes take turns within each round, so that drift on
    the machine hits them all; the ratios are of the medians over the rounds.

    Exit status: 0 when every run completed, 1 when one could not, 2 for bad options,
    128 + the signal on SIGINT or SIGTERM (its nodes are stopped first).
    """
    runs: dict[tuple[str, str], list[dict]] = {}
    try:
        for round_number in range(1, rounds + 1):
            for mix in MIXES:
                for mode in MODES:
                    result = measure(mix, mode, duration=duration, warmup=warmup, connections=connections)
                    runs.setdefault((mix, mode), []).append(result)
                    if not as_json:
                        click.echo(f"round {round_number}: {mode:8} quorum {mix.upper()} {result['ops_per_s']:>7,} ops/s, "
                                   f"p99 {result['latency_ms']['p99']:.1f} ms, {result['errors']} errors, "
                                   f"{result['server_cpu_us_per_op']} us of node CPU per op")
    except (OSError, RuntimeError) as exc:  # TimeoutError is an OSError
        click.echo(f"{ctx.command_path}: {type(exc).__name__}: {exc}", err=True)
        ctx.exit(1)
    summary: dict[str, dict[str, float]] = {}  # errors too: a refused token would show as fast failures
    for mix in MIXES:
        medians = {mode: statistics.median(r["ops_per_s"] for r in runs[(mix, mode)]) for mode in MODES}
        summary[mix] = {f"{mode}_ops_per_s": value for mode, value in medians.items()}
        summary[mix].update({f"{mode}_errors": sum(r["errors"] for r in runs[(mix, mode)]) for mode in MODES})
        for mode in ("tls", "tls+auth"):
            summary[mix][f"{mode}_over_plain"] = round(medians[mode] / medians["plain"], 3)
    if as_json:
        click.echo(json.dumps(summary))
        return
    for mix, figures in summary.items():
        click.echo(
            f"quorum {mix.upper()} (medians): plain {figures['plain_ops_per_s']:,.0f}/s, "
            f"TLS {figures['tls_ops_per_s']:,.0f}/s ({figures['tls_over_plain']:.2f}x), "
            f"TLS+auth {figures['tls+auth_ops_per_s']:,.0f}/s ({figures['tls+auth_over_plain']:.2f}x, "
            f"a cost of {1 - figures['tls+auth_over_plain']:.0%})")
