"""Small pieces of the BGP model whose Go behaviour is easy to get subtly wrong."""

from __future__ import annotations

import os

import pytest

from confd_client.bgp.filters import filter_function_name
from confd_client.bgp.store import BGPStore
from confd_client.bgp.values import go_duration_seconds, hash_to_ipv4, split_ip_port
from confd_client.render import normalize_blank_lines, write_if_changed


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10), ("2m", 120), ("1h30m", 5400), ("1.5s", 2), ("0", 0), ("500ms", 1), ("400ms", 0), ("x", None),
])
def test_go_durations_round_like_math_round(text, seconds):
    assert go_duration_seconds(text) == seconds


@pytest.mark.parametrize(("text", "split"), [
    ("10.0.0.1", ("10.0.0.1", 0)),
    ("10.0.0.1:166", ("10.0.0.1", 166)),
    ("[ac13::57]:50", ("ac13::57", 50)),
    ("ac13::57", ("ac13::57", 0)),
    ("10.0.0.1:notaport", ("10.0.0.1:notaport", 0)),
])
def test_peer_ip_and_port(text, split):
    assert split_ip_port(text) == split


def test_router_id_hash_stays_out_of_multicast():
    assert hash_to_ipv4("kube-master") == "25.79.212.8"
    assert all(int(hash_to_ipv4(f"n{i}").split(".")[0]) <= 223 for i in range(500))


def test_filter_names_fit_birds_symbol_limit():
    assert filter_function_name("short", "import", 4) == "'bgp_short_importFilterV4'"
    long = filter_function_name("x" * 80, "export", 6)
    assert len(long.strip("'")) == 64
    assert long.endswith("_exportFilterV6'")


def test_pending_and_deleted_affinities_are_dropped():
    store = BGPStore()
    key = "/calico/ipam/v2/host/n/ipv4/block/10.0.0.0-26"
    store.apply(key, {"state": "confirmed", "deleted": False})
    assert store.affinities["n"][4] == {"10.0.0.0-26": "confirmed"}
    store.apply(key, {"state": "pending", "deleted": False})
    assert store.affinities["n"][4] == {}


def test_normalize_blank_lines():
    assert normalize_blank_lines("a\n\n  \nb") == "a\nb\n"
    assert normalize_blank_lines("\n \n") == ""


def test_unchanged_content_is_not_rewritten(tmp_path):
    path = tmp_path / "bird.cfg"
    assert write_if_changed(path, "x\n")
    before = os.stat(path).st_ino
    assert not write_if_changed(path, "x\n")
    assert write_if_changed(path, "y\n")
    assert os.stat(path).st_ino != before  # replaced by rename, never rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["bird.cfg"]  # no temp files left behind
