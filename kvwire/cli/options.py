"""What the commands of ``kvwire`` share: environment variables for options, and logging."""

from __future__ import annotations

import logging
import sys

import click

LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"])
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def env(name: str) -> dict:
    """Keyword arguments of ``click.option`` that read it from ``KVWIRE_<name>`` and say so in --help."""
    return {"envvar": f"KVWIRE_{name}", "show_envvar": True}


def configure_logging(level: str) -> None:
    """One line per event on stderr, at ``level`` (one of ``LOG_LEVELS``) and above."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
