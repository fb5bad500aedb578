"""Ingest from the Kubernetes API: reflectors (list+watch) and the syncers built on them."""
