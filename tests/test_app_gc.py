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


def test_no_collection_during_the_load_and_what_it_loaded_is_frozen_after():
    gc.enable()
    with collector_paused_while_loading():
        assert not gc.isenabled()
        collections_before = sum(generation["collections"] for generation in gc.get_stats())
        # Enough allocations to have triggered young collections with the collector on.
        index = {number: Loaded() for number in range(50_000)}
        assert sum(generation["collections"] for generation in gc.get_stats()) == collections_before
    assert gc.isenabled()
    assert gc.get_threshold() == _GC_THRESHOLDS
    assert gc.get_freeze_count() >= len(index), "the loaded objects were not moved out of the collector's way"


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
