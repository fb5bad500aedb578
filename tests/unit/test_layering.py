"""The import direction of the layers (docs/architecture.md §2), read from the source.

Every module of typha, felix_client and confd_client is parsed (nothing is imported) and each of its
imports of these packages is checked against `LAYERS`: a module may import its own layer and the
layers below it, never one above. The agents and the client library are held to a narrower rule:
they never import the server side, so a node agent can never grow a dependency on the proxy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("typha", "felix_client", "confd_client")

# Lowest first. A module belongs to the first entry that is a prefix of its dotted name.
LAYERS: list[tuple[str, ...]] = [
    ("typha.proto", "typha.backoff", "typha.logs", "typha.__init__", "typha"),
    ("typha.syncproto",),
    ("typha.model",),
    ("typha.kube",),
    ("typha.client", "typha.snapcache"),
    ("typha.source",),
    ("typha.config",),
    ("typha.syncserver",),
    ("typha.daemon", "typha.ops"),
    ("felix_client", "confd_client"),
    ("typha.testing",),
    ("typha.demo", "typha.cli"),
]

# What each side may reach, whatever the ranks say.
SERVER_SIDE = ("typha.snapcache", "typha.source", "typha.syncserver", "typha.daemon", "typha.ops",
               "typha.config", "typha.testing", "typha.demo", "typha.cli")
NEVER_SERVER_SIDE = ("felix_client", "confd_client", "typha.client", "typha.syncproto", "typha.model",
                     "typha.kube")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def rank(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, rank): the longest prefix decides
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, is_package: bool, text: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of our own packages, relative ones resolved."""
    tree = ast.parse(text, module)
    package = module.split(".")
    if not is_package:
        package.pop()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from typha import logs` imports the module typha.logs, not the package typha.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def resolve(name: str) -> str:
    """The module an imported name lives in: drop trailing attribute names that are not modules."""
    parts = name.split(".")
    while parts:
        candidate = REPO.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return name


def violations(path: Path, text: str) -> list[str]:
    found = []
    importer = module_name(path)
    targets = {(line, resolve(imported)) for line, imported in imports_of(importer, path.name == "__init__.py", text)}
    for line, target in sorted(targets):
        where = f"{path.relative_to(REPO)}:{line} imports {target}"
        if any(_within(importer, p) for p in NEVER_SERVER_SIDE) and any(_within(target, p) for p in SERVER_SIDE):
            found.append(f"{where}: an agent, the client or a shared layer must not import the server side")
        elif rank(target) > rank(importer):
            found.append(f"{where}: a lower layer must not import a higher one")
    return found


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_no_module_imports_a_higher_layer():
    assert [v for path in sources() for v in violations(path, path.read_text())] == []


def test_every_module_is_in_a_layer():
    for path in sources():
        rank(module_name(path))


@pytest.mark.parametrize(("importer", "statement", "reason"), [
    ("typha/model/probe.py", "from typha.syncserver.server import SyncServer", "the server side"),
    ("typha/kube/probe.py", "from ..source import datastore", "the server side"),
    ("typha/source/probe.py", "from ..syncserver.server import SyncServer", "a lower layer must not"),
    ("typha/snapcache/probe.py", "from typha.syncserver import metrics", "a lower layer must not"),
    ("felix_client/probe.py", "from typha.snapcache.cache import SnapshotCache", "the server side"),
    ("confd_client/probe.py", "import typha.daemon.serve", "the server side"),
    ("typha/client/probe.py", "from typha.source.upstream import UpstreamSource", "the server side"),
])
def test_a_deliberate_upward_import_is_caught(importer, statement, reason):
    """The checker itself: the same rules on a module that does not exist, with an upward import."""
    found = violations(REPO / importer, statement + "\n")
    assert len(found) == 1, found
    assert reason in found[0], found


def test_allowed_imports_pass():
    assert violations(REPO / "typha/syncserver/probe.py", "from typha.snapcache.cache import SnapshotCache\n") == []
    assert violations(REPO / "felix_client/probe.py", "from typha.client import AsyncSyncClient\n") == []
