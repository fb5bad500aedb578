"""Fixtures that run the Kubernetes API emulator over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from typha.kube.client import KubeClient


@pytest.fixture
def emulator(tmp_path):
    from typha.testing.apiserver.server import KubeAPIEmulator

    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        yield api


@pytest.fixture
def kube(emulator, tmp_path) -> Iterator[KubeClient]:
    path = tmp_path / "kubeconfig"
    emulator.write_kubeconfig(path)
    client = KubeClient.from_kubeconfig(str(path))
    yield client
    client.close()
