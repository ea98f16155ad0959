"""kvwire: a replicated key-value store speaking length-prefixed msgpack over TCP."""

from importlib import import_module as _import_module

__version__ = "0.1.0"


# The package's face is the client and its exceptions; everything else is
# reached through its subpackage (kvwire.protocol, kvwire.server, kvwire.testing).
# The client loads on first use (PEP 562): it took 0.1 s of every command's start,
# and the console scripts (kvwire.cli.entry) must take over Ctrl-C before that.
def __getattr__(name: str):
    client = _import_module("kvwire.client")
    if name == "__all__":
        return [*client.__all__, "__version__"]
    if name in client.__all__:
        return getattr(client, name)
    try:
        return globals()[name]  # a subpackage importing the client brought in (kvwire.protocol), as before
    except KeyError:
        raise AttributeError(f"module 'kvwire' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})
