"""Node agent consuming typha's `felix` syncer (docs/architecture.md, docs/calico/felix.md).

Data flows one way: calculation → rendering → dataplane.

- `felix_client.calc`: the incremental calculation. Feed `Calculator.update(key, value_or_None)` in
  stream order; `Calculator.snapshot()` gives the node's `DesiredState` (local endpoints with their
  ordered ingress/egress policies per tier, active policies and profiles, IP sets with members,
  service sets from EndpointSlices, routes, VXLAN neighbours, NAT pools).
- `felix_client.rules`: `DesiredState` → Felix-shaped `iptables-save` text for the filter, nat, raw
  and mangle tables, `ipset save`/`ipset restore` text, and `ip route`-style routes.
- `felix_client.dataplane`: renders a state once per apply and programs a network namespace
  (iptables, IP sets, routes, sysctls, VXLAN), or, for a dry run, writes the files (`files`).
- `felix_client.names`: every chain/set prefix, mark bit, device and port (Felix's rule_defs.go).
- `felix_client.validate`: the grammar of every value that reaches the kernel; what fails it is
  rejected, logged once and counted (`felix_client.metrics`), never rendered and never widened.
- `felix_client.agent`: the `felix-client` command (trio). `--dry-run DIR` writes `iptables.save`,
  `ipsets.save`, `routes.txt` and `status.json` for the node; without it the agent programs the
  namespace it runs in. In-process, run `Agent(AgentOptions(...)).run` as a trio task.
"""
