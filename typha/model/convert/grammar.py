"""The grammars of the values a conversion copies from an object into a Calico model value.

Every string that an agent later pastes into a program (an `iptables-restore` line, an ipset name,
a netlink call, a BIRD statement, a Calico selector) is checked here first against the grammar its
reader accepts, so that a value written straight into a CRD, or a bug upstream, cannot add a rule
(issue 17). The grammars are the ones Kubernetes' API server (apimachinery validation) and Calico's
validators (libcalico-go lib/validator/v3, Typha's validator/v1) enforce; see docs/calico/typha.md §2.

Predicates only: the conversions decide what an invalid value means (refusing the object).
"""

from __future__ import annotations

import re
from typing import Final

# Kubernetes DNS-1123: a label (namespaces, most names' components) and a subdomain (object names).
_DNS1123_LABEL: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE: Final = re.compile(rf"{_DNS1123_LABEL}\Z")
_DNS1123_SUBDOMAIN_RE: Final = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*\Z")

# Kubernetes qualified names (label keys) and label values (apimachinery validation.go).
_QUALIFIED_NAME_RE: Final = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_LABEL_VALUE_RE: Final = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")

# Calico's v1 protocol names (Typha's validator/v1 protocolRegex, after Protocol.ToV1 lower-cases).
PROTOCOL_NAMES_V1: Final = frozenset({"tcp", "udp", "icmp", "icmpv6", "sctp", "udplite"})
# numorstring.Protocol.SupportsPorts.
PORT_PROTOCOLS: Final = frozenset({"tcp", "udp", "sctp", 6, 17, 132})

# Linux interface names as Calico's validators allow them (interfaceRegex).
_INTERFACE_RE: Final = re.compile(r"[a-zA-Z0-9_.-]{1,15}\Z")
# Calico's v1 model `name` grammar (profile IDs, tags).
_V1_NAME_RE: Final = re.compile(r"[a-zA-Z0-9_.-]{1,128}\Z")
_ASCII_DIGITS_RE: Final = re.compile(r"[0-9]+\Z")
_PORT_NAME_CHARS_RE: Final = re.compile(r"[-a-z0-9]+\Z")
_HAS_LETTER_RE: Final = re.compile(r"[a-z]")


def dns1123_label(text: object) -> bool:
    """A namespace name, a tier name: at most 63 of [-a-z0-9], alphanumeric at both ends."""
    return isinstance(text, str) and len(text) <= 63 and _DNS1123_LABEL_RE.match(text) is not None


def dns1123_subdomain(text: object) -> bool:
    """An object name (pods, nodes, Calico resources): at most 253, dot-separated DNS-1123 labels."""
    return isinstance(text, str) and len(text) <= 253 and _DNS1123_SUBDOMAIN_RE.match(text) is not None


def label_key(text: object) -> bool:
    """A Kubernetes label key: `[prefix/]name`, prefix a DNS-1123 subdomain, name ≤ 63 characters."""
    if not isinstance(text, str) or not text:
        return False
    prefix, slash, name = text.rpartition("/")
    if slash and not (prefix and dns1123_subdomain(prefix)):
        return False
    return len(name) <= 63 and _QUALIFIED_NAME_RE.match(name) is not None


def label_value(text: object) -> bool:
    """A Kubernetes label value: empty, or ≤ 63 of [-A-Za-z0-9_.] with alphanumeric ends."""
    return isinstance(text, str) and len(text) <= 63 and _LABEL_VALUE_RE.match(text) is not None


def labels(mapping: object) -> bool:
    """Every key and value of a label map is in Kubernetes' grammar."""
    return isinstance(mapping, dict) and all(label_key(k) and label_value(v) for k, v in mapping.items())


def port_name(text: object) -> bool:
    """IANA_SVC_NAME (Kubernetes IsValidPortName): ≤ 15 of [-a-z0-9], a letter, no `--`, no `-` at the ends."""
    return (
        isinstance(text, str)
        and 0 < len(text) <= 15
        and _PORT_NAME_CHARS_RE.match(text) is not None
        and _HAS_LETTER_RE.search(text) is not None
        and "--" not in text
        and not text.startswith("-")
        and not text.endswith("-")
    )


def ascii_digits(text: str) -> bool:
    """Go's `^\\d+$` (ASCII only): str.isdigit() would also take other scripts' digits."""
    return _ASCII_DIGITS_RE.match(text) is not None


def interface_name(text: object) -> bool:
    """A Linux interface name as Calico's validators allow it (at most 15 of [a-zA-Z0-9_.-])."""
    return isinstance(text, str) and _INTERFACE_RE.match(text) is not None


def v1_name(text: object) -> bool:
    """Calico's v1 model `name`: profile IDs and tags."""
    return isinstance(text, str) and _V1_NAME_RE.match(text) is not None


def printable(text: object, limit: int = 253) -> bool:
    """No control characters, no blanks, at most `limit` characters: safe as one token of a line."""
    return (
        isinstance(text, str)
        and 0 < len(text) <= limit
        and text.isprintable()
        and not any(ch.isspace() for ch in text)
    )
