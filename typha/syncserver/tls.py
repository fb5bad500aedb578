"""Server side of Typha's mTLS: credentials from ServerKeyFile / ServerCertFile / CAFile, and the
ClientCN / ClientURISAN rule.

Typha (tlsutils.go, sync_server.go) uses Go's RequireAndVerifyClientCert plus a verifier that accepts
a client whose leaf CN equals ClientCN or one of whose URI SANs equals ClientURISAN, all inside the
TLS handshake, with TLS ≥ 1.2.

grpcio can do the first half in the handshake: `ssl_server_credentials(require_client_auth=True)`
refuses a client without a certificate, or with one that does not chain to CAFile or has expired
(the client sees UNAVAILABLE, "Socket closed"; the reason is in gRPC core's log). The minimum
protocol version is TLS 1.2, gRPC core's default for these credentials (grpcio offers no setting to
lower it). It cannot do the second half: Python has no hook for a custom certificate verifier. So
the CN / URI SAN rule runs on each Sync stream before anything is sent (`ClientCertAuthorizer`,
called first thing by SyncServer._handle), from the peer certificate in the call's auth context, and
refuses with UNAUTHENTICATED and the reason (after taking the client's hello, so that grpcio's
client reports that status rather than a failed write). Differences from Typha: a client with a
certificate from the right CA but the wrong name completes the TLS handshake and can reach the
standard health and reflection services on the same port (they reveal only readiness and the
service names); it gets no Sync data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
from cryptography import x509

from typha.client.tls import identity_mismatch
from typha.config import TyphaConfig

log = logging.getLogger(__name__)


def server_credentials(config: TyphaConfig) -> grpc.ServerCredentials | None:
    """None without TLS settings. `config.validate()` has already enforced all-or-nothing."""
    if not config.requires_tls:
        return None
    key, cert, ca = (Path(p).read_bytes() for p in (config.server_key_file, config.server_cert_file, config.ca_file))
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


class ClientCertAuthorizer:
    """Await with a call's context: returns if the client's certificate carries ClientCN or
    ClientURISAN, else aborts the call with UNAUTHENTICATED (raises)."""

    def __init__(self, client_cn: str, client_uri_san: str, read_timeout_secs: float = 10.0) -> None:
        if not (client_cn or client_uri_san):
            raise ValueError("ClientCN or ClientURISAN is required")
        self.read_timeout_secs = read_timeout_secs
        self.client_cn = client_cn
        self.client_uri_san = client_uri_san

    def reason_to_refuse(self, auth_context: dict[str, list[bytes]]) -> str | None:
        pems = auth_context.get("x509_pem_cert") or []
        if not pems:
            return "no client certificate (mTLS is required)"
        try:
            cert = x509.load_pem_x509_certificate(pems[0])
        except ValueError as exc:
            return f"unreadable client certificate: {exc}"
        mismatch = identity_mismatch(cert, self.client_cn, self.client_uri_san)
        return None if mismatch is None else f"client {mismatch}"

    async def __call__(self, context: grpc.aio.ServicerContext) -> None:
        reason = self.reason_to_refuse(context.auth_context())
        if reason is not None:
            log.warning("Refusing %s: %s", context.peer(), reason)
            # Take the client's hello first (bounded), and only then end the call. A client's write that
            # is still in flight when the status arrives fails, and grpcio then replaces the status it
            # reports with INTERNAL "Internal error from Core": the refusal's reason would be lost.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.read_timeout_secs):
                    await context.read()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)


def server_security(config: TyphaConfig) -> tuple[grpc.ServerCredentials | None, ClientCertAuthorizer | None]:
    """What `typha serve` needs: (credentials for SyncServer.start, the server's authorizer); both None
    without TLS settings, so the server is plaintext; with them, it serves TLS only."""
    credentials = server_credentials(config)
    if credentials is None:
        return None, None
    return credentials, ClientCertAuthorizer(config.client_cn, config.client_uri_san,
                                             config.server_handshake_timeout_secs)
