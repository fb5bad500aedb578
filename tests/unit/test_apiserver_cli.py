"""`typha sim-apiserver` argument parsing (running it is covered by tests/integration/test_kubectl.py)."""

from __future__ import annotations

import pytest

from typha.cli import build_parser


def parse(*argv: str):
    return build_parser().parse_args(["sim-apiserver", "--kubeconfig-out", "/tmp/kc", *argv])


def test_defaults() -> None:
    args = parse()
    assert (args.listen, args.load, args.token, args.tls) == (("127.0.0.1", 0), [], None, False)
    assert (args.history_limit, args.bookmark_interval) == (100_000, 60.0)


def test_every_option() -> None:
    args = parse("--listen", "0.0.0.0:6443", "--load", "a.yaml", "--load", "b.yaml", "--token", "t", "--tls",
                 "--history-limit", "10", "--bookmark-interval", "0.5")
    assert args.listen == ("0.0.0.0", 6443)
    assert args.load == ["a.yaml", "b.yaml"]
    assert (args.token, args.tls, args.history_limit, args.bookmark_interval) == ("t", True, 10, 0.5)
    assert parse("--listen", "[::1]:8080").listen == ("::1", 8080)
    assert parse("--listen", ":8080").listen == ("127.0.0.1", 8080)


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:http", "localhost:-1"])
def test_bad_listen_addresses_are_usage_errors(listen: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--listen", listen)
    assert exc.value.code == 2


def test_kubeconfig_out_is_required() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sim-apiserver"])


def test_crds_preset() -> None:
    assert parse().crds == "calico-v1", "today's behaviour stays the default: Calico's v1 kinds are served"
    assert parse("--crds", "none").crds == "none"
    with pytest.raises(SystemExit) as exc:
        parse("--crds", "calico-v4")
    assert exc.value.code == 2
