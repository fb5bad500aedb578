"""Every name felix_client gives the kernel: chain and IP-set prefixes, mark bits, devices, ports.

The role of Felix's `felix/rules/rule_defs.go` (docs/calico/felix.md §2): one home, so a prefix
or a mark is spelled once and the renderer, the calculation and the dataplane cannot disagree.
The helpers at the end turn Calico object names into kernel names the way Felix does
(`hashutils.GetLengthLimitedID`), with one deliberate addition: a name holding characters that
could change the meaning of an `iptables-restore` line is always hashed (see `length_limited_id`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from typha.model.keys import PolicyKey

# --- limits -------------------------------------------------------------------------------------

# iptables allows 28 characters plus the NUL; ipset 31 (IPSET_MAXNAMELEN 32 with the NUL).
MAX_CHAIN_NAME_LENGTH: Final = 28
MAX_IPSET_NAME_LENGTH: Final = 31
# iptables' comment match holds 256 bytes; Felix cuts comments there (iptables/renderer.go).
MAX_COMMENT_LENGTH: Final = 256
# The LOG target's --log-prefix holds 29 characters (Felix appends ": " to LogPrefix).
MAX_LOG_PREFIX_LENGTH: Final = 29

# --- chains -------------------------------------------------------------------------------------

CHAIN_PREFIX: Final = "cali-"
CHAIN_INPUT: Final = "cali-INPUT"
CHAIN_FORWARD: Final = "cali-FORWARD"
CHAIN_OUTPUT: Final = "cali-OUTPUT"
CHAIN_PREROUTING: Final = "cali-PREROUTING"
CHAIN_POSTROUTING: Final = "cali-POSTROUTING"
POLICY_INBOUND_PREFIX: Final = "cali-pi-"
POLICY_OUTBOUND_PREFIX: Final = "cali-po-"
PROFILE_INBOUND_PREFIX: Final = "cali-pri-"
PROFILE_OUTBOUND_PREFIX: Final = "cali-pro-"
TO_WORKLOAD_PREFIX: Final = "cali-tw-"
FROM_WORKLOAD_PREFIX: Final = "cali-fw-"
FROM_WL_DISPATCH: Final = "cali-from-wl-dispatch"
TO_WL_DISPATCH: Final = "cali-to-wl-dispatch"
WL_TO_HOST: Final = "cali-wl-to-host"
FROM_HOST_ENDPOINT: Final = "cali-from-host-endpoint"
TO_HOST_ENDPOINT: Final = "cali-to-host-endpoint"
FROM_HEP_FORWARD: Final = "cali-from-hep-forward"
TO_HEP_FORWARD: Final = "cali-to-hep-forward"
CIDR_BLOCK: Final = "cali-cidr-block"
# Host endpoints (rule_defs.go): per-interface chains and the failsafe chains they jump to first.
TO_HOST_ENDPOINT_PREFIX: Final = "cali-th-"
FROM_HOST_ENDPOINT_PREFIX: Final = "cali-fh-"
TO_HOST_ENDPOINT_FORWARD_PREFIX: Final = "cali-thfw-"
FROM_HOST_ENDPOINT_FORWARD_PREFIX: Final = "cali-fhfw-"
FAILSAFE_IN: Final = "cali-failsafe-in"  # host endpoint chains jump here first (FailsafeInboundHostPorts)
FAILSAFE_OUT: Final = "cali-failsafe-out"
# The interface name a `*` host endpoint is bound to (endpoint_mgr.go allInterfaces): longer than
# IFNAMSIZ, so no real interface can have it.
ALL_INTERFACES: Final = "any-interface-at-all"
RPF_SKIP: Final = "cali-rpf-skip"
FIP_DNAT: Final = "cali-fip-dnat"
FIP_SNAT: Final = "cali-fip-snat"
NAT_OUTGOING: Final = "cali-nat-outgoing"
WORKLOAD_IFACE_PREFIX: Final = "cali"  # FELIX_INTERFACEPREFIX default

# --- IP sets ------------------------------------------------------------------------------------

# Felix's IPv4 sets are "cali40" + ID (main) and "cali4t<n>" temporaries; everything starting with
# "cali4" in the kernel is ours (ipsets.IPVersionConfig).
IPSET_OWNED_PREFIX: Final = "cali4"
IPSET_PREFIX: Final = "cali40"
IPSET_TEMP_PREFIX: Final = "cali4t"
IPSET_CREATE_OPTIONS: Final = "family inet hashsize 1024 maxelem 1048576"
# IPv6: the same IDs behind "cali60" (main) and "cali6t<n>" (temporaries), family inet6 (ipsets.NewIPVersionConfig
# for IPFamilyV6); everything starting with "cali6" is ours.
IPSET_V6_OWNED_PREFIX: Final = "cali6"
IPSET_V6_PREFIX: Final = "cali60"
IPSET_V6_TEMP_PREFIX: Final = "cali6t"
IPSET_V6_CREATE_OPTIONS: Final = "family inet6 hashsize 1024 maxelem 1048576"
# The static sets' IDs (rule_defs.go IPSetIDNATOutgoingMasqPools, IPSetIDNetworkPools, IPSetIDAllHostNets,
# IPSetIDAllVXLANSourceNets).
IPSET_ID_MASQ_POOLS: Final = "masq-ipam-pools"
IPSET_ID_ALL_POOLS: Final = "network-ip-pools"
IPSET_ID_ALL_HOSTS: Final = "all-hosts-net"
IPSET_ID_VXLAN_HOSTS: Final = "all-vxlan-net"
# Set-ID prefixes of hash.MakeUniqueID (rule_scanner.go): selectors, named ports, services.
SET_ID_SELECTOR: Final = "s"
SET_ID_NAMED_PORT: Final = "n"
SET_ID_SERVICE: Final = "svc"  # destination service: hash:ip,port of the endpoints and ports
SET_ID_SERVICE_NO_PORT: Final = "svcnoport"  # source service: hash:net of the endpoints

# --- marks -------------------------------------------------------------------------------------

# FelixConfiguration IptablesMarkMask's default: the bits Felix may use in the packet mark.
DEFAULT_MARK_MASK: Final = 0xFFFF0000
# felix/dataplane/driver.go allocates these before the endpoint mark; fewer bits in the mask and
# Felix stops ("Not enough mark bits available").
MIN_MARK_BITS: Final = 5


def _mask_bits(mask: int) -> list[int]:
    return [1 << shift for shift in range(32) if mask & (1 << shift)]


@dataclass(frozen=True, slots=True)
class Marks:
    """Felix's mark bits, allocated from IptablesMarkMask as felix/dataplane/driver.go does with
    markbits.MarkBitsManager: the mask's set bits from the lowest up, one each to accept, pass, drop,
    scratch0 and scratch1, and every remaining bit to the endpoint mark."""

    mask: int
    accept: int
    pass_: int
    drop: int
    scratch0: int
    scratch1: int
    endpoint: int

    @classmethod
    def from_mask(cls, mask: int) -> Marks:
        """ValueError for a mask Felix could not allocate from (outside 32 bits, or too few bits)."""
        return _marks_from_mask(mask)

    @property
    def all(self) -> int:
        """allCalicoMarkBits (felix/rules/static.go): what the static chains clear first."""
        return self.accept | self.pass_ | self.scratch0 | self.scratch1

    @property
    def clear_forward(self) -> int:
        """What cali-FORWARD clears: everything but accept (an earlier hook may already have accepted)."""
        return self.all & ~self.accept

    def translate(self, value: int) -> int:
        """A mark value written in the default allocation (`DEFAULT_MARKS`, the `MARK_*` constants), as
        this allocation spells it: the n-th bit of the default mask becomes the n-th bit of this mask
        (markbits MapMarkToNumber, then MapNumberToMark). Felix's marks are exactly such n-th bits, so
        a renderer can keep writing the constants. Bits outside the default mask are kept."""
        if self.mask == DEFAULT_MARK_MASK:
            return value
        out = value & ~DEFAULT_MARK_MASK
        for default_bit, bit in zip(_mask_bits(DEFAULT_MARK_MASK), _mask_bits(self.mask), strict=False):
            if value & default_bit:
                out |= bit
        return out


@functools.lru_cache(maxsize=16)  # the settings are re-read at every snapshot; masks are few
def _marks_from_mask(mask: int) -> Marks:
    if not 0 < mask <= 0xFFFFFFFF:
        raise ValueError(f"{mask:#x} is not a non-zero 32-bit mask")
    bits = _mask_bits(mask)
    if len(bits) < MIN_MARK_BITS:
        raise ValueError(f"{mask:#x} has {len(bits)} bits set; Felix needs at least {MIN_MARK_BITS} "
                         "(accept, pass, drop, scratch0, scratch1)")
    accept, pass_, drop, scratch0, scratch1 = bits[:MIN_MARK_BITS]
    endpoint = 0
    for bit in bits[MIN_MARK_BITS:]:
        endpoint |= bit
    return Marks(mask, accept, pass_, drop, scratch0, scratch1, endpoint)


DEFAULT_MARKS: Final = Marks.from_mask(DEFAULT_MARK_MASK)
# The default allocation by name: what the renderers write (`Marks.translate` moves it to another mask).
MARK_ACCEPT: Final = DEFAULT_MARKS.accept  # 0x10000
MARK_PASS: Final = DEFAULT_MARKS.pass_  # 0x20000
MARK_DROP: Final = DEFAULT_MARKS.drop  # 0x40000: Felix's deny mark, a Deny rule sets it, then drops on it (policy.go)
MARK_SCRATCH0: Final = DEFAULT_MARKS.scratch0  # 0x80000
MARK_SCRATCH1: Final = DEFAULT_MARKS.scratch1  # 0x100000
MARK_ALL: Final = DEFAULT_MARKS.all  # 0x1B0000: accept | pass | scratch0 | scratch1
MARK_CLEAR_FORWARD: Final = DEFAULT_MARKS.clear_forward  # 0x1A0000

# --- devices, ports, routes ---------------------------------------------------------------------

IPIP_DEVICE: Final = "tunl0"
VXLAN_DEVICE: Final = "vxlan.calico"
VXLAN_V6_DEVICE: Final = "vxlan-v6.calico"
VXLAN_PORT: Final = 4789
VXLAN_VNI: Final = 4096
VXLAN_MTU: Final = 1410  # VXLANMTU when FelixConfiguration leaves it 0
# VXLANMTUV6 0 means the parent interface's MTU less this (int_dataplane.go vxlanV6MTUOverhead).
VXLAN_V6_MTU_OVERHEAD: Final = 70
FELIX_ROUTE_PROTO: Final = 80  # RTPROT of the routes Felix owns ("proto 80")
RTPROT_BOOT: Final = 3  # Felix's DeviceRouteProtocol for local workload routes
MULTIPORT_SLOTS: Final = 15  # iptables' multiport limit; a range takes two slots

KIND_SHORT: Final = {
    "KubernetesNetworkPolicy": "knp",
    "NetworkPolicy": "np",
    "GlobalNetworkPolicy": "gnp",
}

# Characters that may appear in an unhashed chain name: those of Kubernetes/Calico names plus the
# '/' and ':' Felix's IDs use. Anything else (whitespace, quotes, '!', '-' first, NUL, non-ASCII)
# could split, quote or negate an iptables-restore argument.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+=%,~-]*")
# escapeComment in felix/iptables/renderer.go: everything outside `[\w @%+=:,./-]` becomes "_".
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9_ @%+=:,./-]")


@functools.lru_cache(maxsize=65536)  # the same names are asked for at every apply
def length_limited_id(prefix: str, suffix: str, max_length: int = MAX_CHAIN_NAME_LENGTH) -> str:
    """hashutils.GetLengthLimitedID: prefix + suffix, or prefix + "_" + b64url(sha256(suffix)) cut to fit.

    A suffix that starts with the separator is hashed too (it cannot pose as a hash), and so is one
    with a character outside `_SAFE_NAME`: Calico's validation never lets such a name reach Felix,
    but a CRD written directly can reach us, and the hash keeps it from becoming iptables syntax."""
    if len(prefix) + len(suffix) <= max_length and _SAFE_NAME.fullmatch(suffix):
        return prefix + suffix
    digest = base64.urlsafe_b64encode(hashlib.sha256(suffix.encode("utf-8", "surrogatepass")).digest())
    return prefix + "_" + digest.rstrip(b"=").decode()[: max_length - len(prefix) - 1]


def policy_id(key: PolicyKey) -> str:
    """felix/types/policy_id.go PolicyID.ID(): `<kind short>/<namespace>/<name>`, or `<kind short>/<name>`
    for a global kind (felix_client wrote `gnp//<name>` before; Felix's form wins, and with it the
    hashed chain names of global policies)."""
    short = KIND_SHORT.get(key.kind, key.kind)
    return f"{short}/{key.namespace}/{key.name}" if key.namespace else f"{short}/{key.name}"


def policy_chain_name(key: PolicyKey, inbound: bool) -> str:
    return length_limited_id(POLICY_INBOUND_PREFIX if inbound else POLICY_OUTBOUND_PREFIX, policy_id(key))


def profile_chain_name(profile: str, inbound: bool) -> str:
    return length_limited_id(PROFILE_INBOUND_PREFIX if inbound else PROFILE_OUTBOUND_PREFIX, profile)


def endpoint_chain_name(iface: str, inbound: bool) -> str:
    # Interface names are validated (`felix_client.calc.validate.interface_name`) before they get here.
    return (TO_WORKLOAD_PREFIX if inbound else FROM_WORKLOAD_PREFIX) + iface


def host_endpoint_chain_name(prefix: str, iface: str) -> str:
    """EndpointChainName: prefix + interface, hashed past 28 characters (`cali-thfw-any-interface-at-all`
    is one such)."""
    return length_limited_id(prefix, iface)


def ipset_name(set_id: str, version: int = 4) -> str:
    """NameForMainIPSet: the family's prefix and the ID, cut at ipset's limit (the same ID names the
    IPv4 and the IPv6 set of a selector)."""
    return ((IPSET_V6_PREFIX if version == 6 else IPSET_PREFIX) + set_id)[:MAX_IPSET_NAME_LENGTH]


def temp_ipset_name(n: int, version: int = 4) -> str:
    return f"{IPSET_V6_TEMP_PREFIX if version == 6 else IPSET_TEMP_PREFIX}{n}"


def ipset_version(name: str) -> int:
    """The family of one of our set names (4 or 6); 0 for a name that is not ours."""
    if name.startswith(IPSET_V6_OWNED_PREFIX):
        return 6
    return 4 if name.startswith(IPSET_OWNED_PREFIX) else 0


@functools.lru_cache(maxsize=65536)
def escape_comment(text: str) -> str:
    """A rule comment as Felix writes it: unsafe characters replaced, cut at iptables' limit."""
    return _COMMENT_UNSAFE.sub("_", text)[:MAX_COMMENT_LENGTH]


MASQ_SET: Final = ipset_name(IPSET_ID_MASQ_POOLS)
POOLS_SET: Final = ipset_name(IPSET_ID_ALL_POOLS)
HOSTS_SET: Final = ipset_name(IPSET_ID_ALL_HOSTS)
VXLAN_HOSTS_SET: Final = ipset_name(IPSET_ID_VXLAN_HOSTS)
MASQ_SET_V6: Final = ipset_name(IPSET_ID_MASQ_POOLS, 6)
POOLS_SET_V6: Final = ipset_name(IPSET_ID_ALL_POOLS, 6)
VXLAN_HOSTS_SET_V6: Final = ipset_name(IPSET_ID_VXLAN_HOSTS, 6)
