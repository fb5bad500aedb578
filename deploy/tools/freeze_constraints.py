"""Print constraints.txt: the installed versions of typha-py's dependency closure (its requirements with the
test and bench extras, and theirs, recursively), as `pip freeze` would pin them.

    python deploy/tools/freeze_constraints.py > constraints.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

EXTRAS = ("", "test", "bench")
ROOT = Path(__file__).resolve().parents[2]
HEADER = """\
# Versions the image and CI install (pip install -c constraints.txt …): what was installed and passing when
# this was taken, limited to the dependency closure of typha-py with its test and bench extras.
# Regenerate after upgrading: python deploy/tools/freeze_constraints.py > constraints.txt"""


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The requirements pyproject.toml declares (not the installed metadata, which may predate it)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(raw for extra in EXTRAS if extra for raw in extras.get(extra, []))]


def closure(project: str = "typha-py") -> dict[str, str]:
    pinned: dict[str, str] = {}
    pending: list[tuple[Requirement, tuple[str, ...]]] = [
        (Requirement(raw), EXTRAS) for raw in project_requirements()]
    visited_extras: dict[str, set[str]] = {}
    while pending:
        requirement, active_extras = pending.pop()
        # evaluate() puts the given extra on top of this interpreter's own marker environment.
        if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in active_extras):
            continue
        key = _key(requirement.name)
        if key == _key(project):
            continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            print(f"# not installed: {requirement.name}", file=sys.stderr)
            continue
        wanted = set(requirement.extras) | {""}
        if wanted <= visited_extras.get(key, set()):
            continue
        visited_extras.setdefault(key, set()).update(wanted)
        pinned[key] = f"{dist.metadata['Name']}=={dist.version}"
        pending.extend((Requirement(raw), tuple(wanted)) for raw in dist.requires or [])
    return pinned


def main() -> int:
    print(HEADER)
    print("\n".join(line for _, line in sorted(closure().items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
