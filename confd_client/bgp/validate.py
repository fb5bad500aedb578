"""The grammar of every value that reaches a BIRD config, and the one place rejections are reported.

BIRD's config is a program: a peer password with a `"` or a newline, a CIDR with a `;`, an interface
name with a `}` would each add statements of their own. Calico's API validation keeps such values out
of a real cluster, but CRDs written directly, or a bug upstream, reach us unchecked, so every value is
checked here against its grammar before it is printed (defence in depth, docs/calico/confd.md).

An invalid value rejects what it belongs to: the object (a Node, BGPPeer, BGPConfiguration, BGPFilter,
IP pool, block affinity) when the store takes it in, or the peering / the route when the value only
arrives at render time (a password from a Secret, a Service address). Each rejection is logged once
and counted in `confd_client_rejected_values_total`; nothing of the rejected thing is rendered.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter

from confd_client.bgp.values import is_ip_text

log = logging.getLogger(__name__)

REJECTED = Counter(
    "confd_client_rejected_values_total",
    "Values confd-client refused to put into a BIRD config, by the kind of object and field they came in.",
    ["kind", "field"],
)

# metadata.name of Calico resources: a DNS-1123 subdomain (Kubernetes' name validation).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_NAME = 253
# Interface names and BIRD interface patterns (Calico's ignoredInterfaces / BGPFilter `interface`):
# Linux allows 15 bytes; `*` is BIRD's wildcard.
_INTERFACE = re.compile(r"^[A-Za-z0-9_.*-]{1,15}$")
_UINT = re.compile(r"^[0-9]+$")
_CIDR = re.compile(r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$")
# ASCII digits only: `\d` would also take other scripts' digits, which BIRD cannot read.
STANDARD_COMMUNITY = re.compile(r"^([0-9]+):([0-9]+)$")
LARGE_COMMUNITY = re.compile(r"^([0-9]+):([0-9]+):([0-9]+)$")
MAX_AS = 4294967295
# Linux's TCP MD5 key is at most 80 bytes (TCP_MD5SIG_MAXKEYLEN); BIRD would not apply a longer one.
MAX_PASSWORD_BYTES = 80
# Line and paragraph separators: not newlines to BIRD, but to every tool that reads the file as text.
_UNPRINTABLE = frozenset({"Zl", "Zp"})
BLOCK_STATES = frozenset({"", "confirmed", "pending", "pendingDeletion"})


class Invalid(ValueError):
    """A value that must not reach BIRD; `field` names where it came from."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Rejections:
    """Logs each distinct rejection once and counts it; forgets an object's once it is fine again.

    Render-time rejections (a password, a Service address) recur on every render; one log line per
    problem is enough. Bounded: the memory is cleared when it grows past `limit` entries.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._seen: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._size = 0

    def report(self, kind: str, name: str, exc: Invalid) -> None:
        seen = self._seen.setdefault((kind, name), set())
        entry = (exc.field, exc.reason)
        if entry in seen:
            return
        if self._size >= self.limit:
            self._seen.clear()
            self._size = 0
            seen = self._seen.setdefault((kind, name), set())
        seen.add(entry)
        self._size += 1
        REJECTED.labels(kind, exc.field).inc()
        log.warning("rejecting %s %r: %s is invalid (%s); it is left out of the BIRD config",
                    kind, name, exc.field, exc.reason)

    def forget(self, kind: str, name: str) -> None:
        self._size -= len(self._seen.pop((kind, name), ()))


# -- grammars ---------------------------------------------------------------------------------------


def check_name(field: str, value: Any) -> str:
    text = str(value)
    if len(text) > MAX_NAME or not _NAME.match(text):
        raise Invalid(field, "not a DNS-1123 subdomain")
    return text


def check_as(field: str, value: Any) -> None:
    """numorstring.ASNumber: an integer, or `high.low` (asdot) with 16-bit halves."""
    if value is None or value == "":
        return
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(field, "not an AS number")
    if isinstance(value, int):
        number = value
    elif "." in value:
        high, _, low = value.partition(".")
        if not (_UINT.match(high) and _UINT.match(low)) or int(high) > 65535 or int(low) > 65535:
            raise Invalid(field, "not an AS number")
        number = (int(high) << 16) + int(low)
    elif _UINT.match(value):
        number = int(value)
    else:
        raise Invalid(field, "not an AS number")
    if not 0 <= number <= MAX_AS:
        raise Invalid(field, "AS number out of range")


def check_int(field: str, value: Any, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        raise Invalid(field, "not an integer")
    if isinstance(value, str):
        if not _UINT.match(value):
            raise Invalid(field, "not an integer")
        value = int(value)
    if not isinstance(value, int) or not low <= value <= high:
        raise Invalid(field, f"not an integer in {low}..{high}")


def check_bool(field: str, value: Any) -> None:
    """A JSON bool (a string would be truthy, and turn a setting on)."""
    if value is not None and not isinstance(value, bool):
        raise Invalid(field, "not a bool")


def check_ip(field: str, value: Any) -> None:
    if not isinstance(value, str) or not is_ip_text(value):
        raise Invalid(field, "not an IP address")


def check_ipv4(field: str, value: Any) -> None:
    if not isinstance(value, str) or not is_ip_text(value) or ":" in value:
        raise Invalid(field, "not an IPv4 address")


def check_cidr(field: str, value: Any) -> None:
    if not isinstance(value, str) or not _CIDR.match(value):
        raise Invalid(field, "not a CIDR")
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Invalid(field, "not a CIDR") from None


def check_interface(field: str, value: Any) -> None:
    if not isinstance(value, str) or not _INTERFACE.match(value):
        raise Invalid(field, "not an interface name or pattern")


def check_community(field: str, value: Any) -> None:
    """A standard (`a:b`, 16-bit halves) or large (`a:b:c`, 32-bit parts) BGP community."""
    text = str(value)
    standard, large = STANDARD_COMMUNITY.match(text), LARGE_COMMUNITY.match(text)
    if standard and all(int(part) <= 65535 for part in standard.groups()):
        return
    if large and all(int(part) <= MAX_AS for part in large.groups()):
        return
    raise Invalid(field, "not a BGP community")


def check_password(field: str, value: str) -> None:
    """BIRD prints the password inside `"…"` and its lexer has no escapes: no `"`, no control, format
    or line-separator characters (a newline would end the statement), within the kernel's key length."""
    if '"' in value or any(unicodedata.category(ch) in _UNPRINTABLE or unicodedata.category(ch)[0] == "C"
                           for ch in value):
        raise Invalid(field, "contains a quote or a control character")
    if len(value.encode()) > MAX_PASSWORD_BYTES:
        raise Invalid(field, f"longer than {MAX_PASSWORD_BYTES} bytes")


def check_env(env: Mapping[str, str]) -> None:
    """The settings that reach BIRD from the environment rather than the datastore."""
    router_id = env.get("CALICO_ROUTER_ID", "")
    if router_id and router_id != "hash":
        check_ipv4("CALICO_ROUTER_ID", router_id)
    cluster_ips = env.get("CALICO_ADVERTISE_CLUSTER_IPS", "")
    if cluster_ips:
        check_cidr("CALICO_ADVERTISE_CLUSTER_IPS", cluster_ips)


# -- objects ----------------------------------------------------------------------------------------


def _spec(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise Invalid("value", "not an object")
    if not isinstance(value.get("metadata") or {}, Mapping):
        raise Invalid("metadata", "not an object")
    spec = value.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise Invalid("spec", "not an object")
    return spec


def _list(field: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(field, "not a list")
    return value


def check_node(name: str, value: Mapping[str, Any]) -> None:
    check_name("metadata.name", name)
    bgp = _spec(value).get("bgp") or {}
    if not isinstance(bgp, Mapping):
        raise Invalid("spec.bgp", "not an object")
    check_as("spec.bgp.asNumber", bgp.get("asNumber"))
    if bgp.get("routeReflectorClusterID"):
        check_ipv4("spec.bgp.routeReflectorClusterID", bgp.get("routeReflectorClusterID"))


def check_bgp_configuration(name: str, value: Mapping[str, Any]) -> None:
    check_name("metadata.name", name)
    spec = _spec(value)
    check_as("spec.asNumber", spec.get("asNumber"))
    check_int("spec.listenPort", spec.get("listenPort"), 0, 65535)
    check_bool("spec.nodeToNodeMeshEnabled", spec.get("nodeToNodeMeshEnabled"))
    for version in (4, 6):
        check_int(f"spec.ipv{version}NormalRoutePriority", spec.get(f"ipv{version}NormalRoutePriority"),
                  0, 2147483647)
    for interface in _list("spec.ignoredInterfaces", spec.get("ignoredInterfaces")):
        check_interface("spec.ignoredInterfaces", interface)
    for field in ("serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs"):
        for item in _list(f"spec.{field}", spec.get(field)):
            if not isinstance(item, Mapping):
                raise Invalid(f"spec.{field}", "not an object")
            if item.get("cidr"):
                check_cidr(f"spec.{field}.cidr", item.get("cidr"))
    names = set()
    for community in _list("spec.communities", spec.get("communities")):
        if not isinstance(community, Mapping):
            raise Invalid("spec.communities", "not an object")
        check_community("spec.communities.value", community.get("value"))
        names.add(str(community.get("name")))
    for advert in _list("spec.prefixAdvertisements", spec.get("prefixAdvertisements")):
        if not isinstance(advert, Mapping):
            raise Invalid("spec.prefixAdvertisements", "not an object")
        if advert.get("cidr"):
            check_cidr("spec.prefixAdvertisements.cidr", advert.get("cidr"))
        for community in _list("spec.prefixAdvertisements.communities", advert.get("communities")):
            # A community is a literal or the name of one defined above; nothing else is printed.
            if str(community) not in names:
                check_community("spec.prefixAdvertisements.communities", community)


def check_bgp_peer(name: str, value: Mapping[str, Any]) -> None:
    check_name("metadata.name", name)
    spec = _spec(value)
    check_as("spec.asNumber", spec.get("asNumber"))
    check_as("spec.localASNumber", spec.get("localASNumber"))
    check_int("spec.ttlSecurity", spec.get("ttlSecurity"), 0, 255)
    check_int("spec.numAllowedLocalASNumbers", spec.get("numAllowedLocalASNumbers"), 0, 255)
    check_bool("spec.keepOriginalNextHop", spec.get("keepOriginalNextHop"))
    if spec.get("reachableBy"):
        check_ip("spec.reachableBy", spec.get("reachableBy"))
    for filter_name in _list("spec.filters", spec.get("filters")):
        check_name("spec.filters", filter_name)


def check_pool(value: Any) -> None:
    if not isinstance(value, Mapping):
        raise Invalid("value", "not an object")
    check_cidr("cidr", value.get("cidr"))
    check_bool("disableBGPExport", value.get("disableBGPExport"))


def check_block_state(value: Any) -> None:
    """A block affinity: an object whose state is one IPAM writes."""
    if not isinstance(value, Mapping):
        raise Invalid("value", "not an object")
    if str(value.get("state") or "") not in BLOCK_STATES:
        raise Invalid("state", "not a block affinity state")
