"""The grammar of every value that reaches `iptables-restore`, `ipset restore` or netlink.

Conversion validates objects on the way in (typha.model.convert), but a Calico CRD written directly
or a bug upstream reaches the agent unvalidated; defence in depth means checking again where text
becomes a program. Each checker returns the normalised value or raises `Invalid`. The caller rejects
what Felix would reject (a rule, an endpoint), logs it once and counts it (`felix_client.metrics`);
nothing invalid is ever written, and nothing is widened.

`check_rule_line` and `check_ipset_line` are the last check before the kernel: a line that fails
is a bug in the checks above it, and the renderer replaces it with something that cannot widen.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections import OrderedDict
from typing import Any

from felix_client import metrics

log = logging.getLogger("felix_client.validate")


class Invalid(ValueError):
    """A value outside its grammar; `reason` is a short metric label, the message says which value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --- protocols, ports, ICMP ---------------------------------------------------------------------

# numorstring.Protocol's names (validated upper case in v3, lower case in the v1 model).
PROTOCOL_NAMES = frozenset({"tcp", "udp", "icmp", "icmpv6", "sctp", "udplite"})
_DIGITS = re.compile(r"[0-9]{1,5}")
# A named port: Calico accepts Kubernetes port names (IANA_SVC_NAME) and a little more; the name
# only ever becomes part of a hashed set ID, but it must still be a name and not syntax.
_PORT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,126}[A-Za-z0-9])?")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def protocol(value: Any) -> str | int:
    """A protocol name (lower-cased) or number 0-255."""
    if _is_int(value):
        if 0 <= value <= 255:
            return int(value)
    elif isinstance(value, str):
        if value.lower() in PROTOCOL_NAMES:
            return value.lower()
        if _DIGITS.fullmatch(value) and int(value) <= 255:
            return int(value)
    raise Invalid("bad-protocol", f"invalid protocol {value!r}")


def port(value: Any) -> int | str:
    """A port number, a "lo:hi" range, or a port name."""
    if _is_int(value):
        if 0 <= value <= 65535:
            return int(value)
    elif isinstance(value, str):
        if _DIGITS.fullmatch(value) and int(value) <= 65535:
            return int(value)
        low, sep, high = value.partition(":")
        if sep and _DIGITS.fullmatch(low) and _DIGITS.fullmatch(high):
            lo, hi = int(low), int(high)
            if lo <= hi <= 65535:
                return lo if lo == hi else f"{lo}:{hi}"
        elif not sep and _PORT_NAME.fullmatch(value) and not value.isdigit():
            return value
    raise Invalid("bad-port", f"invalid port {value!r}")


def endpoint_port_number(value: Any) -> int:
    """A named port's number on an endpoint: 1-65535."""
    number = port(value)
    if not isinstance(number, int) or number == 0:
        raise Invalid("bad-port", f"invalid endpoint port {value!r}")
    return number


def port_name(value: Any) -> str:
    if isinstance(value, str) and _PORT_NAME.fullmatch(value) and not value.isdigit():
        return value
    raise Invalid("bad-port", f"invalid port name {value!r}")


def icmp_type(value: Any) -> int:
    # Type 255 is unassigned and the kernel cannot match it (model/rule.go validates lt=255).
    if _is_int(value) and 0 <= value <= 254:
        return int(value)
    raise Invalid("bad-icmp", f"invalid ICMP type {value!r}")


def icmp_code(value: Any) -> int:
    if _is_int(value) and 0 <= value <= 255:
        return int(value)
    raise Invalid("bad-icmp", f"invalid ICMP code {value!r}")


# --- addresses, names ---------------------------------------------------------------------------


def cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR or bare address, normalised (host bits cleared, as Calico's ParseCIDROrIP)."""
    if isinstance(value, str) and value.isascii() and value.strip() == value:
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            pass
    raise Invalid("bad-cidr", f"invalid CIDR {value!r}")


def ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, str) and value.isascii() and value.strip() == value:
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            pass
    raise Invalid("bad-ip", f"invalid IP address {value!r}")


# libcalico-go's interface-name validation (validator.go interfaceRegex), which is also what
# `ip link` accepts without quoting: at most 15 characters (IFNAMSIZ 16 with the NUL).
_IFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def interface_name(value: Any) -> str:
    if isinstance(value, str) and _IFACE.fullmatch(value) and value not in (".", ".."):
        return value
    raise Invalid("bad-interface", f"invalid interface name {value!r}")


# Kubernetes object names (DNS-1123 subdomain), as a service's name and namespace are.
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def k8s_name(value: Any) -> str:
    if isinstance(value, str) and len(value) <= 253 and _DNS1123.fullmatch(value):
        return value
    raise Invalid("bad-name", f"invalid Kubernetes name {value!r}")


_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def mac(value: Any) -> str:
    if isinstance(value, str) and _MAC.fullmatch(value):
        return value.lower()
    raise Invalid("bad-mac", f"invalid MAC address {value!r}")


ENDPOINT_TO_HOST_ACTIONS = frozenset({"ACCEPT", "DROP", "RETURN"})


# --- rejection accounting -----------------------------------------------------------------------

_LOGGED_MAX = 4096
_logged: OrderedDict[tuple[str, str, str], None] = OrderedDict()


def _first_time(key: tuple[str, str, str]) -> bool:
    """True the first time `key` is seen (bounded: the oldest entries are forgotten)."""
    if key in _logged:
        _logged.move_to_end(key)
        return False
    _logged[key] = None
    if len(_logged) > _LOGGED_MAX:
        _logged.popitem(last=False)
    return True


def reject_rule(owner: str, reason: str, detail: str) -> None:
    """A rule left out of the dataplane: counted every time, logged once per owner/reason/detail."""
    metrics.RULES_REJECTED.labels(reason).inc()
    if _first_time((owner, reason, detail)):
        level = logging.INFO if reason == "other-ip-family" else logging.WARNING
        log.log(level, "%s: rule not rendered (%s): %s", owner, reason, detail)


def reject_object(kind: str, path: str, detail: str) -> None:
    metrics.OBJECTS_REJECTED.labels(kind).inc()
    if _first_time((path, kind, detail)):
        log.warning("treating unusable update %s as a deletion: %s", path, detail)


# --- the last check before the kernel -----------------------------------------------------------

# iptables-restore commands and the flags that end a rule's match part: inside one rule they could
# only come from injected text.
_COMMANDS = frozenset({"-A", "--append", "-I", "--insert", "-D", "--delete", "-R", "--replace", "-N", "--new-chain",
                       "-X", "--delete-chain", "-F", "--flush", "-P", "--policy", "-E", "--rename-chain", "-Z",
                       "--zero", "COMMIT"})
_TARGETS = frozenset({"-j", "--jump", "-g", "--goto"})
_CHAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/@+=%,~-]{0,27}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_TOKEN = re.compile(r'"[^"\\\']*"|[^\s"\\\']+')


def chain_name(name: str) -> bool:
    return bool(_CHAIN.fullmatch(name))


@functools.lru_cache(maxsize=65536)  # most rules are the same from one apply to the next
def check_rule_line(chain: str, rule: str) -> str | None:
    """Why `-A chain rule` is not one well-formed rule (None: it is)."""
    if not chain_name(chain):
        return f"bad chain name {chain!r}"
    if not _PRINTABLE.fullmatch(rule):
        return "control or non-ASCII character"
    # The renderer quotes only comments and the log prefix, with `escape_comment`'s characters: a
    # backslash, a single quote or an unbalanced double quote can only come from injected text.
    if _TOKEN.sub("", rule).strip(" "):
        return "quoting the renderer never writes"
    tokens = [t.strip('"') for t in _TOKEN.findall(rule)]
    if any(t in _COMMANDS for t in tokens):
        return "a command inside a rule"
    jumps = [i for i, t in enumerate(tokens) if t in _TARGETS]
    if len(jumps) > 1:
        return "more than one target"
    if jumps and (jumps[0] + 1 >= len(tokens)):
        return "target without a name"
    return None


_SET_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,31}")
_IPSET_TYPES = frozenset({"hash:net", "hash:ip", "hash:ip,port"})
_IP_PORT = re.compile(r"([0-9a-fA-F.:]+),(tcp|udp|sctp):([0-9]{1,5})")


@functools.lru_cache(maxsize=1 << 17)  # members persist from one apply to the next
def ipset_member(set_type: str, member: str) -> bool:
    try:
        if set_type == "hash:ip,port":
            m = _IP_PORT.fullmatch(member)
            return m is not None and ip(m[1]) is not None and 0 < int(m[3]) <= 65535
        if set_type == "hash:ip":
            return ip(member) is not None
        return cidr(member) is not None
    except Invalid:
        return False


def check_ipset(name: str, set_type: str) -> str | None:
    if not _SET_NAME.fullmatch(name):
        return f"bad set name {name!r}"
    if set_type not in _IPSET_TYPES:
        return f"bad set type {set_type!r}"
    return None
