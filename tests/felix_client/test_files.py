"""felix-client writes its files as confd does: mkstemp beside the target, fsync, rename, fsync the
directory; and its modules pass data one way (calculation → rendering → dataplane)."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

import felix_client
from felix_client.dataplane import files


def test_write_durably_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "iptables.save"
    target.write_text("old\n")
    files.write_durably(target, "new\n")
    assert target.read_text() == "new\n"
    assert synced == ["file", "dir"]  # the data before the rename, the rename after it
    assert os.stat(target).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iptables.save"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "routes.txt"
    target.write_text("old\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        files.write_durably(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["routes.txt"]


def test_temporaries_are_unique(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No fixed temp name: two writers (an agent and a restarted one) never write the same temporary."""
    names: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        names.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    for _ in range(3):
        files.write_durably(tmp_path / "status.json", "{}\n")
    assert len(set(names)) == 3 and all(n.startswith(".status.json.") for n in names)


def _imports(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_data_flows_one_way() -> None:
    """agent → calc, dataplane; dataplane → rules → calc (never back); names imported by all, importing none."""
    root = Path(felix_client.__file__).parent
    agent = _imports(root / "agent.py")
    assert not any(i.startswith("felix_client.rules") for i in agent), "the dataplane renders, not the agent"
    for module in [*(root / "rules").glob("*.py"), *(root / "calc").glob("*.py")]:
        assert not any(i.startswith("felix_client.dataplane") or i.startswith("felix_client.agent")
                       for i in _imports(module)), module
    for module in (root / "calc").glob("*.py"):
        assert not any(i.startswith("felix_client.rules") for i in _imports(module)), module
    assert not any(i.startswith("felix_client") for i in _imports(root / "names.py"))
    # The dataplane takes the state, not rendered text: nothing in the agent calls the renderer.
    assert "render_" not in (root / "agent.py").read_text()
