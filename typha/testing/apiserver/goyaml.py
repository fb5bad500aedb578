"""Read YAML the way Calico's tools do: sigs.k8s.io/yaml on top of go-yaml v2.

Calico's fixtures (and `calicoctl`, `kubectl`) are read by Go, whose scalar rules are neither YAML 1.1
nor YAML 1.2 (fixture README §5):

- the YAML 1.1 boolean words are booleans, including `y`, `Y`, `n` and `N`;
- there are no sexagesimal numbers: the BGP community `5663:12` is a string, not 339792;
- integers follow Go's `strconv.ParseInt(s, 0, 64)` after go-yaml removes every `_`
  (so `0o17`, `0b101`, `0x1F` and the leading-zero octal `017` are integers);
- a timestamp-looking scalar stays a string (go-yaml v2 only makes `time.Time` for typed targets);
- mapping keys always come out as strings, because sigs.k8s.io/yaml converts YAML to JSON.

`GoYamlLoader` is a `yaml.SafeLoader` whose plain-scalar resolution is go-yaml v2's `resolve()`, and
`go_string` renders a parsed scalar the way sigs.k8s.io/yaml does when the Go field it lands in is a
string. Which fields are strings is schema knowledge, and lives with the kinds in `calico_v3`.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Hashable
from typing import Any, cast

import yaml

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"

# go-yaml v2 resolveMap: exact spellings looked up before any number parsing.
_TRUE = frozenset(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"])
_FALSE = frozenset(["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"])
_NULLS = frozenset(["", "~", "null", "Null", "NULL"])
_SPECIAL_FLOATS = {
    ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan,
    ".inf": math.inf, ".Inf": math.inf, ".INF": math.inf,
    "+.inf": math.inf, "+.Inf": math.inf, "+.INF": math.inf,
    "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
}  # fmt: skip

# go-yaml v2 yamlStyleFloat, tried on the underscore-free text after ParseInt/ParseUint fail.
_YAML_STYLE_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
# What Go's strconv.ParseFloat accepts for a scalar starting with "." (go-yaml's '.' hint).
_DOT_FLOAT = re.compile(r"^\.[0-9]+([eE][-+]?[0-9]+)?$")
_DIGITS = {2: re.compile(r"^[01]+$"), 8: re.compile(r"^[0-7]+$"), 10: re.compile(r"^[0-9]+$"),
           16: re.compile(r"^[0-9a-fA-F]+$")}  # fmt: skip

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def _parse_go_int(text: str) -> int | None:
    """Go's ParseInt(text, 0, 64), falling back to ParseUint(text, 0, 64); None if neither accepts it."""
    sign = 1
    body = text
    if body[:1] in "+-" and body:
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    lowered = body[:2].lower()
    if lowered == "0x":
        base, digits = 16, body[2:]
    elif lowered == "0o":
        base, digits = 8, body[2:]
    elif lowered == "0b":
        base, digits = 2, body[2:]
    elif body.startswith("0") and len(body) > 1:
        base, digits = 8, body[1:]
    else:
        base, digits = 10, body
    if not _DIGITS[base].match(digits):
        return None
    value = sign * int(digits, base)
    if _INT64_MIN <= value <= _INT64_MAX:
        return value
    # ParseUint takes no sign at all.
    if text[:1] not in "+-" and value <= _UINT64_MAX:
        return value
    return None


def _resolve_plain(value: str) -> str:
    """The tag go-yaml v2 gives an untagged plain scalar (its `resolve()` for an interface{} target)."""
    if value in _NULLS:
        return _NULL
    if value in _TRUE or value in _FALSE:
        return _BOOL
    if value in _SPECIAL_FLOATS:
        return _FLOAT
    if value == "<<":
        return _MERGE
    first = value[0]
    if first == ".":
        return _FLOAT if _DOT_FLOAT.match(value) else _STR
    if first in "+-0123456789":
        plain = value.replace("_", "")
        if _parse_go_int(plain) is not None:
            return _INT
        if _YAML_STYLE_FLOAT.match(plain):
            return _FLOAT
    # Everything else, timestamps and `5663:12` included, is a string.
    return _STR


class GoYamlLoader(yaml.SafeLoader):
    """A SafeLoader that resolves plain scalars as go-yaml v2 does.

    Overriding `resolve` (rather than editing the regex table of implicit resolvers) lets the int and
    float decisions call the same parser as the constructors below, so the two cannot disagree.
    """

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _resolve_plain(value)
        return super().resolve(kind, value, implicit)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        # Keys become strings while the mapping is built: afterwards `1` and `true` would already have
        # collided as Python dict keys (1 == True), whereas Go keeps "1" and "true" apart.
        self.flatten_mapping(node)
        mapping: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            mapping[_go_key(key)] = self.construct_object(value_node, deep=deep)
        return mapping

    def construct_go_bool(self, node: yaml.ScalarNode) -> bool:
        value = self.construct_scalar(node)
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise yaml.constructor.ConstructorError(None, None, f"not a boolean: {value!r}", node.start_mark)

    def construct_go_int(self, node: yaml.ScalarNode) -> int:
        value = str(self.construct_scalar(node))
        parsed = _parse_go_int(value.replace("_", ""))
        if parsed is None:
            raise yaml.constructor.ConstructorError(None, None, f"not an integer: {value!r}", node.start_mark)
        return parsed

    def construct_go_float(self, node: yaml.ScalarNode) -> float:
        value = str(self.construct_scalar(node))
        if value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        plain = value.replace("_", "")
        if _YAML_STYLE_FLOAT.match(plain) or _DOT_FLOAT.match(value):
            return float(plain)
        raise yaml.constructor.ConstructorError(None, None, f"not a float: {value!r}", node.start_mark)


GoYamlLoader.add_constructor(_BOOL, GoYamlLoader.construct_go_bool)
GoYamlLoader.add_constructor(_INT, GoYamlLoader.construct_go_int)
GoYamlLoader.add_constructor(_FLOAT, GoYamlLoader.construct_go_float)
# go-yaml v2 hands timestamp-looking scalars to an interface{} target as their text.
def _timestamp_as_text(loader: GoYamlLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(cast(yaml.ScalarNode, node)))


GoYamlLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def format_go_float32(value: float) -> str:
    """strconv.FormatFloat(value, 'g', -1, 32): what sigs.k8s.io/yaml writes for a float in a string field."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    single = struct.unpack("<f", struct.pack("<f", value))[0]
    if single == 0:
        return "-0" if math.copysign(1.0, single) < 0 else "0"
    packed = struct.pack("<f", single)
    for ndigits in range(1, 10):
        text = format(single, f".{ndigits - 1}e")
        try:
            if struct.pack("<f", float(text)) == packed:
                break
        except OverflowError:  # near FLT_MAX a short rounding can exceed float32's range: use more digits
            continue
    mantissa, _, exponent_text = text.partition("e")
    negative = mantissa.startswith("-")
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    exponent = int(exponent_text)
    sign = "-" if negative else ""
    # Go's %g at the shortest precision uses the exponent form when the exponent is < -4 or >= 6
    # (strconv/ftoa.go: `if shortest { eprec = 6 }`), with at least two exponent digits.
    if exponent < -4 or exponent >= 6:
        fraction = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{fraction}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    point = exponent + 1  # digits before the decimal point
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


def go_string(value: Any) -> Any:
    """A scalar as it lands in a Go string field; anything that is not a bool or number is returned as is.

    sigs.k8s.io/yaml turns a YAML bool or number into text when the target field is a string, using
    "true"/"false", decimal digits, and FormatFloat(f, 'g', -1, 32).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_go_float32(value)
    return value


def _go_key(key: Any) -> str:
    """A mapping key as sigs.k8s.io/yaml's YAML-to-JSON step writes it; JSON keys are always strings."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool | int):
        return go_string(key)
    if isinstance(key, float):
        text = format_go_float32(key)
        return {"+Inf": ".inf", "-Inf": "-.inf", "NaN": ".nan"}.get(text, text)
    raise ValueError(f"unsupported mapping key {key!r}: Go cannot turn it into a JSON key")


def read_text(text_or_path: str | os.PathLike[str]) -> str:
    """The YAML text: a path-like is read; a str is a path only if it is one line naming an existing file."""
    if isinstance(text_or_path, os.PathLike):
        with open(text_or_path, encoding="utf-8") as f:
            return f.read()
    if "\n" not in text_or_path and os.path.isfile(text_or_path):
        with open(text_or_path, encoding="utf-8") as f:
            return f.read()
    return text_or_path


def load_all(text_or_path: str | os.PathLike[str]) -> list[Any]:
    """Every non-empty document, with Go's scalar and key rules but no schema knowledge."""
    documents = yaml.load_all(read_text(text_or_path), Loader=GoYamlLoader)
    return [doc for doc in documents if doc is not None]
