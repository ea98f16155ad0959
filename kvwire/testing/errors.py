"""The error tree, walked: for tests that must cover every error class, including ones added later."""

from __future__ import annotations

from kvwire.protocol.errors import KvwireError


def error_classes(root: type[KvwireError] = KvwireError) -> list[type[KvwireError]]:
    """``root`` and every subclass loaded so far, depth first.

    Only imported modules count: import those whose errors a test covers (the
    node's storage, the bridge) before walking.
    """
    return [root, *(cls for child in root.__subclasses__() for cls in error_classes(child))]


def sample_error(cls: type[KvwireError], message: str = "m") -> KvwireError:
    """An instance of ``cls`` carrying ``message``, whatever its constructor asks for.

    Some classes take more than a message (``DataDirInUseError`` names a
    directory and a pid); a test walking the tree only needs the class's
    attributes, so the root's constructor is used for every class alike.
    """
    error = cls.__new__(cls)
    KvwireError.__init__(error, message)
    return error
