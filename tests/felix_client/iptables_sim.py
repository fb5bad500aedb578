"""A packet walker for the subset of iptables that felix_client renders: enough to ask "would this
TCP/UDP packet between two workloads be accepted?" of rendered text, without a kernel.

It evaluates the filter table's FORWARD path for a NEW connection: conntrack state NEW, no local
addresses, marks starting at zero (raw PREROUTING clears Calico's bits). Unknown match options make
it fail loudly rather than guess.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132, "udplite": 136}


@dataclass
class Packet:
    src: str
    dst: str
    proto: str  # tcp | udp
    sport: int
    dport: int
    iif: str
    oif: str
    mark: int = 0


def _proto_number(text: str) -> int:
    return PROTOCOLS[text] if text in PROTOCOLS else int(text)


def _iface_match(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _in_ports(spec: str, port: int) -> bool:
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if int(low) <= port <= int(high or low):
            return True
    return False


class Dataplane:
    def __init__(self, iptables_save: str, ipsets: dict[str, tuple[str, set[str]]]) -> None:
        self.chains: dict[str, list[list[str]]] = {}
        table = ""
        for line in iptables_save.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif table == "filter" and line.startswith(":"):
                self.chains.setdefault(line[1:].split()[0], [])
            elif table == "filter" and line.startswith("-A "):
                tokens = shlex.split(line)
                self.chains.setdefault(tokens[1], []).append(tokens[2:])
        self.ipsets = ipsets
        self.hits: list[tuple[str, int]] = []  # (chain, rule index) of every verdict/target taken

    @classmethod
    def from_text(cls, iptables_save: str, ipset_save: str) -> Dataplane:
        sets: dict[str, tuple[str, set[str]]] = {}
        for line in ipset_save.splitlines():
            parts = line.split()
            if parts[0] == "create":
                sets[parts[1]] = (parts[2], set())
            elif parts[0] == "add":
                sets[parts[1]][1].add(parts[2])
        return cls(iptables_save, sets)

    def _in_set(self, name: str, dirs: str, pkt: Packet) -> bool:
        kind, members = self.ipsets[name]
        first = dirs.split(",")[0]
        ip = pkt.src if first == "src" else pkt.dst
        if kind == "hash:ip,port":
            port = pkt.sport if dirs.split(",")[1] == "src" else pkt.dport
            return f"{ip},{pkt.proto}:{port}" in members
        address = ipaddress.IPv4Address(ip)
        return any(address in ipaddress.IPv4Network(m) for m in members)

    def _matches(self, rule: list[str], pkt: Packet) -> tuple[bool, list[str]]:
        """(whether the rule's matches hold, the target tokens)."""
        i, negate = 0, False
        while i < len(rule):
            tok = rule[i]
            if tok in ("-j", "-g"):
                return True, rule[i:]
            if tok == "!":
                negate = True
                i += 1
                continue
            arg = rule[i + 1] if i + 1 < len(rule) else ""
            step = 2
            if tok == "-m":
                ok = True
            elif tok in ("-i", "-o"):
                ok = _iface_match(arg, pkt.iif if tok == "-i" else pkt.oif)
            elif tok in ("-s", "-d"):
                ok = ipaddress.IPv4Address(pkt.src if tok == "-s" else pkt.dst) in ipaddress.IPv4Network(arg)
            elif tok == "-p":
                ok = _proto_number(arg) == PROTOCOLS[pkt.proto]
            elif tok == "--comment":
                ok = True
            elif tok == "--ctstate":
                ok = "NEW" in arg.split(",")
            elif tok == "--mark":
                value, mask = (int(x, 16) for x in arg.split("/"))
                ok = pkt.mark & mask == value
            elif tok == "--match-set":
                ok = self._in_set(arg, rule[i + 2], pkt)
                step = 3
            elif tok in ("--dports", "--sports"):
                ok = _in_ports(arg, pkt.dport if tok == "--dports" else pkt.sport)
            elif tok in ("--dst-type", "--src-type"):
                ok = False  # workload addresses are never local on the forward path
            elif tok == "--icmp-type":
                ok = pkt.proto == "icmp"
            else:
                raise ValueError(f"simulator does not know {tok!r} in {rule}")
            if ok == negate:
                return False, []
            negate = False
            i += step
        return True, []

    def run(self, chain: str, pkt: Packet) -> str | None:
        """ACCEPT/DROP, or None when the chain returns."""
        for index, rule in enumerate(self.chains[chain]):
            ok, target = self._matches(rule, pkt)
            if not ok or not target:
                continue
            kind, name = target[0], target[1]
            if name == "MARK":
                value, mask = (int(x, 16) for x in target[3].split("/"))
                pkt.mark = (pkt.mark & ~mask) ^ value
                continue
            if name == "LOG":
                continue
            self.hits.append((chain, index))
            if name in ("ACCEPT", "DROP"):
                return name
            if name == "RETURN":
                return None
            verdict = self.run(name, pkt)
            if verdict is not None or kind == "-g":
                # A goto'd chain that returns goes back to *our* caller.
                return verdict
        return None

    def forward(self, pkt: Packet) -> str:
        pkt.mark = 0
        return self.run("FORWARD", pkt) or "ACCEPT"  # the built-in chain's policy
