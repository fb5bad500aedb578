"""Prometheus metrics, with Typha's names where Typha has the metric (DESIGN §6)."""

from __future__ import annotations

from prometheus_client import Counter

# Ingest side. Typha has no per-resource datastore metrics; these use our own typha_datastore_ prefix.
DATASTORE_EVENTS = Counter(
    "typha_datastore_events", "Objects received from the Kubernetes API (list items and watch events).",
    ["resource"],
)
DATASTORE_LISTS = Counter(
    "typha_datastore_lists", "Full lists of a resource (initial list and re-lists after 410 Gone).",
    ["resource"],
)
DATASTORE_ERRORS = Counter(
    "typha_datastore_errors", "Failed list or watch requests, each followed by a backoff.", ["resource"],
)
CONVERSION_ERRORS = Counter(
    "typha_conversion_errors",
    "Kubernetes objects that failed conversion or validation; their keys were deleted.",
    ["syncer", "resource"],
)
