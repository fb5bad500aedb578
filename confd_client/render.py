"""Render the six BIRD files from the BGP model, and write them atomically when they changed.

One Jinja2 template per file kind serves both families: upstream's v4 and v6 templates differed
only in the family they asked `getBGPConfig` for and in the names of the included files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import jinja2

from confd_client.bgp.bird import BirdConfig, bird_config
from confd_client.bgp.store import BGPStore

FILES = ("bird.cfg", "bird6.cfg", "bird_ipam.cfg", "bird6_ipam.cfg", "bird_aggr.cfg", "bird6_aggr.cfg")
DEFAULT_INTERFACES = '-"cali*", -"kube-ipvs*", "*"'

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("confd_client", "templates"),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # BIRD config, not HTML
)


def _render_family(cfg: BirdConfig) -> dict[str, str]:
    six = "6" if cfg.version == 6 else ""
    context = {
        "c": cfg,
        "default_interfaces": DEFAULT_INTERFACES,
        "aggr_file": f"bird{six}_aggr.cfg",
        "ipam_file": f"bird{six}_ipam.cfg",
        "host_suffix": "/128" if cfg.version == 6 else "/32",
        # A route reflector also re-advertises routes inside the LB/external service ranges.
        "rr_lb_ips": [c for c in cfg.load_balancer_ips if (":" in c) == (cfg.version == 6)],
        "rr_external_ips": [c for c in cfg.external_ips if (":" in c) == (cfg.version == 6)],
    }
    return {
        f"bird{six}.cfg": _ENV.get_template("bird.cfg.j2").render(context),
        f"bird{six}_ipam.cfg": _ENV.get_template("bird_ipam.cfg.j2").render(context),
        f"bird{six}_aggr.cfg": _ENV.get_template("bird_aggr.cfg.j2").render(context),
    }


def render_all(store: BGPStore, nodename: str, env: Mapping[str, str]) -> dict[str, str]:
    """All six files' text for this node."""
    out: dict[str, str] = {}
    for version in (4, 6):
        out.update(_render_family(bird_config(store, version, nodename, env)))
    return {name: out[name] for name in FILES}


def normalize_blank_lines(text: str) -> str:
    """Upstream's normalizeBlankLines: drop empty/whitespace-only lines, end with one newline."""
    lines = [line for line in text.split("\n") if line.strip()]
    return "\n".join(lines) + "\n" if lines else ""


def write_if_changed(path: Path, content: str) -> bool:
    """Write atomically (temp file in the same directory + rename); False when the file already holds it."""
    try:
        if path.read_text() == content:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # readers (BIRD) see the old file or the new one, never half of one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return True

