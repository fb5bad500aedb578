"""Render the desired state as Felix-shaped iptables tables and ipset scripts (docs/calico/felix.md §2).

One job per module: `table` (a table, its text, the last grammar check), `policy` (a Calico rule →
iptables rules), `endpoints` (endpoint and dispatch chains), `static` (the filter, nat, raw and
mangle tables around them, per IP family), `ipsets` (the desired sets and their `ipset` text),
`routes` (routes as text).
The dataplane calls these once per apply; names come from `felix_client.names`, the FelixConfiguration
fields that shape the rules (deny action, log prefix and rate, NAT outgoing) from `FelixSettings`.
Felix's own rules tests run against these renderers as data: tests/felix_client/felix_tables/.

Deliberate differences from Felix, all with the same packet semantics:
- no `cali:<hash>` rule comments (Felix uses them to diff rules in place; the dataplane hashes whole
  chains and rewrites a chain that changed, `felix_client/dataplane/iptables.py`);
- each rule of a policy or profile chain carries the owner's comment (Felix puts it on the chain's
  first rule only);
- dispatch chains are a one-level tree keyed by the interface name's next character;
- a rule with an HTTP match is rendered only when that cannot widen it (Deny, Log): Felix leaves the
  match to the application-layer sidecar, which felix_client does not have (an Allow with one is
  left out, a Pass with one fails closed as a deny, `calc.model.fail_closed`);
- the LOG prefix is cut to the 29 bytes the kernel keeps.
Several CIDRs on a side, CIDRs with notNets, and several port alternatives (named ports, port lists
past one multiport) are Felix's scratch-mark match blocks (`policy._MatchBlocks`), on felix_client's
scratch mark bits.
"""

from felix_client.rules.ipsets import (
    IPSet,
    desired_ipsets,
    render_ipset_destroy,
    render_ipset_restore,
    render_ipset_save,
)
from felix_client.rules.policy import render_rule, render_rules
from felix_client.rules.routes import render_routes
from felix_client.rules.static import (
    render_filter,
    render_ip6tables,
    render_iptables,
    render_mangle,
    render_nat,
    render_raw,
    render_tables,
)
from felix_client.rules.table import GUARD_DROP, Table

__all__ = [
    "GUARD_DROP",
    "IPSet",
    "Table",
    "desired_ipsets",
    "render_filter",
    "render_ip6tables",
    "render_ipset_destroy",
    "render_ipset_restore",
    "render_ipset_save",
    "render_iptables",
    "render_mangle",
    "render_nat",
    "render_raw",
    "render_routes",
    "render_rule",
    "render_rules",
    "render_tables",
]
