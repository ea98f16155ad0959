import pytest

from kvwire.testing import NodeProcess


@pytest.fixture
def node(tmp_path):
    """A real node process on a free loopback port, with its own data directory."""
    with NodeProcess("n1", data_dir=tmp_path / "n1") as started:
        yield started
