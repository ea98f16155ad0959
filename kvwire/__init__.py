"""kvwire: a replicated key-value store speaking length-prefixed msgpack over TCP."""

__version__ = "0.1.0"

# The package's face is the client and its exceptions; everything else is
# reached through its subpackage (kvwire.protocol, kvwire.server, kvwire.testing).
from kvwire.client import *  # noqa: E402,F403 - __version__ first, so it is set even if an import fails
from kvwire.client import __all__ as _client_names  # noqa: E402

__all__ = [*_client_names, "__version__"]
