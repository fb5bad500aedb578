"""Node agent consuming typha's Sync stream (see docs/architecture.md)."""
