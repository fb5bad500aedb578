"""Node agent consuming typha's `felix` syncer (see docs/architecture.md and docs/calico/felix.md).

- `felix_client.calc`: the incremental calculation. Feed `Calculator.update(key, value_or_None)` in
  stream order; `Calculator.snapshot()` gives the node's `DesiredState` (local endpoints with their
  ordered ingress/egress policies per tier, active policies and profiles, IP sets with members,
  routes, VXLAN neighbours, NAT pools).
- `felix_client.rules`: `DesiredState` → Felix-shaped `iptables-save` text for the filter, nat and raw
  tables, `ipset save`/`ipset restore` text, and `ip route`-style routes.
- `felix_client.agent`: the `felix-client` command (trio). `--dry-run DIR` writes `iptables.save`,
  `ipsets.save`, `routes.txt` and `status.json` for the node; in-process, run `Agent(AgentOptions(...)).run`
  as a trio task. Programming the kernel is not built yet.
"""
