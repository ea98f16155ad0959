"""What the commands of ``kvwire`` share: environment variables for options, and logging."""

from __future__ import annotations

from typing import Any, Mapping

import click

from .logformat import LOG_FORMATS, install

LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"])
LOG_FORMAT_CHOICES = click.Choice(list(LOG_FORMATS))


def env(name: str) -> dict:
    """Keyword arguments of ``click.option`` that read it from ``KVWIRE_<name>`` and say so in --help."""
    return {"envvar": f"KVWIRE_{name}", "show_envvar": True}


def log_format_option():
    """``--log-format text|json`` (``KVWIRE_LOG_FORMAT``), for the commands that log."""
    return click.option(
        "--log-format", type=LOG_FORMAT_CHOICES, default="text", show_default=True,
        help="text: TIME LEVEL LOGGER: message key=value...; json: one JSON object per line.", **env("LOG_FORMAT"),
    )


def configure_logging(level: str, log_format: str = "text", context: Mapping[str, Any] | None = None) -> None:
    """One line per event on stderr, at ``level`` (one of ``LOG_LEVELS``) and above, as
    ``log_format`` (one of ``LOG_FORMATS``), every line carrying the fields of ``context``."""
    install(level, log_format, context=context)
