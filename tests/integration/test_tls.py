"""mTLS as Typha does it (issue 7 item 2), over real gRPC on 127.0.0.1 with a PKI made in the test.

Server: TLS only, client certificate required, chained to CAFile, and then CN == ClientCN or a URI SAN
== ClientURISAN. Client: the server's chain against TyphaCAFile, then its CN == TyphaCN or a URI SAN ==
TyphaURISAN (not the hostname). TLS >= 1.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from typha.client import AsyncSyncClient, ClientTLS, TLSConfigError
from typha.client.tls import ServerVerifier
from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import SnapshotCache
from typha.syncserver.server import ServerSettings, SyncServer
from typha.syncserver.tls import ClientCertAuthorizer, server_security
from typha.testing import objects
from typha.testing.procs import free_port
from typha.testing.wait import wait_until_async

from .tls_pki import CA, Leaf

SERVER_CN = "typha-server"
SERVER_URI = "spiffe://cluster.local/ns/calico-system/sa/calico-typha"
CLIENT_CN = "typha-client"
CLIENT_URI = "spiffe://cluster.local/ns/calico-system/sa/calico-node"
WAIT = 20.0  # bound on every wait; the happy paths take well under a second


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 90))


@dataclass
class PKI:
    ca: CA
    server: Leaf
    right_cn: Leaf
    wrong_cn: Leaf
    right_uri: Leaf
    other_ca: Leaf
    expired: Leaf

    def server_config(self, **extra: object) -> TyphaConfig:
        config = TyphaConfig(server_key_file=self.server.key_file, server_cert_file=self.server.cert_file,
                             ca_file=self.ca.ca_file, client_cn=CLIENT_CN, client_uri_san=CLIENT_URI, **extra)
        config.validate()
        return config

    def client(self, leaf: Leaf, *, server_cn: str = SERVER_CN, server_uri_san: str = "") -> ClientTLS:
        return ClientTLS(ca_file=self.ca.ca_file, cert_file=leaf.cert_file, key_file=leaf.key_file,
                         server_cn=server_cn, server_uri_san=server_uri_san)

    def grpc_credentials(self, leaf: Leaf) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(Path(self.ca.ca_file).read_bytes(), Path(leaf.key_file).read_bytes(),
                                            Path(leaf.cert_file).read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path)


def make_pki(tmp_path: Path) -> PKI:
    ca, other = CA(tmp_path, "typha-ca"), CA(tmp_path, "other-ca")
    return PKI(
        ca=ca,
        server=ca.issue("server", cn=SERVER_CN, dns=("localhost",), ips=("127.0.0.1",), uris=(SERVER_URI,),
                        server=True),
        right_cn=ca.issue("right-cn", cn=CLIENT_CN),
        wrong_cn=ca.issue("wrong-cn", cn="not-typha-client"),
        right_uri=ca.issue("right-uri", cn="calico-node-on-node-1", uris=(CLIENT_URI,)),
        other_ca=other.issue("other-ca", cn=CLIENT_CN),
        expired=ca.issue("expired", cn=CLIENT_CN, expired=True),
    )


@contextlib.asynccontextmanager
async def tls_server(pki: PKI) -> AsyncIterator[tuple[SyncServer, SnapshotCache]]:
    felix = SnapshotCache("felix")
    felix.apply([Update("/calico/v1/config/LogSeverityScreen", "Info", "1"),
                 Update("/calico/v1/host/node-1/config/Foo", {"x": 1}, "2")])
    felix.set_status(SyncStatus.IN_SYNC)
    server = SyncServer({"felix": felix}, ServerSettings(handshake_timeout_secs=5))
    credentials, server.authorizer = server_security(pki.server_config())
    assert credentials is not None
    await server.start("127.0.0.1", 0, credentials)
    try:
        yield server, felix
    finally:
        await server.stop(0)


async def first_message_or_error(
    port: int, credentials: grpc.ChannelCredentials | None, *, hello: bool = True
) -> grpc.aio.AioRpcError:
    """Open a Sync stream the raw way, say hello, and return the error that ends it (asserting no data came).

    hello=False where the connection itself is refused: a write that fails before the status arrives
    makes grpcio report INTERNAL instead of the call's status."""
    target = f"127.0.0.1:{port}"
    channel = (grpc.aio.secure_channel(target, credentials) if credentials is not None
               else grpc.aio.insecure_channel(target))
    try:
        call = channel.stream_stream("/typha.v1.Sync/Sync", request_serializer=pb.ClientMessage.SerializeToString,
                                     response_deserializer=pb.ServerMessage.FromString)()
        if hello:
            await asyncio.wait_for(call.write(pb.ClientMessage(hello=pb.ClientHello(
                hostname="node-1", syncer_type="felix", compressions=["zstd"]))), WAIT)
        async def read_once() -> None:
            message = await asyncio.wait_for(call.read(), WAIT)
            assert message is grpc.aio.EOF, f"the server sent data: {message}"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_once()
        return caught.value
    finally:
        await channel.close()


async def client_failure(port: int, tls: ClientTLS) -> str:
    """What the typha client says when it gives up on its first failed stream."""
    client = AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname="node-1", tls=tls,
                             max_consecutive_failures=0, connect_timeout=WAIT)
    try:
        with pytest.raises(ConnectionError) as caught:
            await asyncio.wait_for(client.wait(), WAIT)
        assert not client.core.to_dict()
        return str(caught.value)
    finally:
        await client.close()


# -- the right certificates connect and sync --------------------------------------------------------


@pytest.mark.parametrize(("leaf_name", "expect"), [
    ("right_cn", {"server_cn": SERVER_CN}),  # CN on both sides
    ("right_uri", {"server_cn": "", "server_uri_san": SERVER_URI}),  # URI SAN on both sides
])
def test_right_certificates_connect_and_sync(pki: PKI, leaf_name: str, expect: dict[str, str]) -> None:
    async def scenario() -> None:
        async with tls_server(pki) as (server, felix):
            tls = pki.client(getattr(pki, leaf_name), **expect)
            async with AsyncSyncClient([f"127.0.0.1:{server.port}"], "felix", hostname="node-1", tls=tls,
                                       max_consecutive_failures=0) as client:
                assert await client.wait_in_sync(WAIT)
                assert client.core.to_dict() == {"/calico/v1/config/LogSeverityScreen": "Info",
                                                 "/calico/v1/host/node-1/config/Foo": {"x": 1}}
                felix.apply([Update("/calico/v1/config/LogSeverityScreen", "Debug", "3")])
                await wait_until_async(lambda: client.core.get("/calico/v1/config/LogSeverityScreen") == "Debug",
                                       "the changed LogSeverityScreen", timeout=WAIT)

    run(scenario)


def test_raw_grpc_client_with_the_right_certificate_gets_data(pki: PKI) -> None:
    """The positive control for the refusals below: same raw client, right certificate."""
    async def scenario() -> None:
        async with (
            tls_server(pki) as (server, _),
            grpc.aio.secure_channel(f"127.0.0.1:{server.port}", pki.grpc_credentials(pki.right_cn)) as channel,
        ):
            call = channel.stream_stream("/typha.v1.Sync/Sync", request_serializer=pb.ClientMessage.SerializeToString,
                                         response_deserializer=pb.ServerMessage.FromString)()
            await call.write(pb.ClientMessage(hello=pb.ClientHello(hostname="node-1", syncer_type="felix")))
            message = await asyncio.wait_for(call.read(), WAIT)
            assert message.WhichOneof("payload") == "hello"
            call.cancel()

    run(scenario)



def test_trio_agent_client_over_mtls_with_felix_env(pki: PKI) -> None:
    """What an agent does: Felix's environment → ClientTLS → the trio client."""
    import threading

    import trio

    from typha.client import StatusChange, open_trio_sync_client

    env = {"FELIX_TYPHACAFILE": pki.ca.ca_file, "FELIX_TYPHACERTFILE": pki.right_uri.cert_file,
           "FELIX_TYPHAKEYFILE": pki.right_uri.key_file, "FELIX_TYPHAURISAN": SERVER_URI}
    ready, done = threading.Event(), threading.Event()
    port: list[int] = []

    async def serve() -> None:
        async with tls_server(pki) as (server, _):
            port.append(server.port)
            ready.set()
            await asyncio.to_thread(done.wait, WAIT * 2)

    async def agent() -> dict[str, object]:
        tls = ClientTLS.from_env(env)
        with trio.fail_after(WAIT):
            async with open_trio_sync_client([f"127.0.0.1:{port[0]}"], "felix", hostname="node-1",
                                             max_consecutive_failures=0, **tls.client_options()) as client:
                async for event in client:
                    if isinstance(event, StatusChange) and event.status is SyncStatus.IN_SYNC:
                        return client.core.to_dict()
        raise AssertionError("the stream ended before in-sync")

    server_thread = threading.Thread(target=run, args=(serve,), daemon=True)
    server_thread.start()
    try:
        assert ready.wait(WAIT)
        assert trio.run(agent) == {"/calico/v1/config/LogSeverityScreen": "Info",
                                   "/calico/v1/host/node-1/config/Foo": {"x": 1}}
    finally:
        done.set()
        server_thread.join(WAIT)


# -- the wrong ones are refused, with a reason ------------------------------------------------------


def test_wrong_cn_is_refused_unauthenticated_before_any_data(pki: PKI) -> None:
    async def scenario() -> None:
        async with tls_server(pki) as (server, _):
            error = await first_message_or_error(server.port, pki.grpc_credentials(pki.wrong_cn))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "'not-typha-client'" in error.details()
            assert f"CN '{CLIENT_CN}'" in error.details()
            assert f"URI SAN '{CLIENT_URI}'" in error.details()
            assert not server.connections
            message = await client_failure(server.port, pki.client(pki.wrong_cn))
            assert "UNAUTHENTICATED" in message
            assert "'not-typha-client'" in message

    run(scenario)


@pytest.mark.parametrize(("leaf_name", "reason"), [
    ("other_ca", "probably not signed by a CA the server trusts"),
    ("expired", "expired at"),
])
def test_certificate_from_another_ca_or_expired_is_refused_in_the_handshake(
    pki: PKI, leaf_name: str, reason: str
) -> None:
    async def scenario() -> None:
        async with tls_server(pki) as (server, _):
            leaf = getattr(pki, leaf_name)
            # gRPC itself: the server closes the connection during the handshake, before any call.
            error = await first_message_or_error(server.port, pki.grpc_credentials(leaf), hello=False)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            # The typha client's probe turns that into the reason.
            message = await client_failure(server.port, pki.client(leaf))
            assert "the server refused our client certificate" in message and reason in message, message

    run(scenario)


def test_plaintext_client_is_refused(pki: PKI) -> None:
    async def scenario() -> None:
        async with tls_server(pki) as (server, _):
            error = await first_message_or_error(server.port, None, hello=False)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details(), "a status without details"

    run(scenario)


@pytest.mark.parametrize(("expect", "reason"), [
    ({"server_cn": "some-other-typha"}, "required: CN 'some-other-typha'"),
    ({"server_cn": "", "server_uri_san": "spiffe://elsewhere/typha"}, "required: URI SAN 'spiffe://elsewhere/typha'"),
])
def test_client_refuses_a_server_with_another_name(pki: PKI, expect: dict[str, str], reason: str) -> None:
    async def scenario() -> None:
        async with tls_server(pki) as (server, _):
            message = await client_failure(server.port, pki.client(pki.right_cn, **expect))
            assert "refusing the server" in message and reason in message, message
            assert f"CN '{SERVER_CN}'" in message

    run(scenario)


def test_client_refuses_a_server_certificate_from_another_ca(pki: PKI, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with tls_server(pki) as (server, _):
            elsewhere = CA(tmp_path, "client-trusts-this-ca")
            tls = ClientTLS(ca_file=elsewhere.ca_file, cert_file=pki.right_cn.cert_file,
                            key_file=pki.right_cn.key_file, server_cn=SERVER_CN)
            message = await client_failure(server.port, tls)
            assert "server certificate rejected" in message and "TyphaCAFile" in message, message

    run(scenario)


def test_tls_1_1_is_refused_tls_1_2_accepted(pki: PKI) -> None:
    """TLS >= 1.2: gRPC core's minimum for these credentials. Probed with Python's ssl."""
    async def handshake(port: int, version: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(pki.ca.ca_file)
        context.load_cert_chain(pki.right_cn.cert_file, pki.right_cn.key_file)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer TLS 1.1 at all
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: that is the point
            context.minimum_version = context.maximum_version = version
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), WAIT)
        negotiated = writer.get_extra_info("ssl_object").version()
        writer.transport.abort()
        return negotiated

    async def scenario() -> None:
        async with tls_server(pki) as (server, _):
            assert await handshake(server.port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
            try:
                await handshake(server.port, ssl.TLSVersion.TLSv1_1)
            except ssl.SSLError as exc:
                if "NO_PROTOCOLS_AVAILABLE" in str(exc) or "UNSUPPORTED_PROTOCOL" in str(exc):
                    pytest.skip(f"this OpenSSL will not offer TLS 1.1: {exc}")
                # else the server refused: a protocol_version alert, or an EOF
            except ConnectionError:
                pass  # the server reset the connection on the TLS 1.1 ClientHello
            else:
                pytest.fail("a TLS 1.1 handshake succeeded")

    run(scenario)


# -- settings ----------------------------------------------------------------------------------------


def test_felix_settings_from_the_environment(pki: PKI) -> None:
    env = {"FELIX_TYPHACAFILE": pki.ca.ca_file, "FELIX_TyphaCertFile": pki.right_cn.cert_file,
           "FELIX_TYPHAKEYFILE": pki.right_cn.key_file, "FELIX_TYPHACN": SERVER_CN, "UNRELATED": "x"}
    tls = ClientTLS.from_env(env)
    assert tls == pki.client(pki.right_cn)
    assert tls.client_options() == {"tls": tls}
    assert ClientTLS.from_env({}).client_options() == {}
    # confd's order: the first prefix that sets a parameter wins.
    confd = ClientTLS.from_env({**env, "CONFD_TYPHACN": "confd-cn"}, prefixes=("CONFD_", "FELIX_", "CALICO_"))
    assert confd.server_cn == "confd-cn"
    assert confd.ca_file == pki.ca.ca_file
    with pytest.raises(TLSConfigError, match="either TyphaCN or TyphaURISAN"):
        ClientTLS.from_env({"FELIX_TYPHACAFILE": pki.ca.ca_file})
    with pytest.raises(TLSConfigError):
        ClientTLS.from_env({k: v for k, v in env.items() if k != "FELIX_TYPHACN"})
    with pytest.raises(TLSConfigError):
        AsyncSyncClient(["127.0.0.1:1"], "felix", hostname="n", tls=ClientTLS(ca_file=pki.ca.ca_file))


def test_server_rule_is_cn_or_uri_san(pki: PKI) -> None:
    def auth_context(leaf: Leaf) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [Path(leaf.cert_file).read_bytes()]}

    only_cn, only_uri = ClientCertAuthorizer(CLIENT_CN, ""), ClientCertAuthorizer("", CLIENT_URI)
    assert only_cn.reason_to_refuse(auth_context(pki.right_cn)) is None
    assert only_cn.reason_to_refuse(auth_context(pki.right_uri)) is not None
    assert only_uri.reason_to_refuse(auth_context(pki.right_uri)) is None
    assert only_uri.reason_to_refuse(auth_context(pki.right_cn)) is not None
    assert "no client certificate" in (only_cn.reason_to_refuse({}) or "")
    assert server_security(TyphaConfig()) == (None, None)


def test_grpc_target_name_comes_from_the_verified_certificate(pki: PKI, tmp_path: Path) -> None:
    from cryptography import x509

    from typha.client.tls import grpc_target_name

    def load(leaf: Leaf) -> x509.Certificate:
        return x509.load_pem_x509_certificate(Path(leaf.cert_file).read_bytes())

    assert grpc_target_name(load(pki.server)) == "localhost"  # a DNS SAN first
    assert grpc_target_name(load(pki.ca.issue("cn-only", cn=SERVER_CN, server=True))) == SERVER_CN
    # URI SAN only: grpcio's hostname check can never pass; the verifier says so instead of guessing.
    assert grpc_target_name(load(pki.ca.issue("uri-only", cn=None, uris=(SERVER_URI,), server=True))) is None
    assert ServerVerifier(pki.client(pki.right_cn)).tls.server_cn == SERVER_CN


# -- typha serve and typha dump ----------------------------------------------------------------------


def test_typha_serve_with_tls_settings_serves_tls_only_and_dump_works_over_mtls(
    pki: PKI, emulator, kube: KubeClient
) -> None:
    emulator.create(objects.namespace("demo"))
    emulator.create(objects.node("node-1", ipv4="192.168.56.11/24"))

    async def dump(port: int, *tls_flags: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "typha.cli", "dump", "--server", f"127.0.0.1:{port}", "--syncer", "bgp",
            "--json", "--timeout", "15", *tls_flags, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        return process.returncode or 0, out.decode(), err.decode()

    async def scenario() -> None:
        daemon = TyphaDaemon(pki.server_config(server_host="127.0.0.1", server_port=free_port()), kube=kube)
        await daemon.start()
        try:
            port = daemon.port
            error = await first_message_or_error(port, None, hello=False)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            async with AsyncSyncClient([f"127.0.0.1:{port}"], "bgp", hostname="node-1",
                                       tls=pki.client(pki.right_cn), max_consecutive_failures=0) as client:
                assert await client.wait_in_sync(WAIT)
                assert "/calico/resources/v3/projectcalico.org/nodes/node-1" in client.core
            error = await first_message_or_error(port, pki.grpc_credentials(pki.wrong_cn))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED

            flags = ("--ca-file", pki.ca.ca_file, "--cert-file", pki.right_uri.cert_file,
                     "--key-file", pki.right_uri.key_file)
            code, out, err = await dump(port, *flags, "--server-cn", SERVER_CN)
            assert code == 0, err
            assert "/calico/resources/v3/projectcalico.org/nodes/node-1" in json.loads(out)
            code, out, err = await dump(port, *flags, "--server-uri-san", "spiffe://elsewhere/typha")
            assert code == 1 and "refusing the server" in err, err
            code, out, err = await dump(port, "--ca-file", pki.ca.ca_file)
            assert code == 1 and "TyphaCN or TyphaURISAN" in err, err
            code, out, err = await dump(port)  # plaintext
            assert code == 1 and err.strip().splitlines()[-1].startswith("typha dump:"), err
        finally:
            await daemon.stop()

    run(scenario)


@pytest.mark.parametrize("workers", [1, 2])
def test_typha_serve_process_with_typha_tls_env_serves_mtls_only(pki: PKI, tmp_path: Path, workers: int) -> None:
    """The `typha serve` process, TLS from Typha's environment names; with --workers 2 the ingest's private
    Unix socket stays plaintext and the workers serve the public port with mTLS."""
    import os
    import signal
    import subprocess

    import psutil

    from typha.source.datastore import convert_objects
    from typha.testing.apiserver.server import KubeAPIEmulator
    from typha.testing.procs import wait_ready

    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        api.create(objects.namespace("demo"))
        api.create(objects.node("node-1", ipv4="192.168.56.11/24"))
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        port, health_port = free_port(), free_port()
        env = {**os.environ, "TYPHA_SERVERKEYFILE": pki.server.key_file, "TYPHA_SERVERCERTFILE": pki.server.cert_file,
               "TYPHA_CAFILE": pki.ca.ca_file, "TYPHA_CLIENTCN": CLIENT_CN, "TYPHA_CLIENTURISAN": CLIENT_URI}
        process = subprocess.Popen(
            [sys.executable, "-m", "typha.cli", "serve", "--workers", str(workers), "--kubeconfig", str(kubeconfig),
             "--server-host", "127.0.0.1", "--server-port", str(port), "--health-enabled", "true",
             "--health-host", "127.0.0.1", "--health-port", str(health_port), "--shutdown-timeout-secs", "1"],
            env=env)
        try:
            wait_ready(health_port, process, timeout=60)

            async def scenario() -> None:
                error = await first_message_or_error(port, None, hello=False)
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                error = await first_message_or_error(port, pki.grpc_credentials(pki.wrong_cn))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                async with AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname="node-1",
                                           tls=pki.client(pki.right_cn), max_consecutive_failures=0) as client:
                    assert await client.wait_in_sync(WAIT)
                    want = convert_objects("felix", await asyncio.to_thread(api.objects))
                    assert want
                    assert client.core.to_dict() == want

            asyncio.run(asyncio.wait_for(scenario(), 90))
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
                process.kill()
                process.wait(timeout=10)
