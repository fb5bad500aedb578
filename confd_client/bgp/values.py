"""Calico's and Go's value forms as confd prints them: AS numbers, durations, bools, IPs, BIRD symbols.

Quirks are copied on purpose (Go `%v` of bools, `math.Round` of durations); each is commented where
it happens. Whether a value may reach BIRD at all is `validate`'s question, not this module's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any

from typha.model.convert.calico import duration_ns

MAX_BIRD_SYMBOL = 64
# Addresses and CIDRs as text: hex digits, dots and colons only. Python's ipaddress accepts an IPv6
# scope (`fe80::1%<anything>`) and prints it back, which would carry arbitrary text into BIRD.
_IP_TEXT = re.compile(r"^[0-9A-Fa-f:.]+$")


def go_duration_seconds(text: Any) -> int | None:
    """Seconds of a Go duration string ("10s", "2m30s"), rounded half away from zero like math.Round;
    None when it does not parse (confd then leaves the setting out)."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return int(text)  # not expected from the API, but harmless
    try:
        ns = duration_ns(str(text))  # as time.ParseDuration: no surrounding whitespace
    except ValueError:
        return None
    whole, rest = divmod(abs(ns), 10**9)
    seconds = whole + (1 if 2 * rest >= 10**9 else 0)
    return -seconds if ns < 0 else seconds


def go_bool(value: bool) -> str:
    """Go's %v of a bool, which the filter calls print."""
    return "true" if value else "false"


def as_string(value: Any) -> str:
    """numorstring.ASNumber.String(): stored as an integer, printed in plain notation."""
    if value is None or value == "":
        return ""
    if isinstance(value, str) and "." in value:
        high, low = value.split(".", 1)
        return str((int(high) << 16) + int(low))
    return str(int(value))


def hash_to_ipv4(name: str) -> str:
    """template.HashToIPv4: the first four bytes of sha256(name), kept out of the multicast range."""
    digest = hashlib.sha256(name.encode()).digest()
    first = digest[0] - 32 if digest[0] > 223 else digest[0]
    return f"{first}.{digest[1]}.{digest[2]}.{digest[3]}"


def truncate_and_hash(name: str, max_len: int) -> str:
    """template.TruncateAndHashName: keep a prefix and append `_` + 16 upper-hex chars of sha256(name)."""
    if len(name) <= max_len:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest().upper()[:16]
    return f"{name[: max_len - len(digest) - 1]}_{digest}"


def split_ip_port(text: str) -> tuple[str, int]:
    """parseIPPort: `ip`, `ip:port` or `[v6]:port`; anything else is returned whole with port 0."""
    if text.startswith("["):
        end = text.find("]")
        if end > 0 and text[end + 1 : end + 2] == ":":
            host, port = text[1:end], text[end + 2 :]
        else:
            return text, 0
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        return text, 0
    if not port.isascii() or not port.isalnum():
        return text, 0  # int() would also take whitespace and `_` separators
    try:
        number = int(port, 0)
    except ValueError:
        return text, 0
    return (host, number) if 0 <= number <= 65535 else (text, 0)


def parse_ip(text: str) -> str | None:
    """The Go string form of an IP (lowercase, compressed v6), or None when it does not parse
    (as net.ParseIP: no surrounding whitespace)."""
    if not _IP_TEXT.match(text):
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_interface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    """An `address/len` (a node's BGP address), or None when it is not one."""
    address, _, length = text.partition("/")
    if not _IP_TEXT.match(address) or not length.isascii() or not length.isdigit():
        return None
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        return None


def is_ip_text(text: str) -> bool:
    """Whether `text` is an IP address exactly as written (no whitespace, no scope)."""
    return bool(_IP_TEXT.match(text)) and parse_ip(text) is not None


def ip_version(text: str) -> int:
    return 6 if ":" in text else 4
