"""What a node id or a cluster id may be.

Node ids appear in version tags, logs, data directory names (``.kvwire/<id>``)
and ``--cluster`` lists of the form ``n1=host:port,...``; cluster ids in HELLO
and in each data directory. Both are kept to characters that need no quoting
there, and ``.`` and ``..`` are refused: as a directory name they are the
parent's own, so ``--node-id ..`` made the default data directory ``.``.
"""

from __future__ import annotations

import re

_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ID_RULE = "1-64 characters of letters, digits, '_', '.' or '-', and not '.' or '..'"


def is_valid_id(text: object) -> bool:
    """True if ``text`` may be a node id or a cluster id (``ID_RULE``)."""
    # fullmatch: "$" would also match before a final newline ("n1\n").
    return isinstance(text, str) and _ID.fullmatch(text) is not None and text not in (".", "..")
