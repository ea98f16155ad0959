"""Where the nodes keep their data and logs: ``DIR/nodes`` under ``--out``.

Each run starts from an empty ``nodes/``, so the one an earlier run left is
removed; but only one a run made, which it marks, never a directory of the
user's that happens to be called ``nodes`` (``--out ~`` must not wipe ~/nodes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

MARKER = ".kvwire-chaos-nodes"


def nodes_directory(out: Path) -> Path:
    return Path(out) / "nodes"


def check_replaceable(out: Path) -> None:
    """ValueError unless ``out/nodes`` is absent or was made by a chaos run (it holds the marker)."""
    nodes = nodes_directory(out)
    if not (nodes.exists() or nodes.is_symlink()) or _made_by_chaos(nodes):
        return
    raise ValueError(f"--out {out}: {nodes} exists and was not made by kvwire chaos (no {MARKER} in it); "
                     f"a run would replace it, so move it away or choose another --out")


def fresh_nodes_directory(out: Path) -> Path:
    """An empty, marked ``out/nodes``, in place of the one an earlier run made."""
    check_replaceable(out)  # again: the directory may have appeared since the options were checked
    nodes = nodes_directory(out)
    shutil.rmtree(nodes, ignore_errors=True)
    nodes.mkdir(parents=True, exist_ok=True)
    (nodes / MARKER).touch()
    return nodes


def _made_by_chaos(nodes: Path) -> bool:
    # A symlink is never ours: rmtree would refuse it, and what it points to is not ours to wipe.
    return not nodes.is_symlink() and (nodes / MARKER).is_file()
