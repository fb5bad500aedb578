"""How every benchmark reports: an aligned table on stdout, and the raw numbers as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def report(rows: Sequence[tuple[str, str]], results: dict[str, Any], json_path: str | None) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if json_path:
        with open(json_path, "w") as out:
            json.dump(results, out, indent=2)
