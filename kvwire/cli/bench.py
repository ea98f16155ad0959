"""``kvwire bench``: hands its arguments to the load generator in ``bench/``.

The generator has many options with argparse help of its own; click passes the
command line through untouched rather than describing it twice.
"""

from __future__ import annotations

import sys

import click


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def bench(arguments: tuple[str, ...]) -> None:
    """Load a cluster and report throughput and latency; `kvwire bench suite` runs every scenario.

    Run `kvwire bench --help` for the options.
    """
    from bench.load import main as bench_main

    sys.exit(bench_main(list(arguments), prog="kvwire bench"))
