"""BGPFilters as BIRD functions, and the filter text each peering's import and export runs.

Upstream: bgpFilterBIRDFuncs and the filter parts of buildPeerFromData (confd's template funcs).
A filter is checked when the store takes it in (`check_filter`): a filter that would not render, or
whose values break their grammar, is rejected whole, and peers that name it are rejected with it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from confd_client.bgp.validate import (
    Invalid,
    check_as,
    check_cidr,
    check_community,
    check_int,
    check_interface,
    check_name,
)
from confd_client.bgp.values import MAX_BIRD_SYMBOL, as_string, go_bool, truncate_and_hash

if TYPE_CHECKING:
    from confd_client.bgp.store import BGPStore

log = logging.getLogger(__name__)

BIRD_INT_MAX = 2147483647  # template.BirdIntMaxValue
OVERRIDE_PREFERENCE = 200  # birdOverridePreference
DIRECTIONS = ("import", "export")


def filter_function_name(filter_name: str, direction: str, version: int) -> str:
    """'bgp_<name>_<direction>FilterV<n>', with the name shortened to fit BIRD's 64-char symbols."""
    overhead = len(f"bgp__{direction}FilterV{version}")
    return f"'bgp_{truncate_and_hash(filter_name, MAX_BIRD_SYMBOL - overhead)}_{direction}FilterV{version}'"


def _condition_cidr(rule: Mapping[str, Any], version: int) -> str:
    operators = {"Equal": "=", "NotEqual": "!=", "In": "~", "NotIn": "!~"}
    op = operators.get(str(rule.get("matchOperator") or ""))
    if op is None:
        raise ValueError(f"unexpected operator {rule.get('matchOperator')!r}")
    cidr = str(rule["cidr"])
    prefix = rule.get("prefixLength")
    if prefix:
        network = ipaddress.ip_network(cidr, strict=False)
        low = network.prefixlen
        high = 32 if network.version == 4 else 128
        if prefix.get("min") is not None:
            low = max(low, int(prefix["min"]))
        if prefix.get("max") is not None:
            high = min(high, int(prefix["max"]))
        cidr = f"[ {cidr}{{{low},{high}}} ]"
    return f"(net {op} {cidr})"


def _community_tuple(value: str) -> tuple[str, str]:
    parts = str(value).split(":")
    if len(parts) == 2:
        return f"({parts[0]}, {parts[1]})", "bgp_community"
    if len(parts) == 3:
        return f"({parts[0]}, {parts[1]}, {parts[2]})", "bgp_large_community"
    raise ValueError(f"invalid community {value!r}")


def _filter_rule(rule: Mapping[str, Any], version: int) -> str:
    action = str(rule.get("action") or "")
    if action not in ("Accept", "Reject"):
        raise ValueError(f"unexpected action {action!r}")
    conditions = []
    if rule.get("cidr"):
        conditions.append(_condition_cidr(rule, version))
    if rule.get("source"):
        if rule["source"] != "RemotePeers":
            raise ValueError(f"unexpected source {rule['source']!r}")
        conditions.append("((defined(source))&&(source ~ [ RTS_BGP ]))")
    if rule.get("interface"):
        conditions.append(f'((defined(ifname))&&(ifname ~ "{rule["interface"]}"))')
    communities = (rule.get("communities") or {}).get("values") or []
    if communities:
        value, attribute = _community_tuple(communities[0])
        conditions.append(f"({value} ~ {attribute})")
    as_path = [as_string(asn) for asn in rule.get("asPathPrefix") or []]
    if as_path:
        conditions.append(f"(bgp_path ~ [= {' '.join(as_path)} * =])")
    if rule.get("priority") is not None:
        local_pref = BIRD_INT_MAX - int(rule["priority"])
        conditions.append(f"(defined(bgp_local_pref)&&(bgp_local_pref = {local_pref}))")
    body = []
    for operation in rule.get("operations") or []:
        if operation.get("addCommunity"):
            value, attribute = _community_tuple(operation["addCommunity"]["value"])
            body.append(f"{attribute}.add({value});")
        elif operation.get("prependASPath"):
            # BIRD prepends one AS at a time, so the last prepend ends up first: go in reverse.
            body.extend(f"bgp_path.prepend({as_string(asn)});"
                        for asn in reversed(operation["prependASPath"].get("prefix") or []))
        elif operation.get("setPriority"):
            body.append(f"bgp_local_pref = {BIRD_INT_MAX - int(operation['setPriority']['value'])};")
        else:
            raise ValueError("BGPFilter operation has no field set")
    body.append(f"{action.lower()};")
    statement = " ".join(body)
    if conditions:
        statement = f"if ({'&&'.join(conditions)}) then {{ {statement} }}"
    peer_type = rule.get("peerType")
    if peer_type not in (None, "", "iBGP", "eBGP"):
        raise ValueError(f"unexpected peerType {peer_type!r}")
    if peer_type == "iBGP":
        statement = f"if (is_same_as) then {{ {statement} }}"
    elif peer_type == "eBGP":
        statement = f"if (!is_same_as) then {{ {statement} }}"
    return f"  {statement}"


def _check_rule_values(where: str, rule: Mapping[str, Any]) -> None:
    """The grammar of every rule value `_filter_rule` prints."""
    if rule.get("cidr"):
        check_cidr(f"{where}.cidr", rule.get("cidr"))
    prefix = rule.get("prefixLength") or {}
    for bound in ("min", "max"):
        check_int(f"{where}.prefixLength.{bound}", prefix.get(bound), 0, 128)
    if rule.get("interface"):
        check_interface(f"{where}.interface", rule.get("interface"))
    for community in (rule.get("communities") or {}).get("values") or []:
        check_community(f"{where}.communities", community)
    for asn in rule.get("asPathPrefix") or []:
        check_as(f"{where}.asPathPrefix", asn)
    check_int(f"{where}.priority", rule.get("priority"), 0, BIRD_INT_MAX)
    for operation in rule.get("operations") or []:
        if operation.get("addCommunity"):
            check_community(f"{where}.operations.addCommunity", operation["addCommunity"].get("value"))
        if operation.get("prependASPath"):
            for asn in operation["prependASPath"].get("prefix") or []:
                check_as(f"{where}.operations.prependASPath", asn)
        if operation.get("setPriority"):
            check_int(f"{where}.operations.setPriority", operation["setPriority"].get("value"), 0, BIRD_INT_MAX)


def check_filter(name: str, value: Mapping[str, Any]) -> None:
    """Raises Invalid unless every rule of the BGPFilter renders from values within their grammar."""
    check_name("metadata.name", name)
    if not isinstance(value, Mapping) or not isinstance(value.get("spec") or {}, Mapping):
        raise Invalid("spec", "not an object")
    spec = value.get("spec") or {}
    for version in (4, 6):
        for direction in DIRECTIONS:
            where = f"spec.{direction}V{version}"
            rules = spec.get(f"{direction}V{version}") or []
            try:
                for rule in rules:
                    _check_rule_values(where, rule)
                    _filter_rule(rule, version)
            except Invalid:
                raise
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise Invalid(where, str(exc) or type(exc).__name__) from None


def filter_functions(store: BGPStore, version: int) -> list[str]:
    """bgpFilterBIRDFuncs: a function per direction of every BGPFilter, sorted by key."""
    lines: list[str] = []
    for name in sorted(store.filters):
        spec = store.filters[name].get("spec") or {}
        directions = [d for d in DIRECTIONS if spec.get(f"{d}V{version}")]
        if not directions:
            continue
        lines.append(f"# v{version} BGPFilter {name}")
        for direction in directions:
            rules = spec[f"{direction}V{version}"]
            fn = filter_function_name(name, direction, version)
            params = "bool is_same_as" if any(rule.get("peerType") for rule in rules) else ""
            lines.append(f"function {fn}({params}) {{")
            lines.extend(_filter_rule(rule, version) for rule in rules)
            lines.append("}")
    return lines or [f"# No v{version} BGPFilters configured"]


def _filter_lines(store: BGPStore, filters: list[str], version: int, same_as: bool, direction: str) -> list[str]:
    """The calls of BGPFilter functions a peer's import or export filter makes, in BGPPeer order."""
    lines = []
    for name in filters:
        resource = store.filters.get(name)
        if resource is None:
            continue
        rules = (resource.get("spec") or {}).get(f"{direction}V{version}") or []
        if not rules:
            continue
        fn = filter_function_name(name, direction, version)
        if any(rule.get("peerType") for rule in rules):
            lines.append(f"{fn}({go_bool(same_as)});")
        else:
            lines.append(f"{fn}();")
    return lines


def import_filter(store: BGPStore, filters: list[str], version: int, same_as: bool, priority: int) -> str:
    lines = _filter_lines(store, filters, version, same_as, "import")
    lines += [
        f"if (defined(bgp_local_pref)&&(bgp_local_pref > {BIRD_INT_MAX - priority})) then",
        f"  preference = {OVERRIDE_PREFERENCE};",
        "accept;",
    ]
    return "\n    ".join(lines)


def export_filter(store: BGPStore, filters: list[str], version: int, same_as: bool, priority: int) -> str:
    # Give every route both krt_metric and bgp_local_pref: filters match on the latter, and
    # calico_aggr() lets elevated /32s (krt_metric below the normal priority) escape aggregation.
    lines = [
        "if (defined(source) && source = RTS_BGP && defined(bgp_local_pref)) then {",
        f"  krt_metric = {BIRD_INT_MAX} - bgp_local_pref;",
        "} else {",
        f"  if (!defined(krt_metric)) then {{ krt_metric = {priority}; }}",
        f"  bgp_local_pref = {BIRD_INT_MAX} - krt_metric;",
        "}",
    ]
    lines += _filter_lines(store, filters, version, same_as, "export")
    lines += [f"calico_export_to_bgp_peers({go_bool(same_as)});", "reject;"]
    return "\n    ".join(lines)
