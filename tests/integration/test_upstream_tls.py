"""`typha serve --upstream HOST:PORT` over mTLS: a replica verifies its upstream as agents verify typha
(chain against UpstreamCAFile, then CN or URI SAN), and presents a certificate the upstream checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from typha.config import ConfigError, TyphaConfig, load
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.wait import wait_until_async

from .test_tls import PKI, SERVER_CN, SERVER_URI, WAIT, free_port, make_pki
from .tls_pki import Leaf


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path)


def replica_config(pki: PKI, upstream: str, leaf: Leaf, **names: str) -> TyphaConfig:
    config = TyphaConfig(server_host="127.0.0.1", server_port=free_port(), upstream=upstream,
                         upstream_ca_file=pki.ca.ca_file, upstream_cert_file=leaf.cert_file,
                         upstream_key_file=leaf.key_file, **names)
    config.validate()
    return config


def test_replica_follows_over_mtls_only_when_names_match(pki: PKI, tmp_path: Path) -> None:
    async def scenario(kube: KubeClient) -> None:
        ingest = TyphaDaemon(pki.server_config(server_host="127.0.0.1", server_port=free_port()), kube=kube)
        await ingest.start()
        upstream = f"127.0.0.1:{ingest.port}"
        replicas = {
            "by CN": replica_config(pki, upstream, pki.right_cn, upstream_cn=SERVER_CN),
            "by URI SAN": replica_config(pki, upstream, pki.right_uri, upstream_uri_san=SERVER_URI),
            "wrong server CN": replica_config(pki, upstream, pki.right_cn, upstream_cn="some-other-typha"),
            "wrong own CN": replica_config(pki, upstream, pki.wrong_cn, upstream_cn=SERVER_CN),
            "plaintext": TyphaConfig(server_host="127.0.0.1", server_port=free_port(), upstream=upstream),
        }
        daemons = {name: TyphaDaemon(config) for name, config in replicas.items()}
        # A replica listens only once it holds a replica: the refused ones never finish starting.
        starting = {name: asyncio.create_task(daemon.start()) for name, daemon in daemons.items()}
        try:
            await asyncio.wait_for(asyncio.gather(starting["by CN"], starting["by URI SAN"]), WAIT)
            for name in ("by CN", "by URI SAN"):
                copy, source = daemons[name].caches["felix"], ingest.caches["felix"]
                followers = daemons[name].followers
                await wait_until_async(
                    lambda copy=copy, source=source, followers=followers:
                    copy.newest.sequence == source.newest.sequence and all(f.connected for f in followers),
                    "every follower connected and caught up", timeout=WAIT)
                assert copy.epoch == source.epoch
                assert copy.digest == source.digest
                assert len(copy) == len(source) > 0

            def failed(name: str, text: str) -> bool:
                return all(text in f.last_error for f in daemons[name].followers)

            await wait_until_async(lambda: failed("wrong server CN", "refusing the server"),
                                   "the wrong-server-CN follower to refuse", timeout=WAIT)
            assert "required: CN 'some-other-typha'" in daemons["wrong server CN"].followers[0].last_error
            await wait_until_async(lambda: failed("wrong own CN", "UNAUTHENTICATED"),
                                   "the wrong-own-CN follower to be refused", timeout=WAIT)
            assert "not-typha-client" in daemons["wrong own CN"].followers[0].last_error
            await wait_until_async(lambda: failed("plaintext", "UNAVAILABLE"),
                                   "the plaintext follower to be refused", timeout=WAIT)
            for name in ("wrong server CN", "wrong own CN", "plaintext"):
                followers = daemons[name].followers
                assert not any(f.connected or f.replicated or f.snapshots for f in followers), name
                assert len(daemons[name].caches["felix"]) == 0, name
                assert not starting[name].done() and daemons[name].port == 0, name
        finally:
            for task in starting.values():
                task.cancel()
            await asyncio.gather(*starting.values(), return_exceptions=True)
            for daemon in daemons.values():
                await daemon.stop()
            await ingest.stop()

    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        api.create(objects.node("node-1", ipv4="192.168.56.11/24"))
        path = tmp_path / "kubeconfig"
        api.write_kubeconfig(path)
        kube = KubeClient.from_kubeconfig(str(path))
        try:
            asyncio.run(asyncio.wait_for(scenario(kube), 90))
        finally:
            kube.close()


def test_upstream_tls_settings_are_all_or_nothing_and_never_for_the_ingest_socket() -> None:
    with pytest.raises(ConfigError, match="all must be"):
        load(environ={"TYPHA_UPSTREAM": "typha:5473", "TYPHA_UPSTREAMCAFILE": "/ca.pem"})
    env = {"TYPHA_UPSTREAM": "typha:5473", "TYPHA_UPSTREAMCAFILE": "/ca.pem", "TYPHA_UPSTREAMCERTFILE": "/c.pem",
           "TYPHA_UPSTREAMKEYFILE": "/k.pem", "TYPHA_UPSTREAMURISAN": "spiffe://x"}
    assert load(environ=env).upstream_tls().server_uri_san == "spiffe://x"
    # Workers inherit every setting of their supervisor but follow the ingest's private socket in plaintext.
    assert not load(environ={**env, "TYPHA_UPSTREAM": "unix:/run/typha/ingest.sock"}).upstream_tls().enabled
