"""Routes, VXLAN neighbours and FDB entries as text (the dry run's routes.txt)."""

from __future__ import annotations

from felix_client.calc.graph import DesiredState


def render_routes(state: DesiredState) -> str:
    """Routes as `ip route` prints them (IPv4, then IPv6), then VXLAN neighbour and FDB entries
    (IPv4, then IPv6)."""
    lines = [r.render() for r in (*state.routes, *state.routes6)]
    lines += [line for vtep in (*state.vteps, *state.vteps6) for line in vtep.render()]
    return "\n".join(lines) + ("\n" if lines else "")
