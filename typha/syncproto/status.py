"""The wire's sync states (proto: SyncStatus.Status) and their mapping to a syncer-state enum.

The enum itself (typha.model.kv.SyncStatus) belongs to the model layer, above this one, so it is
passed in: its member names are the wire's (WAIT_FOR_READY, RESYNC, IN_SYNC), and a member the wire
cannot carry is refused when the maps are built, not when the first status is sent.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from typha.proto import sync_pb2 as pb

E = TypeVar("E", bound=enum.Enum)

# UNKNOWN (0) is the proto default, not a state: a client ignores it (and any state newer than itself).
WIRE_STATES: dict[str, pb.SyncStatus.Status] = {
    "WAIT_FOR_READY": pb.SyncStatus.WAIT_FOR_READY,
    "RESYNC": pb.SyncStatus.RESYNC,
    "IN_SYNC": pb.SyncStatus.IN_SYNC,
}


def status_maps(states: type[E]) -> tuple[dict[E, pb.SyncStatus.Status], dict[int, E]]:
    """(state → wire value, wire value → state) for the enum `states` (typha.model.kv.SyncStatus)."""
    if sorted(member.name for member in states) != sorted(WIRE_STATES):
        raise ValueError(f"{states.__name__} does not match the wire's states {sorted(WIRE_STATES)}")
    to_pb = {member: WIRE_STATES[member.name] for member in states}
    return to_pb, {value: member for member, value in to_pb.items()}
