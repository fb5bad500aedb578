"""The dry-run dataplane and the agent's status files: what would be programmed, written to disk.

Every file is written as confd writes its own (confd_client/render.py): a temporary file from
mkstemp in the same directory (so the rename stays on one filesystem and two writers never share a
name), fsync, rename over the old file, then fsync of the directory so the rename itself survives
a crash. A reader sees the old file or the new one, never half of one, and after a power loss
neither an empty file nor the old name pointing nowhere.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from felix_client import rules
from felix_client.calc.graph import DesiredState


def write_durably(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; these are for whoever debugs the node
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_files(out: Path, state: DesiredState) -> None:
    """`routes.txt` (both families), `ipsets.save` (both), `ip6tables.save` and `iptables.save` for
    `state`, rendered once, into `out` (`ip6tables.save` is empty on a node without IPv6).

    In that order, the reverse of the order a reader takes them (status.json, which the caller writes
    last, then iptables.save, ipsets.save, routes.txt): a reader that sees one generation of a file
    then sees that generation or a later one of every file it reads after it (ip6tables.save sits
    just before iptables.save). It is also the kernel
    apply's order: the sets exist before the rules that use them."""
    out.mkdir(parents=True, exist_ok=True)
    write_durably(out / "routes.txt", rules.render_routes(state))
    write_durably(out / "ipsets.save", rules.render_ipset_save(rules.desired_ipsets(state)))
    write_durably(out / "ip6tables.save", rules.render_ip6tables(state))
    write_durably(out / "iptables.save", rules.render_iptables(state))
