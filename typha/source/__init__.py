"""What feeds a syncer's cache: the datastore (`datastore`) or an upstream Typha (`upstream`) (docs/architecture.md §3).

Both hand their output to a `typha.client.events.SyncCallbacks`.
"""
