"""Find Typha the way Felix does: an explicit address list, else the Typha service's EndpointSlices.

Felix's order (typha/pkg/discovery): `<prefix>TYPHAADDR` wins; otherwise, when
`<prefix>TYPHAK8SSERVICENAME` is set, the EndpointSlices labelled `kubernetes.io/service-name=<name>`
in `<prefix>TYPHAK8SNAMESPACE` (default kube-system) are listed, endpoints that are not ready are
skipped, and the addresses of the port named `calico-typha` are returned with the ones on this node
first and the rest shuffled, so that node agents spread over the replicas without coordination.
Discovery is blocking (one paginated list); agents call it at start-up and again before reconnecting.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from typha.model.resources import Resource, by_key

if TYPE_CHECKING:
    from typha.kube.client import KubeClient

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TYPHA_PORT_NAME = "calico-typha"
DEFAULT_TYPHA_NAMESPACE = "kube-system"
DEFAULT_TYPHA_PORT = 5473
ENDPOINT_SLICES = by_key("endpointslices.discovery.k8s.io")


class DiscoveryError(ConnectionError):
    """No usable Typha address (misconfiguration, or the API could not be listed): like a failed
    connection, an agent gives up on it only after its allowed number of attempts."""


@dataclasses.dataclass(frozen=True)
class TyphaAddress:
    address: str  # host:port, IPv6 in brackets
    node: str  # the node the Typha pod runs on ("" when the slice does not say)


def _dial(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def with_default_port(text: str) -> str:
    """`host` -> `host:5473`; `host:port`, `[v6]:port` and `unix:PATH` unchanged."""
    text = text.strip()
    if text.startswith("unix:"):
        return text
    if text.startswith("["):
        return text if "]:" in text else f"{text}:{DEFAULT_TYPHA_PORT}"
    colons = text.count(":")
    if colons == 1:
        return text
    # No colon: a host without a port; several: a bare IPv6 address, which needs brackets to dial.
    return f"{text}:{DEFAULT_TYPHA_PORT}" if colons == 0 else f"[{text}]:{DEFAULT_TYPHA_PORT}"


def ready_addresses(slices: Iterable[Mapping[str, Any]], port_name: str = TYPHA_PORT_NAME) -> list[TyphaAddress]:
    """Ready endpoints' addresses on the named port, deduplicated, in a stable order."""
    found: dict[str, TyphaAddress] = {}
    for item in slices:
        ports = [p.get("port") for p in item.get("ports") or [] if p.get("name") == port_name and p.get("port")]
        for endpoint in item.get("endpoints") or []:
            # An unset `ready` means ready (the API's documented default); Felix skips only explicit false.
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            node = str(endpoint.get("nodeName") or "")
            for ip in endpoint.get("addresses") or []:
                for port in ports:
                    address = _dial(str(ip), int(port))
                    found.setdefault(address, TyphaAddress(address, node))
    return sorted(found.values(), key=lambda a: a.address)


def order_for_node(addresses: Sequence[TyphaAddress], node: str, rng: random.Random | None = None) -> list[str]:
    """This node's Typhas first, then the rest; each group shuffled so that nodes spread their load."""
    rng = rng or random.Random()
    local = [a.address for a in addresses if node and a.node == node]
    remote = [a.address for a in addresses if not (node and a.node == node)]
    rng.shuffle(local)
    rng.shuffle(remote)
    return local + remote


@dataclasses.dataclass(frozen=True)
class _Namespaced(Resource):
    namespace: str = ""

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        return Resource.path(self, namespace or self.namespace, name)


def _kube_from_environment(kubeconfig: str) -> KubeClient:
    # Imported on use: the kubernetes package is about half an agent's start-up CPU, and an agent
    # given Typha's address never needs it.
    from typha.kube.client import KubeClient

    return KubeClient.from_environment(kubeconfig)


def list_typha_slices(kube: KubeClient, namespace: str, service_name: str) -> list[dict[str, Any]]:
    fields = {f.name: getattr(ENDPOINT_SLICES, f.name) for f in dataclasses.fields(ENDPOINT_SLICES)}
    resource = _Namespaced(**fields, namespace=namespace)
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        page = kube.list_page(resource, limit=500, continue_token=token,
                              label_selector=f"{SERVICE_NAME_LABEL}={service_name}")
        items += page.items
        token = page.continue_token
        if not token:
            return items


@dataclasses.dataclass(frozen=True)
class TyphaDiscovery:
    """Where a node agent looks for Typha; `addresses()` resolves it now."""

    static: tuple[str, ...] = ()
    service_name: str = ""
    namespace: str = DEFAULT_TYPHA_NAMESPACE
    node: str = ""
    kubeconfig: str = ""
    port_name: str = TYPHA_PORT_NAME
    kube_factory: Callable[[str], KubeClient] = _kube_from_environment

    @property
    def configured(self) -> bool:
        return bool(self.static or self.service_name)

    @property
    def dynamic(self) -> bool:
        return not self.static and bool(self.service_name)

    def describe(self) -> str:
        if self.static:
            return ",".join(self.static)
        return f"service {self.namespace}/{self.service_name} (port {self.port_name})"

    def addresses(self, rng: random.Random | None = None) -> list[str]:
        if self.static:
            return list(self.static)
        if not self.service_name:
            raise DiscoveryError("no Typha configured: set TYPHAADDR or TYPHAK8SSERVICENAME")
        try:
            kube = self.kube_factory(self.kubeconfig)
        except Exception as exc:
            raise DiscoveryError(f"cannot reach the Kubernetes API to discover Typha: {exc}") from exc
        try:
            slices = list_typha_slices(kube, self.namespace, self.service_name)
        except Exception as exc:
            raise DiscoveryError(f"cannot list EndpointSlices of {self.describe()}: {exc}") from exc
        finally:
            kube.close()
        found = order_for_node(ready_addresses(slices, self.port_name), self.node, rng)
        if not found:
            raise DiscoveryError(f"no ready Typha endpoints in {self.describe()}")
        log.info("Discovered Typha endpoints %s from %s", found, self.describe())
        return found

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefixes: Sequence[str], *, node: str,
                 override: Sequence[str] = ()) -> TyphaDiscovery:
        """`override` (a command-line list) beats `<prefix>TYPHAADDR`, which beats the service lookup;
        for each name the first prefix that sets it wins (confd reads FELIX_, CONFD_ or CALICO_)."""

        def setting(name: str) -> str:
            for prefix in prefixes:
                value = env.get(prefix + name, "")
                if value:
                    return value
            return ""

        static = [a for a in override if a.strip()]
        if not static:
            static = [a for a in setting("TYPHAADDR").split(",") if a.strip()]
        return cls(
            static=tuple(with_default_port(a) for a in static),
            service_name=setting("TYPHAK8SSERVICENAME"),
            namespace=setting("TYPHAK8SNAMESPACE") or DEFAULT_TYPHA_NAMESPACE,
            node=node,
            kubeconfig=env.get("KUBECONFIG", ""),
        )


async def discover_until_found(discovery: TyphaDiscovery, *, attempts: int | None = None,
                               initial_delay: float = 1.0, max_delay: float = 10.0) -> list[str]:
    """`discovery.addresses()` off the trio thread, retried with backoff while nothing is found (the
    Typha Deployment may still be rolling out); DiscoveryError after `attempts` failures (None: never)."""
    import trio  # here: `typha serve` imports this module for its Kubernetes lookups and never runs trio

    delay = initial_delay
    failures = 0
    while True:
        try:
            return await trio.to_thread.run_sync(discovery.addresses)
        except DiscoveryError as exc:
            failures += 1
            if attempts is not None and failures >= attempts:
                raise
            log.warning("%s; retrying in %.0f s", exc, delay)
        await trio.sleep(delay)
        delay = min(max_delay, delay * 2)
