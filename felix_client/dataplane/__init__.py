"""Kernel programming for felix_client: iptables, IP sets, routes and sysctls of one network namespace."""

from felix_client.dataplane.dataplane import Dataplane, DataplaneError, detect_backend

__all__ = ["Dataplane", "DataplaneError", "detect_backend"]
