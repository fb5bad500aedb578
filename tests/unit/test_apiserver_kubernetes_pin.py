"""The `kubernetes` range pyproject.toml declares is the one whose client API typha/kube calls.

typha/kube (client.py, objects.py) goes below the generated API classes: it builds requests with
`ApiClient.param_serialize(method, resource_path, ...)` and sends them with
`ApiClient.call_api(method, url, header_params, body, post_params, _request_timeout)`, which is the
API the client has since 37.0.0 (29.0.0-36.x have `call_api(resource_path, method, ...)` and no
param_serialize). These tests fail when the installed client is outside the declared range or its
API is not what the code calls. constraints.txt holds the client at the declared floor, so CI runs
the whole suite with the oldest release the range admits (a newer one in range is what a fresh
`pip install` without the constraints picks).
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import kubernetes
from kubernetes.client import ApiClient

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "constraints.txt"


def _declared_range() -> tuple[tuple[int, ...], tuple[int, ...]]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"kubernetes\s*[<>=!~]", d))
    floor = re.search(r">=\s*([0-9.]+)", spec)
    ceiling = re.search(r"<\s*([0-9.]+)", spec)
    assert floor and ceiling, f"the kubernetes requirement must be a bounded range, got {spec!r}"
    return _version(floor.group(1)), _version(ceiling.group(1))


def _version(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # "37" is 37.0.0


def test_installed_client_is_inside_the_declared_range() -> None:
    floor, ceiling = _declared_range()
    installed = _version(kubernetes.__version__)
    assert floor <= installed < ceiling, f"kubernetes {kubernetes.__version__} is outside [{floor}, {ceiling})"


def test_declared_floor_has_the_request_api_typha_kube_calls() -> None:
    floor, _ = _declared_range()
    assert floor >= (37,), "param_serialize and call_api(method, url, ...) first shipped in kubernetes 37.0.0"
    serialize = inspect.signature(ApiClient.param_serialize).parameters
    assert list(serialize)[1:3] == ["method", "resource_path"]
    assert {"query_params", "header_params", "body", "auth_settings"} <= set(serialize)
    call = inspect.signature(ApiClient.call_api).parameters
    assert list(call)[1:3] == ["method", "url"]
    assert "_request_timeout" in call


def test_ci_constraints_hold_the_client_at_the_declared_floor() -> None:
    floor, _ = _declared_range()
    pinned = re.search(r"^kubernetes==([0-9.]+)$", CONSTRAINTS.read_text(), re.M)
    assert pinned, "constraints.txt must pin kubernetes"
    assert _version(pinned.group(1)) == floor, "CI must test the bottom of the declared kubernetes range"
