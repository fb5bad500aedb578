"""felix-client's own counters: what it refused to program, and why.

Felix logs and skips what it cannot render; so does felix_client, and these count it so an operator
sees a refused rule without reading logs. They live in prometheus_client's default registry.
"""

from __future__ import annotations

from prometheus_client import Counter

RULES_REJECTED = Counter(
    "felix_client_rules_rejected",
    "Policy or profile rules not rendered (invalid value, unsupported match, or not for this IP family)",
    ["reason"],
)
OBJECTS_REJECTED = Counter(
    "felix_client_objects_rejected",
    "KV updates treated as deletions because a value failed validation",
    ["kind"],
)
RENDER_GUARD_TRIPPED = Counter(
    "felix_client_render_guard_tripped",
    "Rendered iptables rules or IP-set lines that failed the last grammar check before the kernel",
    ["what"],
)
