"""Typha-style fan-out proxy for Calico's datastore."""

__version__ = "0.1.0"
