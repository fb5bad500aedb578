"""felix-client over mTLS with Felix's settings (FELIX_TYPHACAFILE, …): all-or-nothing, and Typha
accepted only with the configured CN or URI SAN, as Felix's Typha client does."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from felix_client.agent import Agent, parse_args
from tests.integration.test_tls import SERVER_CN, SERVER_URI, make_pki
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.testing.apiserver.server import KubeAPIEmulator

from .test_agent_dry_run import DaemonThread, free_port
from .worked_example import cluster_objects

FELIX_VARS = ("FELIX_TYPHACAFILE", "FELIX_TYPHACERTFILE", "FELIX_TYPHAKEYFILE", "FELIX_TYPHACN", "FELIX_TYPHAURISAN")


def options_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *argv: str):  # type: ignore[no-untyped-def]
    for name in FELIX_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return parse_args(list(argv))


async def in_sync(agent: Agent) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(20):
            while not agent.ready:  # noqa: ASYNC110 (the agent offers no event for readiness; polling is bounded)
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def refusal(agent: Agent) -> str:
    """The client gives up (--max-consecutive-failures) with the reason of its last failure."""
    reasons: list[str] = []
    with trio.fail_after(20):
        try:
            await agent.run()
        except* ConnectionError as group:
            reasons += [str(exc) for exc in group.exceptions]
    assert reasons, "the agent ran without refusing the server"
    return reasons[0]


def test_felix_client_verifies_typhas_cn_or_uri_san(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path)
    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        for obj in cluster_objects():
            api.create(obj)
        api.write_kubeconfig(tmp_path / "kubeconfig")
        kube = KubeClient.from_kubeconfig(str(tmp_path / "kubeconfig"))
        server = DaemonThread(kube)
        server.daemon = TyphaDaemon(pki.server_config(server_host="127.0.0.1", server_port=free_port()), kube=kube)
        try:
            with server as daemon:
                files = {"FELIX_TYPHACAFILE": pki.ca.ca_file, "FELIX_TYPHACERTFILE": pki.right_cn.cert_file,
                         "FELIX_TYPHAKEYFILE": pki.right_cn.key_file}
                argv = ("--typha", f"127.0.0.1:{daemon.port}", "--hostname", "node-1", "--debounce", "0.01",
                        "--max-consecutive-failures", "1")
                for name, names in (("cn", {"FELIX_TYPHACN": SERVER_CN}),
                                    ("uri", {"FELIX_TYPHAURISAN": SERVER_URI})):
                    options = options_from_env(monkeypatch, {**files, **names}, *argv, "--dry-run",
                                               str(tmp_path / name))
                    assert options.tls.enabled
                    trio.run(in_sync, Agent(options))
                    assert "cali-" in (tmp_path / name / "iptables.save").read_text()

                for names, wanted in (({"FELIX_TYPHACN": "some-other-typha"}, "required: CN 'some-other-typha'"),
                                      ({"FELIX_TYPHAURISAN": "spiffe://elsewhere/typha"},
                                       "required: URI SAN 'spiffe://elsewhere/typha'")):
                    out = tmp_path / "refused"
                    options = options_from_env(monkeypatch, {**files, **names}, *argv, "--dry-run", str(out))
                    message = trio.run(refusal, Agent(options))
                    assert "refusing the server" in message and wanted in message, message
                    assert not out.exists()
        finally:
            kube.close()


def test_incomplete_felix_tls_settings_are_refused(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        options_from_env(monkeypatch, {"FELIX_TYPHACAFILE": "/ca.pem", "FELIX_TYPHACN": "typha"},
                         "--typha", "127.0.0.1:1", "--dry-run", "out")
    assert exited.value.code == 2
    assert "_all_ must be" in capsys.readouterr().err
    assert not options_from_env(monkeypatch, {}, "--typha", "127.0.0.1:1").tls.enabled
