"""go-yaml v2 scalar semantics of the fixture loader (fixture README §5)."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from typha.testing.apiserver.calico_v3 import load_documents
from typha.testing.apiserver.goyaml import format_go_float32, go_string, load_all


def value(text: str):
    (doc,) = load_all(f"v: {text}\n")
    return doc["v"]


@pytest.mark.parametrize("text", ["5663:12", "100:6532", "100:555:107", "50:50:5364", "1:30", "12:30:00"])
def test_colon_numbers_are_strings_not_sexagesimal(text):
    assert value(text) == text


@pytest.mark.parametrize(("text", "base60"), [("5663:12", 339792), ("1:30", 90), ("12:30:00", 45000)])
def test_pyyaml_default_would_read_these_as_base_60(text, base60):
    # The trap this loader exists for, pinned so the test above is known to be able to fail.
    assert yaml.safe_load(f"v: {text}")["v"] == base60


@pytest.mark.parametrize("text", ["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"])
def test_yaml11_true_words(text):
    assert value(text) is True


@pytest.mark.parametrize("text", ["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"])
def test_yaml11_false_words(text):
    assert value(text) is False


@pytest.mark.parametrize("text", ['"yes"', "'yes'", '"y"', "'true'", '"5663:12"', "'12'", "yES", "tRUE"])
def test_quoted_or_odd_case_words_stay_strings(text):
    assert value(text) == text.strip("\"'")


@pytest.mark.parametrize(
    "text",
    ["2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "2002-12-14T00:00:00Z"],
)
def test_timestamps_stay_strings(text):
    assert value(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("177", 177),
        ("-5", -5),
        ("+5", 5),
        ("0x1F", 31),
        ("017", 15),  # Go's leading-zero octal
        ("0o17", 15),
        ("0b101", 5),
        ("1_000", 1000),
        ("9223372036854775807", 2**63 - 1),
        ("18446744073709551615", 2**64 - 1),  # ParseUint
    ],
)
def test_integers_parse_as_go_parseint(text, expected):
    parsed = value(text)
    assert type(parsed) is int
    assert parsed == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.5", 1.5), ("1e3", 1000.0), (".5", 0.5), ("-2.5e-3", -0.0025), ("08", 8.0), ("1e20", 1e20)],
)
def test_floats_follow_go(text, expected):
    parsed = value(text)
    assert type(parsed) is float
    assert parsed == expected


def test_special_floats_and_nulls():
    assert math.isnan(value(".nan"))
    assert value("-.inf") == -math.inf
    for text in ("~", "null", "Null", "NULL", ""):
        assert value(text) is None


@pytest.mark.parametrize("text", ["0x", "0b2", "1.2.3", "+", "_", "1e", ".", "0xG1", "abc"])
def test_non_numbers_stay_strings(text):
    assert value(text) == text


def test_keys_are_go_json_strings_and_do_not_collide():
    (doc,) = load_all("1: a\ntrue: b\nn: c\n1.5: d\n")
    assert doc == {"1": "a", "true": "b", "false": "c", "1.5": "d"}


def test_merge_keys_still_work():
    (doc,) = load_all("base: &b {a: 1}\nderived:\n  <<: *b\n  c: 2\n")
    assert doc["derived"] == {"a": 1, "c": 2}


def test_boolean_words_as_keys_become_true_and_false():
    # go-yaml v2 reads the key `y` as a boolean; sigs.k8s.io/yaml then writes it as "true".
    (doc,) = load_all("y: 1\nx: 2\n")
    assert doc == {"true": 1, "x": 2}


def test_empty_documents_are_skipped():
    assert load_all("---\n---\n# only a comment\n---\na: 1\n---\n") == [{"a": 1}]
    assert load_documents("---\n\n---\n") == []


@pytest.mark.parametrize(
    ("parsed", "text"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-12, "-12"),
        (2**64 - 1, "18446744073709551615"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (100.0, "100"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (16777217.0, "1.6777216e+07"),  # float32 precision
        (3.14159265, "3.1415927"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-0.0, "-0"),
    ],
)
def test_go_string_renders_like_sigs_k8s_yaml(parsed, text):
    assert go_string(parsed) == text


def test_go_string_leaves_strings_and_structures_alone():
    assert go_string("yes") == "yes"
    assert go_string(None) is None
    assert go_string([1]) == [1]


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_any_int64_round_trips_to_its_digits(number):
    assert go_string(value(str(number))) == str(number)


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_text_parses_back_to_the_same_float32(number):
    assert format_go_float32(float(format_go_float32(number))) == format_go_float32(number)


def test_string_typed_fields_are_rendered_the_go_way():
    (node,) = load_documents(
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: n1\n"
        "  labels:\n    route-reflector: yes\n    node: 'yes'\n    rack: 0x10\n    ratio: 1.5\n    empty:\n"
        "  annotations:\n    flag: on\n"
        "spec:\n  bgp:\n    ipv4Address: 10.0.0.1/24\n    asNumber: '64512'\n"
    )
    assert node["metadata"]["labels"] == {
        "route-reflector": "true",
        "node": "yes",
        "rack": "16",
        "ratio": "1.5",
        "empty": "",
    }
    assert node["metadata"]["annotations"] == {"flag": "true"}
    # ASNumber is numeric in Go: the quoted number is stored as a number.
    assert node["spec"]["bgp"]["asNumber"] == 64512


def test_communities_that_parse_as_numbers_become_their_digits():
    (config,) = load_documents(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\n"
        "spec:\n  listenPort: 177\n  communities:\n  - name: c\n    value: 5663:12\n"
        "  prefixAdvertisements:\n  - cidr: 10.0.0.0/8\n    communities: [5663:12, 12, c]\n"
    )
    assert config["spec"]["communities"] == [{"name": "c", "value": "5663:12"}]
    assert config["spec"]["prefixAdvertisements"][0]["communities"] == ["5663:12", "12", "c"]
    # A numeric Go field keeps its number.
    assert config["spec"]["listenPort"] == 177


def test_kubernetes_string_fields():
    (secret,) = load_documents(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: kube-system\nstringData:\n  a: yes\n  b: 12\n"
    )
    assert secret["stringData"] == {"a": "true", "b": "12"}


def test_float32_near_the_top_of_its_range():
    # Found by hypothesis: a short rounding of values near FLT_MAX overflows float32.
    for number in (3.4025e38, 3.4028234663852886e38, -3.4028234663852886e38):
        assert format_go_float32(float(format_go_float32(number))) == format_go_float32(number)
