"""Give freed heap memory back to the OS, so that RSS falls again after a burst of peers (glibc only).

Two glibc behaviours keep RSS at its high-water mark after thousands of connections or a few stalled
snapshots have come and gone (issue 17's probes: +36 MB after 40 stalled clients, +49 MB after 4,000
idle sockets, none of it returned once they were dropped):

- the mmap threshold is dynamic: once a large block (a 1 MiB snapshot chunk) has been freed, blocks up
  to that size come from the heap instead of their own mapping, and a freed heap block in the middle
  of an arena is not returned; fixing the threshold at its default keeps such blocks in mappings,
  which go back to the OS when freed;
- free pages inside arenas (gRPC core's per-connection state is many small blocks) are returned only
  by malloc_trim, which the server calls every TRIM_INTERVAL_SECS, off the event loop.

Elsewhere (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # malloc.h
DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's initial value
TRIM_INTERVAL_SECS = 10.0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def fix_mmap_threshold() -> bool:
    """Keep large blocks in their own mappings (and stop glibc raising the threshold). Idempotent."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD))


def trim() -> bool:
    """Return free heap pages to the OS; True when some were released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
