"""A click group whose subcommands are imported only when one of them runs.

``kvwire serve`` starts every node, in tests hundreds of times; importing
``bench``, ``up`` and ``chaos`` with it (the load generator, the test cluster,
HAProxy's helpers) took 0.15 s of each start's 0.3 s of imports.
"""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """``lazy_commands`` maps a command's name to ``"module:attribute"``."""

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self._lazy_commands:
            module_name, _, attribute = self._lazy_commands[name].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if command.name != name:
                raise RuntimeError(f"{self._lazy_commands[name]} is the command {command.name!r}, not {name!r}")
            self.add_command(command)
        return super().get_command(ctx, name)
