"""A node's Prometheus metrics, read from the node when Prometheus scrapes.

The node keeps plain counts (``kvwire.server.tally``) on its hot path;
:class:`NodeCollector` turns them and the node's state into metric families,
and prometheus-client writes the exposition.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .failure_detector import PeerState
from .node import Node
from .tally import LATENCY_BOUNDS, RequestMetrics, cumulative

class NodeCollector(Collector):
    """Everything a node exports, read from the node when Prometheus scrapes."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        yield from self._requests(node.metrics)
        yield from self._core(node)
        yield from self._peers(node)
        yield from self._storage(node)

    def _requests(self, metrics: RequestMetrics) -> Iterator[Metric]:
        answered = CounterMetricFamily(
            "kvwire_requests", "Requests answered, by op, consistency (GET only) and result code.",
            labels=["op", "consistency", "code"],
        )
        for tally in metrics.tallies():
            for code, count in sorted(tally.results().items()):
                answered.add_metric([tally.op, tally.consistency, code], count)
        yield answered
        latency = HistogramMetricFamily(
            "kvwire_request_duration_seconds", "Time from a request's arrival to its reply being ready, by op.",
            labels=["op"],
        )
        for op, (counts, total) in sorted(metrics.latency_by_op().items()):
            latency.add_metric([op], cumulative(LATENCY_BOUNDS, counts), total)
        yield latency
        yield CounterMetricFamily(
            "kvwire_connections_refused", "Connections refused at --max-connections.", value=metrics.connections_refused
        )
        yield CounterMetricFamily(
            "kvwire_connections_timed_out",
            "Connections closed for saying nothing in --hello-timeout, stalling a frame past --frame-timeout, "
            "or reading none of their replies for as long.",
            value=metrics.connections_timed_out,
        )
        yield CounterMetricFamily(
            "kvwire_connections_evicted",
            "Connections closed for holding the most of --max-buffered-bytes when all clients held more.",
            value=metrics.connections_evicted,
        )

    def _core(self, node: Node) -> Iterator[Metric]:
        core, config = node.core, node.config
        stats = core.stats
        for name, doc, value in (
            ("kvwire_quorum_rounds", "Majority rounds started (LOOKUP for writes, FETCH for reads).", stats.quorum_rounds),
            ("kvwire_hedged_requests", "Round requests sent to an extra peer because one was slow.", stats.hedged_requests),
            ("kvwire_read_write_backs", "Quorum reads that wrote the newest version back to a member behind.",
             stats.write_backs),
            # A forwarded DELETE's refusal is its client's on the node the client asked, which
            # may also run the DELETE itself after it: counted there, as HEALTH counts it.
            ("kvwire_no_quorum", "Requests (writes and quorum reads) answered NO_QUORUM.",
             sum(tally.errors.get("no_quorum", 0) for tally in node.metrics.tallies()
                 if tally is not node.metrics.forwarded_delete)),
            ("kvwire_delete_conflicts", "DELETEs answered CONFLICT.", stats.delete_conflicts),
            ("kvwire_one_trip_retries", "One-round-trip PUT tags a majority refused, sent again above every answer.",
             stats.one_trip_retries),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("kvwire_has_quorum",
                                "1 while this node sees a majority UP, itself included while its storage takes writes.",
                                value=int(node.quorum_state()[1]))
        yield GaugeMetricFamily("kvwire_storage_writable",
                                "0 from a failed commit until a commit succeeds again, and while one has run "
                                "--disk-stall-timeout or longer.",
                                value=int(node.storage.write_error is None))
        yield GaugeMetricFamily("kvwire_cluster_nodes", "Members of the cluster, this node included.",
                                value=config.cluster_size)
        yield GaugeMetricFamily("kvwire_keys", "Keys held, tombstones included.", value=len(core.keydir))
        yield GaugeMetricFamily("kvwire_tombstones", "Keys held as tombstones (deleted).",
                                value=core.keydir.tombstones)
        yield CounterMetricFamily("kvwire_tombstones_collected", "Tombstones removed by garbage collection.",
                                  value=core.tombstones.purged)
        yield GaugeMetricFamily("kvwire_tag_floor", "Counter every new version tag is minted above (tombstone GC).",
                                value=core.tombstones.floor_target)
        yield GaugeMetricFamily("kvwire_pending_writes", "Writes accepted and not yet durable.",
                                value=core.pending_writes)
        yield CounterMetricFamily("kvwire_cache_hits", "Value look-ups (GETs, quorum reads, peers' FETCHes, hint "
                                  "replay) served from the value cache.", value=core.cache.hits)
        yield CounterMetricFamily("kvwire_cache_misses", "Value look-ups that had to read the value from SQLite.",
                                  value=core.cache.misses)
        yield GaugeMetricFamily("kvwire_cached_values", "Values kept in memory, against --cache-entries.",
                                value=len(core.cache))
        yield GaugeMetricFamily("kvwire_cached_value_bytes", "Bytes of the values kept in memory (as packed), against "
                                "--cache-bytes.", value=core.cache.bytes)
        yield GaugeMetricFamily("kvwire_open_connections", "Client and peer connections open to this node.",
                                value=node.connections)
        yield GaugeMetricFamily("kvwire_client_buffered_bytes", "Bytes client connections hold of requests not yet read "
                                "whole or handled, and of replies left unread, against --max-buffered-bytes.", value=node.client_buffers.total)
        info = GaugeMetricFamily("kvwire_node_info", "Always 1; the labels name this node.",
                                 labels=["node_id", "cluster_id", "sync"])
        info.add_metric([config.node_id, config.cluster_id, config.sync.value], 1)
        yield info

    def _peers(self, node: Node) -> Iterator[Metric]:
        core = node.core
        now = node.now()
        up = GaugeMetricFamily("kvwire_peer_up", "1 while the failure detector says the peer is UP.", labels=["peer"])
        heard = GaugeMetricFamily("kvwire_peer_last_heard_seconds", "Seconds since any frame from the peer.",
                                  labels=["peer"])
        hints = GaugeMetricFamily("kvwire_peer_pending_hints", "Writes the peer missed, waiting to be replayed.",
                                  labels=["peer"])
        stored = CounterMetricFamily("kvwire_peer_hints_stored", "Writes the peer missed and got a durable hint for.",
                                     labels=["peer"])
        delivered = CounterMetricFamily("kvwire_peer_hints_delivered", "Hints the peer confirmed (catch-up progress).",
                                        labels=["peer"])
        transitions = CounterMetricFamily("kvwire_peer_transitions", "Peer state changes seen by the failure detector.",
                                          labels=["peer", "state"])
        hinting = GaugeMetricFamily("kvwire_peer_hinting_stopped", "1 while a hint bound stops this node hinting the peer.",
                                    labels=["peer"])
        repaired = CounterMetricFamily("kvwire_peer_repair_keys", "Keys anti-entropy pulled from the peer.",
                                       labels=["peer"])
        repair_age = GaugeMetricFamily("kvwire_peer_repair_age_seconds",
                                       "Seconds since the last completed anti-entropy round with the peer.", labels=["peer"])
        for peer in core.peer_ids:
            up.add_metric([peer], int(core.detector.is_up(peer)))
            heard.add_metric([peer], core.detector.silent_for(peer, now))
            hints.add_metric([peer], core.hints.count(peer))
            stored.add_metric([peer], core.hints.stored.get(peer, 0))
            delivered.add_metric([peer], core.hints.delivered.get(peer, 0))
            for state in PeerState:
                transitions.add_metric([peer, state.value.lower()], core.detector.transitions.get((peer, state), 0))
            hinting.add_metric([peer], int(peer in core.hints.stopped))
            status = core.repair.status[peer]
            repaired.add_metric([peer], status.total_received)
            if status.last_completed is not None:
                repair_age.add_metric([peer], now - status.last_completed)
        yield from (up, heard, hints, stored, delivered, transitions, hinting, repaired, repair_age)

    def _storage(self, node: Node) -> Iterator[Metric]:
        storage = node.storage
        batch = HistogramMetricFamily("kvwire_group_commit_rows", "Rows (writes and hints) per group commit.")
        batch.add_metric([], storage.batch_rows.cumulative(), storage.batch_rows.total)
        yield batch
        commit = HistogramMetricFamily(
            "kvwire_group_commit_duration_seconds", "One group commit's transaction on SQLite's thread, fsync included.")
        commit.add_metric([], storage.commit_seconds.cumulative(), storage.commit_seconds.total)
        yield commit
        yield CounterMetricFamily("kvwire_storage_write_failures", "Group commits the disk refused.",
                                  value=storage.failed_commits)
        scrubber = node.scrubber
        for name, doc, value in (
            ("kvwire_scrub_values_checked", "Values the background scrub read and checked for damage on disk.",
             scrubber.checked if scrubber else 0),
            ("kvwire_scrub_damaged", "Values the scrub found damaged on disk (each then mended from a peer's copy).",
             scrubber.damaged if scrubber else 0),
            ("kvwire_scrub_passes", "Scrub passes completed over every value on this node's disk.",
             scrubber.passes if scrubber else 0),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("kvwire_group_commit_running_seconds",
                                "How long the group commit now on SQLite's thread has run; 0 between commits.",
                                value=storage.commit_running_s or 0.0)
        yield GaugeMetricFamily("kvwire_database_bytes", "Size of the SQLite database and its WAL on disk.",
                                value=_database_bytes(storage.path))


def _database_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except FileNotFoundError:
            pass
    return total
