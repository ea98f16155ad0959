"""The layering of docs/design.md section 2, checked on the source: imports run one way, with no circles.

Every import counts, including those under ``if TYPE_CHECKING:`` and inside
functions: a circle hidden from the interpreter is still a circle to a reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Folders and the package each installs as (setup.py's package_dir).
SOURCES = {"kvwire": ROOT / "kvwire", "kvwire.http_bridge": ROOT / "http_bridge", "kvwire.bench": ROOT / "bench"}

# Each layer and the layers it may import (itself always included). kvwire.cli
# is the top: it may import anything, and only kvwire.__main__ imports it.
ALLOWED = {
    "kvwire.protocol": set(),
    "kvwire.backoff": set(),
    "kvwire.tls": set(),  # the standard library's ssl only, so that every side can share it
    "kvwire.small_file": set(),  # the standard library only: the node's and the CLI's small files
    "kvwire.buffer_budget": set(),  # the standard library only: the node's and the bridge's
    "kvwire.log_limit": set(),  # the standard library only: the node's and the bridge's
    "kvwire.tls_listener": {"kvwire.protocol", "kvwire.tls", "kvwire.log_limit"},  # the node's and the bridge's
    "kvwire.secret_file": {"kvwire.protocol", "kvwire.small_file"},
    "kvwire.client": {"kvwire.protocol", "kvwire.backoff", "kvwire.tls"},
    "kvwire.server": {"kvwire.protocol", "kvwire.backoff", "kvwire.client", "kvwire.tls", "kvwire.small_file",
                      "kvwire.buffer_budget", "kvwire.log_limit", "kvwire.tls_listener"},
    "kvwire.check": {"kvwire.protocol"},
    "kvwire.sim": {"kvwire.protocol", "kvwire.backoff", "kvwire.server", "kvwire.check"},
    "kvwire.testing": {"kvwire.protocol", "kvwire.backoff", "kvwire.client", "kvwire.secret_file", "kvwire.tls"},
    "kvwire.http_bridge": {"kvwire.protocol", "kvwire.backoff", "kvwire.client", "kvwire.tls", "kvwire.buffer_budget",
                           "kvwire.log_limit", "kvwire.tls_listener"},
    "kvwire.bench": {"kvwire.protocol", "kvwire.backoff", "kvwire.client", "kvwire.testing", "kvwire.tls"},
    "kvwire.chaos": {"kvwire.protocol", "kvwire.backoff", "kvwire.client", "kvwire.check", "kvwire.testing"},
    "kvwire.cli": None,  # anything
    "kvwire": {"kvwire.protocol", "kvwire.client"},  # the package's own __init__: the public API
    "kvwire.__main__": {"kvwire.cli"},
}
# kvwire.sim drives the pure core only, never the asyncio shell around it.
SHELL = {"kvwire.server.node", "kvwire.server.connection", "kvwire.server.peers", "kvwire.server.storage",
         "kvwire.server.app", "kvwire.server.datadir", "kvwire.server.flow", "kvwire.tls_listener"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The modules of ours that ``module`` imports, anywhere in its file."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            # "from pkg import mod" imports pkg.mod when that is a module of ours.
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> str:
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len)


def test_the_graph_sees_the_whole_tree():
    # A broken walk would find nothing and pass everything below.
    assert {"kvwire.protocol.codec", "kvwire.server.core.node", "kvwire.http_bridge.app", "kvwire.bench.load"} <= set(MODULES)
    assert "kvwire.protocol.codec" in GRAPH["kvwire.server.node"] or "kvwire.protocol.messages" in GRAPH["kvwire.server.node"]


# kvwire.cli may import anything, so only the layers with a rule are checked.
@pytest.mark.parametrize("module", sorted(module for module in MODULES if ALLOWED[_layer(module)] is not None))
def test_imports_run_one_way(module):
    layer = _layer(module)
    allowed = ALLOWED[layer]
    if "kvwire.client" in allowed:
        allowed = allowed | {"kvwire"}  # the package's public API is the client's and the protocol's
    wrong = sorted(
        target for target in GRAPH[module] if _layer(target) != layer and _layer(target) not in allowed
    )
    assert not wrong, f"{module} (layer {layer}) must not import {wrong}; docs/design.md section 2"


def test_the_simulator_uses_the_core_not_the_shell():
    for module, targets in GRAPH.items():
        if _layer(module) == "kvwire.sim":
            assert not targets & SHELL, f"{module} imports the asyncio shell: {sorted(targets & SHELL)}"


def test_the_core_is_pure():
    for module, path in MODULES.items():
        if module.startswith("kvwire.server.core"):
            text = path.read_text(encoding="utf-8")
            for forbidden in ("import asyncio", "import socket", "import sqlite3", "import aiosqlite"):
                assert forbidden not in text, f"{module}: {forbidden}"
            assert not GRAPH[module] & SHELL, f"{module} imports the shell: {sorted(GRAPH[module] & SHELL)}"


def test_no_module_is_part_of_an_import_circle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


def test_a_circle_is_detected(monkeypatch):
    # The check above must be able to fail: add one edge back up and it does.
    monkeypatch.setitem(GRAPH, "kvwire.protocol.codec", GRAPH["kvwire.protocol.codec"] | {"kvwire.protocol.connection"})
    assert "kvwire.protocol.codec" in GRAPH["kvwire.protocol.connection"]
    with pytest.raises(AssertionError, match="import circles"):
        test_no_module_is_part_of_an_import_circle()


def test_running_the_simulator_loads_no_shell_and_no_sqlite():
    # Package __init__ files run on import too, which the graph above does not follow.
    shell = sorted(SHELL | {"aiosqlite", "sqlite3", "uvloop"})
    code = f"import sys, kvwire.sim.run, kvwire.sim.__main__; print([m for m in {shell!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
