"""`typha sim-apiserver`: run the Kubernetes API emulator as a process, for kubectl and demos."""

from __future__ import annotations

import argparse
import logging
import signal

import yaml

from typha.logs import SettingError
from typha.testing.apiserver.registry import CRD_PRESETS
from typha.testing.apiserver.server import KubeAPIEmulator

log = logging.getLogger(__name__)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port 0-65535, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="address to serve on; port 0 picks a free one (default 127.0.0.1:0)",
    )
    parser.add_argument(
        "--kubeconfig-out", required=True, metavar="PATH", help="write a kubeconfig for the emulator here"
    )
    parser.add_argument(
        "--load",
        action="append",
        default=[],
        metavar="FILE.yaml",
        help="apply the objects in this file at start (Kubernetes and projectcalico.org/v3); repeatable",
    )
    parser.add_argument(
        "--crds",
        choices=CRD_PRESETS,
        default="calico-v1",
        help="custom resources served from the start: Calico's crd.projectcalico.org/v1 kinds (default), or "
        "none (install CRDs yourself, e.g. Calico's manifests); CRDs created later are served either way",
    )
    parser.add_argument("--token", help="require this bearer token (kubectl sends it only with --tls)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a generated CA")
    parser.add_argument(
        "--history-limit",
        type=int,
        default=100_000,
        metavar="N",
        help="watch events kept; older resourceVersions get 410 Gone",
    )
    parser.add_argument(
        "--bookmark-interval", type=float, default=60.0, metavar="S", help="seconds between watch bookmarks"
    )


def run(args: argparse.Namespace) -> int:
    # Block the stop signals before the server thread starts (threads inherit the mask) and take them
    # with sigwait: no Python handler then runs at an arbitrary point, e.g. inside a held lock.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        emulator = KubeAPIEmulator(
            history_limit=args.history_limit,
            bookmark_interval=args.bookmark_interval,
            token=args.token,
            tls=args.tls,
            crds=args.crds,
            # A process kubectl talks to starts like a cluster: the standard namespaces, and
            # namespaced objects need one of them (or one created since).
            cluster=True,
        )
        host, port = args.listen
        try:
            emulator.start(host, port)
        except OSError as exc:  # one line naming the address, not errno's text alone
            raise SettingError("--listen", f"{host}:{port}", exc.strerror or str(exc)) from None
        with emulator:
            if args.load:
                # Imported here: the loader is only needed with --load, and it pulls in the Calico model.
                from typha.testing.apiserver.calico_v3 import load_file

                for path in args.load:
                    try:
                        load_file(emulator, path)
                    except (ValueError, yaml.YAMLError) as exc:  # one line naming the file, not a traceback
                        raise SettingError("--load", path, " ".join(str(exc).split())[:300]) from None
                    log.info("loaded %s", path)
            # The kubeconfig is written last: its appearance tells a waiting script the server is ready.
            emulator.write_kubeconfig(args.kubeconfig_out)
            log.info("serving the Kubernetes API at %s (kubeconfig %s)", emulator.url, args.kubeconfig_out)
            print(f"listening on {emulator.url}", flush=True)
            received = signal.sigwait(stop_signals)
            log.info("stopping on %s", signal.Signals(received).name)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    return 0
