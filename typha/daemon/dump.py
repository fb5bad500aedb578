"""`typha dump`: connect as a client and print the KV set a node would see (like Typha's snapshot dump)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from typing import Any

from typha import logs
from typha.client import AsyncSyncClient
from typha.client.tls import ClientTLS, TLSConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, action="append", metavar="HOST:PORT",
                        help="typha address; repeat to give alternatives")
    parser.add_argument("--syncer", default="felix", help="syncer type: felix, bgp, ...")
    parser.add_argument("--json", action="store_true", help="print one JSON object {key: value}")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for in-sync")
    parser.add_argument("--prefix", default="", help="only keys starting with this")
    # mTLS, as Felix's TyphaCAFile / TyphaCertFile / TyphaKeyFile / TyphaCN / TyphaURISAN (all or none,
    # except that one of --server-cn and --server-uri-san may be left out).
    tls = parser.add_argument_group("TLS (Felix's Typha* client settings)")
    tls.add_argument("--ca-file", default="", help="CA that signs the server certificate (TyphaCAFile)")
    tls.add_argument("--cert-file", default="", help="our client certificate (TyphaCertFile)")
    tls.add_argument("--key-file", default="", help="its key (TyphaKeyFile)")
    tls.add_argument("--server-cn", default="", help="required CN of the server certificate (TyphaCN)")
    tls.add_argument("--server-uri-san", default="", help="required URI SAN of the server certificate (TyphaURISAN)")


def tls_from_args(args: argparse.Namespace) -> ClientTLS:
    tls = ClientTLS(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                    server_cn=args.server_cn, server_uri_san=args.server_uri_san)
    tls.validate()
    logs.check_client_tls(tls.ca_file, tls.cert_file, tls.key_file)
    return tls


async def fetch(servers: list[str], syncer: str, timeout: float, tls: ClientTLS | None = None) -> dict[str, Any]:
    options = tls.client_options() if tls is not None else {}
    client = AsyncSyncClient(servers, syncer, hostname=socket.gethostname(), info="typha dump",
                             max_consecutive_failures=len(servers) * 3, **options)
    client.start()
    try:
        waiter = asyncio.ensure_future(client.wait_in_sync(timeout))
        ended = asyncio.ensure_future(client.wait())
        done, _ = await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        if ended in done:
            ended.result()  # re-raises why the client gave up
            raise ConnectionError("the client stopped before it was in sync")
        ended.cancel()
        if not waiter.result():
            raise TimeoutError(f"not in sync after {timeout:g} s")
        return dict(client.core.items())
    finally:
        await client.close()


def run(args: argparse.Namespace) -> int:
    try:
        kvs = asyncio.run(fetch(args.server, args.syncer, args.timeout, tls_from_args(args)))
    except (ConnectionError, TimeoutError, OSError, TLSConfigError, logs.SettingError) as exc:
        logs.flush()  # the client's last log lines first: the reason is the last line on stderr
        print(f"typha dump: {exc}", file=sys.stderr, flush=True)
        return 1
    selected = {key: kvs[key] for key in sorted(kvs) if key.startswith(args.prefix)}
    if args.json:
        json.dump(selected, sys.stdout, indent=1, sort_keys=True, default=str)
        print()
    else:
        for key, value in selected.items():
            print(f"{key} {json.dumps(value, sort_keys=True, default=str)}")
        print(f"# {len(selected)} keys from the {args.syncer} syncer", file=sys.stderr)
    return 0
