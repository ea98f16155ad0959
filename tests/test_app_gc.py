"""The node process's garbage collector around the index load (app.py,
``collector_paused_while_loading``): off while the index loads, on again after,
with the loaded objects frozen out of its way. README "Scale" has what it saves
at start-up with a million keys."""

import gc

import pytest

from kvwire.server.app import _GC_THRESHOLDS, collector_paused_while_loading


@pytest.fixture(autouse=True)
def garbage_collector_as_it_was():
    """This process goes on to run other tests."""
    enabled, thresholds = gc.isenabled(), gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if enabled:
        gc.enable()
    else:
        gc.disable()


class Loaded:
    """Stands for an index entry: an object that lives on after the load."""


def _collections() -> int:
    return sum(generation["collections"] for generation in gc.get_stats())


def _tracked(obj: object) -> bool:
    """Whether the collector would walk ``obj``: frozen objects are left out of get_objects."""
    return any(candidate is obj for candidate in gc.get_objects())


def test_no_collection_during_the_load_or_after_it_and_what_it_loaded_is_frozen():
    gc.enable()
    with collector_paused_while_loading():
        assert not gc.isenabled()
        collections_before = _collections()
        # Enough allocations to have triggered young collections with the collector on.
        index = {number: Loaded() for number in range(50_000)}
        assert _tracked(index[0])
    # No pass over what was loaded, during the load or at the freeze: that pass
    # is the cost this saves (bench/results/2026-12-04/startup_gc_ab.md).
    assert _collections() == collections_before
    assert not _tracked(index[0]) and not _tracked(index[49_999]), "the loaded objects are still walked by the collector"
    assert gc.isenabled()
    assert gc.get_threshold() == _GC_THRESHOLDS


def test_a_load_that_fails_turns_the_collector_back_on():
    gc.enable()
    with pytest.raises(RuntimeError, match="disk"):
        with collector_paused_while_loading():
            raise RuntimeError("disk went away")
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off():
    gc.disable()
    with collector_paused_while_loading():
        pass
    assert not gc.isenabled()
