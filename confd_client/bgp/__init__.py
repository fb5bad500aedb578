"""The BGP model: what Calico's confd derives from the `bgp` syncer's KVs before it prints BIRD config.

Split along confd's own seams, data flowing one way:
- `store`: the syncer's KVs (Nodes, BGPConfigurations, BGPPeers, BGPFilters, IP pools, block
  affinities), each checked before it is kept;
- `filters`: BGPFilters as BIRD functions and each peering's import/export filter text;
- `peers`: updatePeersV1 (mesh, global, node-specific, selector and reverse peerings) and the BIRD
  `protocol bgp` each becomes;
- `services`: the service-advertisement routes;
- `bird`: GetBirdBGPConfig, everything one family's templates print;
- `values` (Go's value forms) and `validate` (the grammar of what may reach BIRD) under all of them.
"""
