"""The value cache is bounded in bytes as well as in entries.

Bounded by entries alone (--cache-entries, 100,000), a node serving values of
1 MiB would have kept up to 100 GiB of them in memory."""

from __future__ import annotations

import random
import urllib.request

from msgspec import Raw
from prometheus_client.parser import text_string_to_metric_families

from kvwire import Client
from kvwire.server.cache import MISSING, ValueCache
from kvwire.testing import NodeProcess, free_port, resident_bytes


def test_the_least_recently_used_values_go_once_their_bytes_pass_the_bound():
    cache = ValueCache(max_entries=100, max_bytes=1000)
    for index in range(4):
        cache.put(f"k{index}", Raw(b"\xc4" + bytes(299)))  # 300 bytes each: the fourth pushes out the first
    assert cache.bytes == 900 and len(cache) == 3 and cache.hit("k0") is MISSING
    assert cache.hit("k1") is not MISSING  # now the most recently used: k2 goes next
    cache.put("k4", Raw(b"\xc4" + bytes(399)))
    assert cache.hit("k2") is MISSING and cache.bytes == 1000 and len(cache) == 3
    cache.put("k1", Raw(b"\xc4" + bytes(9)))  # a new value of a cached key replaces its bytes
    assert cache.bytes == 710
    cache.put("k1", Raw(b"\xc4" + bytes(1000)))  # larger than the bound: not kept, and the old one not served
    assert cache.hit("k1") is MISSING and cache.bytes == 700
    cache.discard("k4")
    assert cache.bytes == 300 and len(cache) == 1
    cache.put("none", None)  # a nil value weighs nothing, and still counts as an entry
    assert cache.bytes == 300 and len(cache) == 2


def test_the_byte_count_matches_what_is_held_through_random_puts_and_discards():
    rng = random.Random(3)
    cache = ValueCache(max_entries=20, max_bytes=5_000)
    for _ in range(3_000):
        key = f"k{rng.randrange(40)}"
        if rng.random() < 0.2:
            cache.discard(key)
        else:
            cache.put(key, Raw(b"\xc4" + bytes(rng.randrange(0, 1_200))))
        held = [cache.hit(f"k{index}") for index in range(40)]
        assert cache.bytes == sum(len(value) for value in held if value is not MISSING) <= 5_000
        assert len(cache) <= 20


def test_a_node_writing_large_values_keeps_no_more_of_them_than_cache_bytes(tmp_path):
    """64 values of 1 MiB through a node with --cache-bytes of 8 MiB: it holds at most 8 MiB
    of them (HEALTH says how much), its memory grows by far less than the 64 MiB written,
    and every value still reads back, from the disk."""
    value = "v" * (2**20 - 16)  # a str of about 1 MiB, under --max-value-bytes once packed
    metrics = f"127.0.0.1:{free_port()}"
    args = ["--cache-bytes", str(8 * 2**20), "--metrics-listen", metrics]
    with NodeProcess("n1", data_dir=tmp_path / "n1", extra_args=args) as node:
        with Client([node.address], timeout=30) as client:
            client.put("warm-up", value)
            before = resident_bytes(node.pid)
            for index in range(64):
                client.put(f"big{index}", value)
            health = client.health()
            assert health["cached_value_bytes"] <= 8 * 2**20 and 1 <= health["cached_values"] <= 8, health
            grown = resident_bytes(node.pid) - before
            assert grown < 40 * 2**20, f"the node's memory grew {grown / 2**20:.0f} MiB for 64 MiB of values written"
            assert all(client.get(f"big{index}") == value for index in range(64))
            health = client.health()
            assert health["cached_value_bytes"] <= 8 * 2**20  # the reads cached what they read, within it
            with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as response:
                exported = {sample.name: sample.value for family in text_string_to_metric_families(response.read().decode())
                            for sample in family.samples}
            assert exported["kvwire_cached_value_bytes"] == health["cached_value_bytes"]
            assert exported["kvwire_cached_values"] == health["cached_values"]
