"""``kvwire bench``: the command line above every benchmark runner.

    kvwire bench --endpoints 127.0.0.1:7379 --mix get=90,put=10   # the load run, the default command
    kvwire bench suite | failover | detection [OPTIONS]

A command line that starts with an option (or is empty) runs ``load``, so the
everyday load run needs no command name; the group's help lists its options.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from kvwire.bench.detection import detection
from kvwire.bench.failover import failover
from kvwire.bench.interrupt import stops_cleanly
from kvwire.bench.load import run_load
from kvwire.bench.load_report import nothing_measured, report_table, save_result
from kvwire.bench.option_types import DirectoryPath
from kvwire.bench.output import prepare_directory
from kvwire.bench.settings import CONSISTENCIES, DEFAULT_MAX_REQUESTS, GENERATORS, Settings
from kvwire.bench.suite import suite
from kvwire.bench.refill import refill
from kvwire.bench.scale import scale
from kvwire.bench.security_cost import security_cost
from kvwire.bench.workload import DISTRIBUTIONS, parse_mix
from kvwire.client.token_file import read_token_file


class DefaultCommandGroup(click.Group):
    """A group that runs ``default`` when its arguments are empty or start with an option,
    and shows that command's options in its own help."""

    def __init__(self, *args: object, default: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ctx.help_option_names):
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = [param.get_help_record(ctx) for param in self.commands[self.default].params]
        records.append(self.get_help_option(ctx).get_help_record(ctx))
        with formatter.section(f"Options (of {self.default}, the default command)"):
            formatter.write_dl([record for record in records if record is not None])
        self.format_commands(ctx, formatter)


def _pids(ctx: click.Context, param: click.Parameter, text: str | None) -> tuple[int, ...]:
    try:
        return tuple(dict.fromkeys(int(pid) for pid in (text or "").split(",") if pid))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of process ids") from None


_EXIT_STATUS = ("Exit status: 0 when the run completed (error replies are counted, not fatal), 1 when it could "
                "not run (refused connection, failed preload), no reply came back in its measured time or --out could "
                "not be written at the end, 2 for bad options, 128 + the signal on SIGINT or "
                "SIGTERM (130, 143), with nothing printed but one line.")


@click.group(cls=DefaultCommandGroup, default="load", subcommand_metavar="[COMMAND] [ARGS]...",
             context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EXIT_STATUS)
def bench() -> None:
    """Load kvwire nodes and report throughput and latency; or run another benchmark.

    Without a command, runs `load` with the options below: each connection
    keeps up to --pipeline requests in flight for --duration seconds, after
    --warmup seconds that are not counted. Without --rate the loop is closed
    (a reply lets the next request go); with --rate requests start on a
    fixed schedule and latency counts from when each was due, so a stall is
    not hidden (coordinated omission). A run that reads or deletes first
    PUTs every key once. Prints throughput, errors, latency percentiles
    (HdrHistogram) and, with --server-pid, the nodes' CPU time per operation.

    \b
    Examples:
      kvwire bench --endpoints 127.0.0.1:7379 --mix get --connections 50 --server-pid PID
      kvwire bench --endpoints 127.0.0.1:7379,127.0.0.1:7380 --mix get=90,put=10 --distribution zipfian
      kvwire bench --mix put --rate 2000 --duration 30 -o json --out results/
      kvwire bench suite --out bench/results
    """


@bench.command(short_help="The load run, the default command.", epilog=_EXIT_STATUS)
@click.option("--endpoints", "--endpoint", "endpoints", default="127.0.0.1:7379", show_default=True,
              metavar="HOST:PORT[,...]", help="Node(s) to load; connections are spread over them round-robin.")
@click.option("--mix", "--op", "mix", default="get", show_default=True, metavar="OP[=WEIGHT,...]",
              help="Request types and their weights, e.g. get, put, delete or get=90,put=10.")
@click.option("--connections", type=int, default=Settings.connections, show_default=True, metavar="N",
              help="TCP connections in all, split across the workers.")
@click.option("--pipeline", type=int, default=Settings.pipeline, show_default=True, metavar="DEPTH",
              help="Requests in flight per connection at most; 1 means no pipelining.")
@click.option("--workers", type=int, default=Settings.workers, show_default=True, metavar="N",
              help="Load processes, each with its own uvloop loop.")
@click.option("--duration", type=float, default=Settings.duration, show_default=True, metavar="SECONDS",
              help="Measured time.")
@click.option("--warmup", type=float, default=Settings.warmup, show_default=True, metavar="SECONDS",
              help="Time under load before measuring starts.")
@click.option("--rate", type=float, default=None, metavar="OPS_PER_S",
              help="Open loop: start requests at this total rate, spread over the connections.  [default: closed loop]")
@click.option("--value-size", type=int, default=Settings.value_size, show_default=True, metavar="BYTES",
              help="Value length, sent as msgpack bin, for PUT and for the preload.")
@click.option("--keys", type=int, default=Settings.keys, show_default=True, metavar="N", help="Distinct keys.")
@click.option("--distribution", type=click.Choice(DISTRIBUTIONS), default=Settings.distribution, show_default=True,
              help="How requests pick keys; zipfian is YCSB's scrambled zipfian, theta 0.99.")
@click.option("--consistency", type=click.Choice(CONSISTENCIES), default=None,
              help="Read consistency of GETs.  [default: the node's, quorum in a cluster]")
@click.option("--requests", "--max-requests", "max_requests", type=int, default=DEFAULT_MAX_REQUESTS, show_default=True,
              metavar="N", help="Stop after sending this many requests in all, warm-up included; the run ends then "
                                "or after --duration, whichever comes first.")
@click.option("--server-pid", "server_pids", callback=_pids, metavar="PID[,PID...]",
              help="Node process(es) whose CPU time (/proc/PID/stat) to report per operation.")
@click.option("--tls", is_flag=True, help="Connect over TLS (implied by the --tls-* files).")
@click.option("--tls-ca", metavar="PEM", help="CA that signed the nodes' certificates.  [default: the system's CAs]")
@click.option("--tls-cert", metavar="PEM", help="Client certificate, for nodes given --tls-ca.")
@click.option("--tls-key", metavar="PEM", help="The private key of --tls-cert.")
@click.option("--generator", type=click.Choice(GENERATORS), default=Settings.generator, show_default=True,
              help="python: the uvloop generator, every option; native: a compiled closed-loop generator "
                   "(bench/c/kvload.c, built with the machine's C compiler on first use) that costs the "
                   "machine far less CPU, for one op, uniform keys, no pipelining, no TLS.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Say HELLO with the access token in this file (nodes with --auth-file).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="What to print.")
@click.option("--json", "as_json", is_flag=True, help="Same as -o json.")
@click.option("--out", type=DirectoryPath(), default=None, metavar="DIR",
              help="Also write the JSON result to a new file in DIR.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar with live ops/s on stderr.  [default: when stderr is a terminal]")
@click.pass_context
@stops_cleanly("its load workers were stopped")
def load(ctx: click.Context, endpoints: str, mix: str, output: str, as_json: bool, out: Path | None,
         progress: bool | None, **options: object) -> None:
    """Load kvwire nodes, closed loop or at a fixed --rate (the default command)."""
    try:
        token_file = options.pop("token_file")
        try:
            token = read_token_file(token_file) if token_file is not None else None
        except ValueError as exc:
            raise ValueError(f"--token-file: {exc}") from None
        settings = Settings(endpoints=tuple(e for e in endpoints.split(",") if e), mix=parse_mix(mix), token=token,
                            **options)
        for pid in settings.server_pids:
            if not os.path.exists(f"/proc/{pid}/stat"):
                raise ValueError(f"--server-pid {pid}: no such process")
        if out is not None:
            prepare_directory(out, "--out")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = run_load(settings, progress=sys.stderr.isatty() if progress is None else progress)
    except (TimeoutError, OSError, RuntimeError) as exc:
        click.echo(f"{ctx.command_path}: {type(exc).__name__}: {exc}", err=True)
        ctx.exit(1)
    if (why := nothing_measured(result)) is not None:  # no figures, in JSON either: a 0 ops/s row is no measurement
        click.echo(f"{ctx.command_path}: {why}", err=True)
        ctx.exit(1)
    click.echo(json.dumps(result) if as_json or output == "json" else report_table(result))
    if out is not None:
        try:
            written = save_result(result, out)
        except OSError as exc:  # checked before the run, but it may have gone since
            raise click.ClickException(f"--out {out}: cannot write the result there "
                                       f"({exc.strerror or exc}); it is on stdout above") from None
        click.echo(f"{ctx.command_path}: result written to {written}", err=True)


bench.add_command(suite)
bench.add_command(failover)
bench.add_command(detection)
bench.add_command(security_cost)
bench.add_command(refill)
bench.add_command(scale)
