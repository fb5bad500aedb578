"""confd-client over mTLS, as Typha's clients: settings from CONFD_/FELIX_/CALICO_ (first prefix that
sets a name wins), all-or-nothing, and the server accepted only with the configured CN or URI SAN."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.integration.test_tls import SERVER_CN, SERVER_URI, make_pki
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.testing.apiserver import calico_v3
from typha.testing.apiserver.server import KubeAPIEmulator

from .test_cli import NODES, clean_env, free_port


def run_confd(env: dict[str, str], out: Path, timeout: str = "20") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "confd_client.agent", "--oneshot", "--config-dir", str(out),
         "--in-sync-timeout", timeout],
        env=clean_env(NODENAME="node-a", **env), capture_output=True, text=True, timeout=60)


def test_confd_verifies_typhas_cn_or_uri_san(tmp_path):
    pki = make_pki(tmp_path)
    files = {"FELIX_TYPHACAFILE": pki.ca.ca_file, "CALICO_TYPHACERTFILE": pki.right_cn.cert_file,
             "CONFD_TYPHAKEYFILE": pki.right_cn.key_file}
    cases = {
        "right CN": ({**files, "CONFD_TYPHACN": SERVER_CN, "FELIX_TYPHACN": "ignored-after-confd"}, "20"),
        "right URI SAN": ({**files, "FELIX_TYPHAURISAN": SERVER_URI}, "20"),
        "wrong CN": ({**files, "CALICO_TYPHACN": "some-other-typha"}, "3"),
        "wrong URI SAN": ({**files, "CONFD_TYPHAURISAN": "spiffe://elsewhere/typha"}, "3"),
    }
    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        calico_v3.apply_documents(api, NODES)
        api.write_kubeconfig(tmp_path / "kubeconfig")
        kube = KubeClient.from_kubeconfig(str(tmp_path / "kubeconfig"))

        async def scenario() -> dict[str, subprocess.CompletedProcess[str]]:
            config = pki.server_config(server_host="127.0.0.1", server_port=free_port())
            daemon = TyphaDaemon(config, kube=kube)
            await daemon.start()
            try:
                address = f"127.0.0.1:{daemon.port}"
                runs = [asyncio.to_thread(run_confd, {**env, "FELIX_TYPHAADDR": address}, tmp_path / name, timeout)
                        for name, (env, timeout) in cases.items()]
                return dict(zip(cases, await asyncio.gather(*runs), strict=True))
            finally:
                await daemon.stop()

        try:
            results = asyncio.run(scenario())
        finally:
            kube.close()
    for name in ("right CN", "right URI SAN"):
        assert results[name].returncode == 0, results[name].stderr
        assert "protocol bgp Mesh_10_0_0_2" in (tmp_path / name / "bird.cfg").read_text()
    for name, wanted in (("wrong CN", "required: CN 'some-other-typha'"),
                         ("wrong URI SAN", "required: URI SAN 'spiffe://elsewhere/typha'")):
        result = results[name]
        assert result.returncode == 1 and "not in sync before the timeout" in result.stderr, result.stderr
        assert "refusing the server" in result.stderr and wanted in result.stderr, result.stderr
        assert not (tmp_path / name / "bird.cfg").exists()


def test_incomplete_tls_settings_are_refused_at_startup(tmp_path):
    result = run_confd({"FELIX_TYPHAADDR": "127.0.0.1:1", "CONFD_TYPHACAFILE": "/ca.pem"}, tmp_path / "out")
    assert result.returncode == 2 and "_all_ must be" in result.stderr, result.stderr
