"""Both agents find typha as Calico's do when only the service is named: FELIX_TYPHAK8SSERVICENAME
(CONFD_/CALICO_ forms for confd) and a kubeconfig, the address coming from the EndpointSlices."""

from __future__ import annotations

import os
import subprocess
import sys

from .test_agent_dry_run import typha, wait_for  # noqa: F401  (typha is a fixture)


def typha_slice(port: int) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "calico-typha-abcde", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "calico-typha"}},
        "addressType": "IPv4",
        "endpoints": [
            # A replica that is not ready (nothing listens there) must never be tried.
            {"addresses": ["127.0.0.1"], "nodeName": "node-2", "conditions": {"ready": False}},
        ],
        "ports": [{"name": "calico-typha", "port": port, "protocol": "TCP"}],
    }


def test_felix_and_confd_clients_discover_typha_from_the_service(typha, tmp_path):  # noqa: F811
    api, port = typha
    from typha.testing import objects

    api.create(objects.namespace("kube-system"))
    slice_ = typha_slice(port)
    # The ready endpoint is on a port the not-ready one does not share: one slice per port, as the
    # EndpointSlice controller would write them.
    api.create(slice_)
    api.create({**slice_, "metadata": {**slice_["metadata"], "name": "calico-typha-fghij"},
                "endpoints": [{"addresses": ["127.0.0.1"], "nodeName": "node-1", "conditions": {"ready": True}}]})
    kubeconfig = str(tmp_path / "kubeconfig")
    base = {k: v for k, v in os.environ.items() if "TYPHA" not in k}

    out = tmp_path / "felix"
    felix = subprocess.Popen(
        [sys.executable, "-m", "felix_client.agent", "--hostname", "node-1", "--dry-run", str(out),
         "--log-level", "warning"],
        env={**base, "KUBECONFIG": kubeconfig, "FELIX_TYPHAK8SSERVICENAME": "calico-typha"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(out, lambda f: "cali-tw-" in f["iptables.save"], "felix-client in sync via discovery")
    finally:
        felix.terminate()
        felix.wait(10)

    confd = subprocess.run(
        [sys.executable, "-m", "confd_client.agent", "--oneshot", "--config-dir", str(tmp_path / "confd"),
         "--in-sync-timeout", "30"],
        env={**base, "KUBECONFIG": kubeconfig, "NODENAME": "node-1", "CALICO_TYPHAK8SSERVICENAME": "calico-typha",
             "CONFD_LOGLEVEL": "WARNING"},
        capture_output=True, text=True, timeout=60,
    )
    assert confd.returncode == 0, confd.stderr
    assert "router id 192.168.56.11;" in (tmp_path / "confd" / "bird.cfg").read_text()


def test_no_typha_configured_is_a_clear_usage_error(tmp_path):
    base = {k: v for k, v in os.environ.items() if "TYPHA" not in k}
    felix = subprocess.run([sys.executable, "-m", "felix_client.agent", "--hostname", "n", "--dry-run",
                            str(tmp_path)], env=base, capture_output=True, text=True, timeout=60)
    assert felix.returncode == 2
    assert "FELIX_TYPHAK8SSERVICENAME" in felix.stderr
    confd = subprocess.run([sys.executable, "-m", "confd_client.agent", "--oneshot"], env={**base, "NODENAME": "n"},
                           capture_output=True, text=True, timeout=60)
    assert confd.returncode == 2
    assert "FELIX_TYPHAK8SSERVICENAME" in confd.stderr
