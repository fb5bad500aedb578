"""Felix's own rules tests, ported as data (tests/felix_client/felix_tables/README.md), run against
felix_client's renderer and compared in iptables-save form (`felix_tables_harness`).

A row listed in `known_failures.json` must still fail, with its reason kept next to it: when a
change makes it pass, this test fails until the row leaves the list, so the list cannot rot.
"""

from __future__ import annotations

from collections import Counter

import pytest

from .felix_tables_harness import Row, all_rows, load

ROWS = all_rows()
KNOWN_FAILURES: dict[str, str] = load("known_failures.json")


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_felix_table_row(row: Row) -> None:
    ok, detail = row.run()
    reason = KNOWN_FAILURES.get(row.id)
    if reason is None:
        assert ok, f"{row.id}\n{detail}"
    else:
        assert not ok, f"{row.id} passes now: take it out of known_failures.json (it was: {reason})"


def test_known_failures_name_existing_rows_with_reasons() -> None:
    ids = {row.id for row in ROWS}
    assert len(ids) == len(ROWS), "row ids must be unique"
    assert set(KNOWN_FAILURES) <= ids, sorted(set(KNOWN_FAILURES) - ids)
    assert all(reason.strip() for reason in KNOWN_FAILURES.values())


def test_counts_match_the_readme() -> None:
    """The per-table counts the README states are the ones the data gives (in scope, passing, failing)."""
    readme = (load.__globals__["DATA"] / "README.md").read_text()
    rows = Counter(row.table for row in ROWS)
    failing = Counter(row.table for row in ROWS if row.id in KNOWN_FAILURES)
    for table, count in rows.items():
        line = f"| {table} | {count} | {count - failing[table]} | {failing[table]} |"
        assert line in readme, f"README row missing or stale: {line}"
    total, bad = len(ROWS), len(KNOWN_FAILURES)
    assert f"| **total** | {total} | {total - bad} | {bad} |" in readme
