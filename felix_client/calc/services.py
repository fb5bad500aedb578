"""Kubernetes services for rules' service matches: EndpointSlices by service, and the members of the
IP sets that stand for them (felix/serviceindex/serviceindex.go).

The felix syncer delivers every EndpointSlice as a `KubernetesEndpointSlice` resource KV; its service
is `<namespace>/<label kubernetes.io/service-name>`. A destination-service set ("service") holds
`ip,proto:port` for every address and every port of the service's slices; a source-service set
("service-noport") the addresses alone. As in Felix, an endpoint's readiness does not matter (the
rule names the service's endpoints, not its ready ones), an address that is not an IP is skipped,
and a port protocol other than UDP or SCTP counts as TCP. Each family's set holds that family's
addresses (IPv4 in `cali40…`, IPv6 in `cali60…`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from felix_client import validate
from felix_client.calc.model import IPSetSpec
from felix_client.validate import Invalid

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class _Slice:
    service: str  # "namespace/name"
    addresses: tuple[str, ...]  # both families; `members` picks the set's
    ports: tuple[tuple[int, str], ...]  # (port, protocol)


def _parse_slice(value: dict[str, Any]) -> _Slice:
    md = value.get("metadata") or {}
    labels = md.get("labels") or {}
    if not isinstance(md, dict) or not isinstance(labels, dict):
        raise Invalid("bad-endpointslice", "metadata is not an object")
    service = f"{md.get('namespace') or ''}/{labels.get(SERVICE_NAME_LABEL) or ''}"
    addresses: list[str] = []
    for ep in value.get("endpoints") or ():
        for addr in (ep.get("addresses") if isinstance(ep, dict) else None) or ():
            try:
                ip = validate.ip(addr)
            except Invalid:
                continue  # serviceindex.go: "Skipping non-IP endpoint address" (an FQDN slice)
            addresses.append(str(ip))
    ports: list[tuple[int, str]] = []
    for port in value.get("ports") or ():
        if not isinstance(port, dict) or port.get("port") is None:
            continue  # a port without a number matches no port: serviceindex.go skips it
        proto = str(port.get("protocol") or "TCP").upper()
        number = validate.endpoint_port_number(port["port"])
        ports.append((number, proto.lower() if proto in ("UDP", "SCTP") else "tcp"))
    return _Slice(service, tuple(addresses), tuple(ports))


class ServiceIndex:
    def __init__(self) -> None:
        self._slices: dict[str, _Slice] = {}  # by KV path
        self._by_service: dict[str, set[str]] = {}
        self._active: dict[str, set[IPSetSpec]] = {}  # service -> IP sets referencing it

    def set_slice(self, path: str, value: dict[str, Any] | None) -> set[IPSetSpec]:
        """Add, change (value) or delete (None) one slice; the active sets whose members changed."""
        new = None if value is None else _parse_slice(value)
        old = self._slices.pop(path, None)
        if old is not None:
            paths = self._by_service[old.service]
            paths.discard(path)
            if not paths:
                del self._by_service[old.service]
        if new is not None:
            self._slices[path] = new
            self._by_service.setdefault(new.service, set()).add(path)
        touched = {s.service for s in (old, new) if s is not None}
        return {spec for service in touched for spec in self._active.get(service, ())}

    def add_set(self, spec: IPSetSpec) -> None:
        self._active.setdefault(spec.service, set()).add(spec)

    def remove_set(self, spec: IPSetSpec) -> None:
        specs = self._active.get(spec.service)
        if specs is not None:
            specs.discard(spec)
            if not specs:
                del self._active[spec.service]

    def members(self, spec: IPSetSpec) -> set[str]:
        out: set[str] = set()
        for path in self._by_service.get(spec.service, ()):
            s = self._slices[path]
            addresses = [a for a in s.addresses if (":" in a) == (spec.version == 6)]
            if spec.kind == "service":
                out.update(f"{addr},{proto}:{port}" for addr in addresses for port, proto in s.ports)
            else:
                out.update(addresses)
        return out
