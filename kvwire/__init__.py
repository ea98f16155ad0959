"""kvwire: a replicated key-value store over length-prefixed msgpack."""

__version__ = "0.1.0"
