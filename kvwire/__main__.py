"""Command-line entry points: ``kvwire`` (run things) and ``kvwire-cli`` (talk to nodes)."""
from .cli.entry import kvwire

kvwire()
