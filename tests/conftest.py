import compileall
from pathlib import Path

import pytest

import kvwire
import kvwire.bench
import kvwire.http_bridge

# Every module that defines a class of the error tree, loaded before any test
# is collected: the tests that walk the tree (kvwire.testing.error_classes)
# then see all of it, whichever test file runs first or alone.
import kvwire.http_bridge.values  # noqa: F401
import kvwire.server.datadir  # noqa: F401
import kvwire.server.storage  # noqa: F401
from kvwire.testing import NodeProcess


def pytest_configure(config):
    """Compile kvwire's modules to bytecode once, before any test starts a process.

    Where PYTHONDONTWRITEBYTECODE is set (it is on these machines), nothing of
    the editable install is ever cached, so every node, bridge and CLI process a
    test starts compiled every kvwire module again: about 0.1 s of a node's 0.37 s
    start. The whole suite took 690 s with the cache against 741 s without it
    (2026-12-04). compileall writes the cache whatever that variable says, and
    Python reads it either way (it is refreshed when a source file changes).
    """
    for package in (kvwire, kvwire.bench, kvwire.http_bridge):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)


@pytest.fixture
def node(tmp_path):
    """A real node process on a free loopback port, with its own data directory."""
    with NodeProcess("n1", data_dir=tmp_path / "n1") as started:
        yield started


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One real node per test module, for the tests that neither kill nor pause it nor need it empty.

    With ``--sync normal``: none of them is about durability (test_durability is),
    and some bound a call's time, which a shared disk's fsync stall must not break."""
    with NodeProcess("n1", data_dir=tmp_path_factory.mktemp("shared") / "n1", extra_args=["--sync", "normal"]) as started:
        yield started
