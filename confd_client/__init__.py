"""Node agent consuming typha's Sync stream (see DESIGN.md)."""
