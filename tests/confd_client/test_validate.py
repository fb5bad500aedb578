"""The grammar checks between the datastore and BIRD, and the store's rejection of whole objects."""

from __future__ import annotations

import pytest

from confd_client.bgp.filters import check_filter
from confd_client.bgp.store import BGPStore
from confd_client.bgp.validate import (
    REJECTED,
    Invalid,
    Rejections,
    check_as,
    check_cidr,
    check_community,
    check_interface,
    check_ip,
    check_name,
    check_password,
)
from confd_client.bgp.values import go_duration_seconds, parse_ip, split_ip_port
from typha.model.keys import ip_pool_path, resource_path


@pytest.mark.parametrize(("check", "good", "bad"), [
    (check_as, [64512, "64512", "1.10", 0, 4294967295], ["many", "1.70000", -1, 4294967296, " 1", "١٢", True, 1.5]),
    (check_cidr, ["10.0.0.0/8", "fd00::/64"], ["10.0.0.0/8;", "10.0.0.0", "fe80::%eth0/64", "10.0.0.0/255.0.0.0", 5]),
    (check_ip, ["10.0.0.1", "fd00::1"], ["10.0.0.1 ", "fe80::1%x", "10.0.0.1/32", ""]),
    (check_interface, ["eth0", "eth*", "*.calico", "tunl0"], ["eth0;", 'e"', "a" * 16, "", "eth 0"]),
    (check_community, ["65000:100", "1:2:3", "4294967295:0:1"], ["65536:1", "1:2:3:4", "a:b", "1:2;"]),
    (check_name, ["node-1", "a.b-c"], ["Node", "a/b", "a\nb", "-a", "x" * 254]),
])
def test_grammars(check, good, bad):
    for value in good:
        check("f", value)
    for value in bad:
        with pytest.raises(Invalid):
            check("f", value)


@pytest.mark.parametrize("password", ['a"b', "a\nb", "a\x00b", "a\u2028b", "x" * 81, "é" * 41])
def test_passwords_that_would_leave_birds_quotes_are_invalid(password):
    with pytest.raises(Invalid):
        check_password("spec.password", password)


def test_passwords_may_hold_what_birds_quotes_keep():
    check_password("spec.password", "p;a}s{s# wörd\\")


def test_go_forms_take_no_surrounding_whitespace():
    assert go_duration_seconds(" 10s") is None
    assert go_duration_seconds("-1.5s") == -2
    assert go_duration_seconds("+10s") == 10
    assert parse_ip(" 10.0.0.1") is None
    assert parse_ip("fe80::1%eth0") is None
    assert split_ip_port("10.0.0.1: 179") == ("10.0.0.1: 179", 0)


def _total() -> float:
    return sum(s.value for m in REJECTED.collect() for s in m.samples if s.name.endswith("_total"))


def test_an_invalid_object_replaces_the_valid_one_it_updates(caplog):
    store = BGPStore()
    key = resource_path("BGPPeer", "p")
    store.apply(key, {"metadata": {"name": "p"}, "spec": {"peerIP": "10.0.0.9", "asNumber": 65000}})
    assert "p" in store.peers
    before = _total()
    store.apply(key, {"metadata": {"name": "p"}, "spec": {"peerIP": "10.0.0.9", "asNumber": "65000\n}"}})
    assert "p" not in store.peers  # the old version does not linger either
    assert _total() == before + 1
    assert caplog.text.count("rejecting BGPPeer 'p'") == 1


def test_a_pool_with_an_injected_cidr_is_rejected():
    store = BGPStore()
    assert store.apply(ip_pool_path("10.65.0.0/16"), {"cidr": "10.65.0.0/16; } include \"/etc/x\";"})
    assert store.pools[4] == {}


def test_a_peer_naming_a_rejected_filter_is_rejected_too():
    from confd_client.bgp.peers import derive_peerings

    store = BGPStore()
    bad_rule = {"action": "Accept", "matchOperator": "In", "cidr": "10.0.0.0/8", "interface": 'eth0"; accept; "'}
    store.apply(resource_path("BGPFilter", "f"), {"metadata": {"name": "f"}, "spec": {"importV4": [bad_rule]}})
    assert store.rejected_filters == {"f"}
    store.apply(resource_path("BGPPeer", "p"),
                {"metadata": {"name": "p"}, "spec": {"peerIP": "10.0.0.9", "asNumber": 65000, "filters": ["f"]}})
    global_peers, node_peers = derive_peerings(store, "n")
    assert not global_peers and not node_peers  # unfiltered, it would import and export more


def test_filter_enums_are_checked():
    with pytest.raises(Invalid):
        check_filter("f", {"spec": {"exportV4": [{"action": "Accept", "peerType": "x"}]}})
    check_filter("f", {"spec": {"exportV4": [{"action": "Accept", "peerType": "iBGP"}]}})


def test_rejections_are_logged_once_and_bounded(caplog):
    rejections = Rejections(limit=2)
    for _ in range(3):
        rejections.report("Service", "a/b", Invalid("spec.clusterIP", "not an IP address"))
    assert caplog.text.count("rejecting Service 'a/b'") == 1
    rejections.report("Service", "c/d", Invalid("x", "y"))
    rejections.report("Service", "e/f", Invalid("x", "y"))  # past the limit: memory starts over
    assert rejections._size <= 2


@pytest.mark.parametrize(("name", "value"), [
    ("CALICO_ROUTER_ID", "10.0.0.1;\ninclude \"/etc/passwd\";"),
    ("CALICO_ADVERTISE_CLUSTER_IPS", "10.96.0.0/12 } "),
])
def test_settings_refuse_environment_that_would_reach_bird_unchecked(name, value, capsys):
    from confd_client.agent import Settings

    with pytest.raises(SystemExit) as exited:
        Settings.from_env({"NODENAME": "n", "FELIX_TYPHAADDR": "127.0.0.1:5473", name: value}, [])
    assert exited.value.code == 2
    assert name in capsys.readouterr().err


def test_service_addresses_that_do_not_parse_are_reported_once(caplog):
    from confd_client.bgp.services import service_routes

    store = BGPStore()
    store.apply(resource_path("BGPConfiguration", "default"), {"metadata": {"name": "default"}, "spec": {
        "serviceExternalIPs": [{"cidr": "192.0.2.0/24"}]}})
    svc = {"metadata": {"namespace": "ns", "name": "web"},
           "spec": {"clusterIP": "10.96.0.1", "externalIPs": ["192.0.2.5\n}", "192.0.2.6"],
                    "externalTrafficPolicy": "Local"}}
    local = {"endpoints": [{"addresses": ["10.65.0.5"], "nodeName": "n", "conditions": {"ready": True}}]}
    store.services_source = lambda: [(svc, [local])]
    for _ in range(2):
        routes, _rejects = service_routes(store, "n", {})
        assert routes == {"192.0.2.0/24", "192.0.2.6/32"}
    assert caplog.text.count("rejecting Service 'ns/web'") == 1
