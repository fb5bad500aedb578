"""Render the six BIRD files from the BGP model, and write them atomically when they changed.

One Jinja2 template per file kind serves both families: upstream's v4 and v6 templates differed
only in the family they asked `getBGPConfig` for and in the names of the included files.

`Renderer` re-renders only what the store's noted changes reach: nothing for another node's block
or a Node update that moves none of its BGP fields, one family for a pool or block of that family,
and only `bird_ipam.cfg` (pools) or `bird_aggr.cfg` (this node's blocks) when nothing else moved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import jinja2

from confd_client.bgp.bird import BirdConfig, bird_config, node_blocks, pool_filters
from confd_client.bgp.store import BGPStore, Change

FILES = ("bird.cfg", "bird6.cfg", "bird_ipam.cfg", "bird6_ipam.cfg", "bird_aggr.cfg", "bird6_aggr.cfg")
TEMPLATES = ("bird", "bird_ipam", "bird_aggr")  # the kinds of file, each one template for both families
DEFAULT_INTERFACES = '-"cali*", -"kube-ipvs*", "*"'

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("confd_client", "templates"),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # BIRD config, not HTML
)


def _render_family(cfg: BirdConfig, kinds: Iterable[str] = TEMPLATES) -> dict[str, str]:
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
    return {f"{kind.replace('bird', f'bird{six}', 1)}.cfg": _ENV.get_template(f"{kind}.cfg.j2").render(context)
            for kind in kinds}


def render_all(store: BGPStore, nodename: str, env: Mapping[str, str]) -> dict[str, str]:
    """All six files' text for this node."""
    out: dict[str, str] = {}
    for version in (4, 6):
        out.update(_render_family(bird_config(store, version, nodename, env)))
    return {name: out[name] for name in FILES}


class Renderer:
    """The six files of one node, re-rendering per change only the files that read what changed.

    The first render, and any change it cannot place, renders everything. `rendered` names the
    files the last call rendered (the others are returned as they were)."""

    def __init__(self, nodename: str, env: Mapping[str, str]) -> None:
        self.nodename = nodename
        self.env = env
        self.files: dict[str, str] = {}
        self.rendered: list[str] = []
        self._configs: dict[int, BirdConfig] = {}

    def _kinds(self, store: BGPStore, changes: set[Change], version: int) -> set[str]:
        """Which templates of one family read something in `changes`."""
        if version not in self._configs:
            return set(TEMPLATES)
        kinds: set[str] = set()
        for change in changes:
            what = change[0]
            if what == "pools":
                if change[1] == version:
                    kinds.add("bird_ipam")  # only the export and kernel filters read the pools
            elif what == "blocks":
                if change[1] == self.nodename and change[2] == version:
                    kinds.add("bird_aggr")  # only this node's blocks are printed, only there
            elif what == "labels":
                # Labels reach BIRD only through peer selectors and this node's service opt-out label.
                if change[1] == self.nodename or store.label_selectors_in_use():
                    return set(TEMPLATES)
            else:
                return set(TEMPLATES)
        return kinds

    def render(self, store: BGPStore, changes: set[Change]) -> dict[str, str]:
        self.rendered = []
        try:
            return self._render(store, changes)
        except BaseException:
            self._configs.clear()  # the changes are spent: the next render starts from scratch
            raise

    def _render(self, store: BGPStore, changes: set[Change]) -> dict[str, str]:
        for version in (4, 6):
            kinds = self._kinds(store, changes, version)
            if not kinds:
                continue
            if kinds == set(TEMPLATES):
                cfg = bird_config(store, version, self.nodename, self.env)
            else:
                # Everything else the templates print is as it was: redo only the changed part.
                cfg = dataclasses.replace(self._configs[version])
                if "bird_ipam" in kinds:
                    pool_filters(store, cfg, self.nodename)
                if "bird_aggr" in kinds:
                    cfg.blocks = node_blocks(store, self.nodename, version)
            rendered = _render_family(cfg, sorted(kinds))
            self._configs[version] = cfg
            self.files.update(rendered)
            self.rendered += rendered
        return {name: self.files[name] for name in FILES}


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

