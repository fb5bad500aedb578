"""Suite-wide settings: the hypothesis profile for CI, and the one place `root` tests are skipped."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# In CI every run must judge the same code the same way: property tests use a fixed derandomized
# seed there (exploring new examples is what developers' runs are for), and no per-example deadline,
# since a loaded machine must not turn a slow example into a failure.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Tests marked `root` create network namespaces, veths, routes and iptables state; only root may.
# One hook decides it for the whole suite, so the reason reads the same everywhere and a test file
# only has to say that it needs root (the tools it needs stay its own skipif).
NOT_ROOT = pytest.mark.skip(reason="needs root for network namespaces (marker `root`; see CONTRIBUTING.md)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(NOT_ROOT)
