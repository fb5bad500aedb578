"""The snapshot cache's Prometheus metrics, under Typha's exact names, labelled by syncer.

prometheus_client appends `_total` to every Counter it exports, while Typha's Go counters such as
`typha_updates_skipped` have no suffix. Users' dashboards and alerts grep for Typha's names, so the
counters Typha names without `_total` are exported as monotonically increasing Gauges.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Summary

_UPDATES = Counter("typha_updates", "Updates received from the datastore.", ["syncer"])
_SKIPPED = Gauge("typha_updates_skipped", "Updates dropped because they changed nothing.", ["syncer"])
_SEQ = Gauge("typha_breadcrumb_seq_number", "Sequence number of the newest breadcrumb.", ["syncer"])
_SIZE = Summary("typha_breadcrumb_size", "Number of KVs per breadcrumb.", ["syncer"])
_CACHE_SIZE = Gauge("typha_cache_size", "Number of KVs in the cache.", ["syncer"])
_GENERATED = Gauge("typha_snapshots_generated", "Snapshots built.", ["syncer"])
_REUSED = Gauge("typha_snapshots_reused", "Snapshots shared with a joining client.", ["syncer"])
_RAW = Gauge("typha_snapshot_raw_bytes", "Size of the newest snapshot before compression.", ["syncer"])
_COMPRESSED = Gauge("typha_snapshot_compressed_bytes", "Size of the newest snapshot compressed.", ["syncer"])


class CacheMetrics:
    """The metric children for one syncer's cache."""

    def __init__(self, syncer_type: str) -> None:
        self.updates_total = _UPDATES.labels(syncer_type)
        self.updates_skipped = _SKIPPED.labels(syncer_type)
        self.breadcrumb_seq_number = _SEQ.labels(syncer_type)
        self.breadcrumb_size = _SIZE.labels(syncer_type)
        self.cache_size = _CACHE_SIZE.labels(syncer_type)
        self.snapshots_generated = _GENERATED.labels(syncer_type)
        self.snapshots_reused = _REUSED.labels(syncer_type)
        self.snapshot_raw_bytes = _RAW.labels(syncer_type)
        self.snapshot_compressed_bytes = _COMPRESSED.labels(syncer_type)
