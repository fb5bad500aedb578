"""Client side of Typha's mTLS: Felix's settings, and verifying the server the way Typha's clients do.

Settings carry Felix's names (`TyphaCAFile`, `TyphaCertFile`, `TyphaKeyFile`, `TyphaCN`, `TyphaURISAN`),
read from the environment as Felix reads them (`FELIX_TYPHACAFILE`, …; the name after the prefix is
matched case-insensitively) and with Felix's all-or-nothing rule. Agents call::

    tls = ClientTLS.from_env()               # or from_env(prefixes=("CONFD_", "FELIX_", "CALICO_"))
    AsyncSyncClient(endpoints, "felix", hostname=node, **tls.client_options())

What Typha's Go client does: skip Go's hostname check, verify the chain against TyphaCAFile itself,
then accept the server only if its leaf CN equals TyphaCN or one of its URI SANs equals TyphaURISAN;
TLS ≥ 1.2. grpcio cannot do that in the gRPC handshake: its channel credentials always check the
target name against the certificate (SAN DNS/IP entries, or the CN only when there is no SAN at all;
URI SANs never match), and Python exposes no custom verifier, nor the server's certificate on a call.
So, before each stream, `ServerVerifier.check` makes one TLS connection of its own to the endpoint with
Python's `ssl` (same CA, same client certificate, TLS ≥ 1.2, no hostname check) and applies Typha's
rule to the certificate it gets. The gRPC channel is then opened with the same CA and
`grpc.ssl_target_name_override` set to a name the verified certificate carries (a DNS SAN, else an IP
SAN, else its CN when it has no SAN), so gRPC's own check holds that stream to a certificate from the
same CA with the same name. The probe costs one extra handshake per stream (agents hold one stream).

The probe also turns the server's refusal of *our* certificate into a reason: a gRPC server that
rejects a client certificate just closes the connection ("Socket closed" in the gRPC status), while
the probe sees the close right after the handshake and says which certificate was refused and why it
may be (expired is checked locally; an unknown CA is the other cause).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

FELIX_PREFIXES = ("FELIX_",)
# Felix parameter name → field.
_PARAMS = {
    "TyphaCAFile": "ca_file",
    "TyphaCertFile": "cert_file",
    "TyphaKeyFile": "key_file",
    "TyphaCN": "server_cn",
    "TyphaURISAN": "server_uri_san",
}


class TLSConfigError(ValueError):
    """The TLS settings are incomplete (Felix refuses to start on these too)."""


class ServerIdentityError(ConnectionError):
    """The server's certificate is not the one the settings ask for, or it refused ours."""


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = _san(cert)
    return [] if san is None else list(san.get_values_for_type(x509.UniformResourceIdentifier))


def identity_mismatch(cert: x509.Certificate, cn: str, uri_san: str) -> str | None:
    """Typha's rule (tlsutils.CertificateVerifier): the leaf's CN equals `cn`, or any of its URI SANs
    equals `uri_san`; an empty setting is not checked. None when it matches, else why not."""
    subject_cn, uris = common_name(cert), uri_sans(cert)
    if cn and subject_cn == cn:
        return None
    if uri_san and uri_san in uris:
        return None
    wanted = " or ".join(part for part in (cn and f"CN {cn!r}", uri_san and f"URI SAN {uri_san!r}") if part)
    return f"certificate has CN {subject_cn!r} and URI SANs {uris}; required: {wanted}"


def grpc_target_name(cert: x509.Certificate) -> str | None:
    """A name gRPC's hostname check accepts for `cert`: a DNS SAN, else an IP SAN, else the CN if the
    certificate has no SAN at all (gRPC ignores the CN otherwise, and never matches URI SANs)."""
    san = _san(cert)
    if san is not None:
        dns = san.get_values_for_type(x509.DNSName)
        if dns:
            return str(dns[0])
        ips = san.get_values_for_type(x509.IPAddress)
        if ips:
            return str(ips[0])
        return None
    return common_name(cert) or None


@dataclass(frozen=True)
class ClientTLS:
    """Felix's Typha TLS settings. All empty: plaintext."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_cn: str = ""
    server_uri_san: str = ""

    @property
    def enabled(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file, self.server_cn, self.server_uri_san))

    def validate(self) -> None:
        if self.enabled and not (
            self.ca_file and self.cert_file and self.key_file and (self.server_cn or self.server_uri_san)
        ):
            raise TLSConfigError(
                "If any Felix-Typha TLS config parameters are specified, they _all_ must be - "
                "except that either TyphaCN or TyphaURISAN may be left unset."
            )

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> ClientTLS:
        """From Felix parameter names (`TyphaCAFile`, …), matched case-insensitively as Felix does."""
        lowered = {name.lower(): value for name, value in settings.items()}
        values = {field: lowered.get(param.lower(), "") for param, field in _PARAMS.items()}
        tls = cls(**values)
        tls.validate()
        return tls

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, prefixes: tuple[str, ...] = FELIX_PREFIXES) -> ClientTLS:
        """`<PREFIX>TYPHACAFILE`, …; with several prefixes (confd's "CONFD_", "FELIX_", "CALICO_"), the
        first prefix that sets a parameter wins."""
        import os

        source = os.environ if env is None else env
        found: dict[str, str] = {}
        for param in _PARAMS:
            for prefix in prefixes:
                value = next((v for k, v in source.items() if k.upper() == (prefix + param).upper() and v), "")
                if value:
                    found[param] = value
                    break
        return cls.from_settings(found)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for AsyncSyncClient / open_trio_sync_client: {} when TLS is off."""
        return {"tls": self} if self.enabled else {}


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class ServerVerifier:
    """Loads the files once; `check(endpoint)` before each stream; `channel_credentials` for gRPC."""

    def __init__(self, tls: ClientTLS) -> None:
        tls.validate()
        if not tls.enabled:
            raise TLSConfigError("TLS is not configured")
        self.tls = tls
        ca, key, chain = (Path(p).read_bytes() for p in (tls.ca_file, tls.key_file, tls.cert_file))
        self._ca, self._key, self._chain = ca, key, chain
        self.own_cert = x509.load_pem_x509_certificate(chain)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # as Typha's clients
        context.check_hostname = False  # Typha checks CN / URI SAN instead, below
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=ca.decode())
        context.load_cert_chain(tls.cert_file, tls.key_file)
        context.set_alpn_protocols(["h2"])  # what gRPC servers expect to negotiate
        self._context = context

    def channel_credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(root_certificates=self._ca, private_key=self._key,
                                            certificate_chain=self._chain)

    async def check(self, endpoint: str, timeout: float) -> str:
        """Verify the server at `endpoint` as Typha's client does; returns the name to give gRPC's
        `grpc.ssl_target_name_override`. Raises ServerIdentityError (or OSError) with the reason."""
        host, port = _split_endpoint(endpoint)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                try:
                    reader, writer = await asyncio.open_connection(host, port, ssl=self._context,
                                                                   server_hostname=host)
                except ssl.SSLCertVerificationError as exc:
                    raise ServerIdentityError(
                        f"TLS to {endpoint}: server certificate rejected: {exc.verify_message} "
                        f"(checked against TyphaCAFile {self.tls.ca_file})") from None
                except ssl.SSLError as exc:
                    raise ServerIdentityError(f"TLS handshake with {endpoint} failed: {exc}") from None
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True)
                cert = x509.load_der_x509_certificate(der)
                reason = identity_mismatch(cert, self.tls.server_cn, self.tls.server_uri_san)
                if reason is not None:
                    raise ServerIdentityError(f"TLS to {endpoint}: refusing the server: {reason}")
                name = grpc_target_name(cert)
                if name is None:
                    # gRPC's hostname check cannot pass for such a certificate, whatever we do.
                    raise ServerIdentityError(
                        f"TLS to {endpoint}: the server certificate matches, but it has neither a DNS/IP SAN "
                        "nor (without any SAN) a CN that grpcio's hostname check could accept")
                # A gRPC server that accepted our certificate speaks first (HTTP/2 SETTINGS); one that
                # refused it closes the connection right after the handshake (TLS 1.3 verifies the
                # client certificate after the client considers the handshake done).
                try:
                    first = await reader.read(9)
                except (ssl.SSLError, ConnectionError) as exc:
                    first, refusal = b"", str(exc)
                else:
                    refusal = "connection closed after the handshake"
                if not first:
                    raise ServerIdentityError(
                        f"TLS to {endpoint}: the server refused our client certificate ({refusal}); "
                        f"{self._own_certificate_hint()}")
                return name
        except TimeoutError:
            raise ServerIdentityError(f"TLS to {endpoint}: no handshake within {timeout:g} s") from None
        finally:
            if writer is not None:
                # abort, not close: a TLS close_notify exchange with a server that is already sending
                # HTTP/2 frames fails ("application data after close notify") and is of no use here.
                writer.transport.abort()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    def _own_certificate_hint(self) -> str:
        cert = self.own_cert
        now = datetime.datetime.now(datetime.UTC)
        ours = f"TyphaCertFile {self.tls.cert_file} (CN {common_name(cert)!r}, issuer {cert.issuer.rfc4514_string()!r})"
        if cert.not_valid_after_utc < now:
            return f"{ours} expired at {cert.not_valid_after_utc.isoformat()}"
        if cert.not_valid_before_utc > now:
            return f"{ours} is not valid before {cert.not_valid_before_utc.isoformat()}"
        return f"{ours} is probably not signed by a CA the server trusts (its CAFile)"


__all__ = [
    "FELIX_PREFIXES",
    "ClientTLS",
    "ServerIdentityError",
    "ServerVerifier",
    "TLSConfigError",
    "common_name",
    "grpc_target_name",
    "identity_mismatch",
    "uri_sans",
]
