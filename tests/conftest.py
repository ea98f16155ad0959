import pytest

# Every module that defines a class of the error tree, loaded before any test
# is collected: the tests that walk the tree (kvwire.testing.error_classes)
# then see all of it, whichever test file runs first or alone.
import kvwire.http_bridge.values  # noqa: F401
import kvwire.server.datadir  # noqa: F401
import kvwire.server.storage  # noqa: F401
from kvwire.testing import NodeProcess


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
