"""Shared network-namespace helpers for the tests in this folder.

Everything a test creates is a named namespace registered with the `netns` fixture, which deletes
all of them at teardown (even on failure); deleting a namespace frees its veths, rules, sets and
routes with it, so nothing leaks into the host's own namespace.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from typha.testing.netns import Namespaces


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    namespaces = Namespaces()
    try:
        yield namespaces
    finally:
        namespaces.cleanup()
