"""A node's or bridge's Prometheus exposition, read as the tests read it."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    """Every sample at http://address/metrics, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        if not response.headers["Content-Type"].startswith("text/plain; version=0.0.4"):
            raise AssertionError(f"/metrics at {address} is {response.headers['Content-Type']!r}")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample; KeyError if there is none by that name and exactly those labels."""
    return samples[(name, tuple(sorted(labels.items())))]
