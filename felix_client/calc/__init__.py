"""felix_client's calculation graph: KV updates from the felix syncer → desired policy, IP sets, routes."""

from felix_client.calc.graph import Calculator, DesiredState, Dirty, ResolvedEndpoint, TierPolicies
from felix_client.calc.labels import LabelIndex
from felix_client.calc.model import IPSetSpec, ParsedPolicy, ParsedProfile, ParsedRule

__all__ = [
    "Calculator",
    "DesiredState",
    "Dirty",
    "IPSetSpec",
    "LabelIndex",
    "ParsedPolicy",
    "ParsedProfile",
    "ParsedRule",
    "ResolvedEndpoint",
    "TierPolicies",
]
