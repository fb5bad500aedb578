"""Calico's data model: key paths, conversions from Kubernetes objects, selectors."""
