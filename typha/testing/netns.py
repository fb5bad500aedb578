"""Named network namespaces that a test or the demo creates, runs things in, and deletes.

Every namespace made through `Namespaces.add` is remembered and `cleanup()` deletes them all (in
reverse order); deleting a namespace frees its veths, rules, sets and routes with it, so nothing
leaks into the host's own namespace. Needs root and iproute2.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Namespaces:
    """Creates uniquely named namespaces and runs things inside them."""

    def __init__(self, prefix: str = "fx") -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.prefix = prefix
        self.created: list[str] = []

    def add(self, role: str) -> str:
        name = f"{self.prefix}{self.tag}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
        self.created.append(name)
        self.ip(name, "link", "set", "lo", "up")
        return name

    @staticmethod
    def ip(ns: str, *args: str) -> str:
        """`ip -n NS ARGS`: raises with ip's message on failure."""
        proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"ip -n {ns} {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    @staticmethod
    def run(ns: str, *argv: str, check: bool = True) -> str:
        proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise RuntimeError(f"in {ns}: {' '.join(argv)}: {proc.stderr.strip()}")
        return proc.stdout

    @staticmethod
    @contextmanager
    def entered(ns: str) -> Iterator[None]:
        """Switch the calling thread into `ns` (setns is per thread), and back. Sockets created
        inside stay in `ns` for their whole life, so one process can serve and probe many pods."""
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns}") as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def cleanup(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)
        self.created.clear()
