"""Waiting until a condition holds, for tests, benchmarks and the demo: poll, bounded by a timeout.

A wait is a guard against hangs, never a timing assertion: give it a generous timeout, and when the
timeout passes it raises `WaitTimeout` (an AssertionError, so pytest reports a failure) saying what
was awaited. Polling is the right tool only where nothing can signal the change: state owned by
another thread, process, server or the kernel. Where the code under test has an event, await that.

One flavour per concurrency model, with the same arguments:
- `wait_until`: blocking (threads, subprocesses, files);
- `wait_until_async`: asyncio; the condition may also be a coroutine function;
- `wait_until_trio`: trio.
Each returns the seconds it waited, for callers that report it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import trio

Describe = str | Callable[[], str]

DEFAULT_TIMEOUT = 10.0
DEFAULT_INTERVAL = 0.02  # asyncio and trio: a cheap in-process check
SYNC_INTERVAL = 0.05  # blocking waits mostly poll files, subprocesses and HTTP


class WaitTimeout(AssertionError):
    """The condition did not hold within the timeout."""


def _timed_out(what: Describe, timeout: float) -> WaitTimeout:
    # `what` may be a callable so the message can show the state as it was when the wait gave up.
    description = what() if callable(what) else what
    return WaitTimeout(f"timed out after {timeout:g} s waiting for {description}")


def wait_until(condition: Callable[[], object], what: Describe, *, timeout: float = DEFAULT_TIMEOUT,
               interval: float = SYNC_INTERVAL) -> float:
    """Block until `condition()` is truthy; raise `WaitTimeout` naming `what` after `timeout` seconds."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise _timed_out(what, timeout)
        time.sleep(interval)


async def wait_until_async(condition: Callable[[], object | Awaitable[object]], what: Describe, *,
                           timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL) -> float:
    """asyncio: as `wait_until`, without blocking the loop; `condition` may return an awaitable."""
    started = time.monotonic()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise _timed_out(what, timeout)
        await asyncio.sleep(interval)


async def wait_until_trio(condition: Callable[[], object], what: Describe, *, timeout: float = DEFAULT_TIMEOUT,
                          interval: float = DEFAULT_INTERVAL) -> float:
    """trio: as `wait_until`, without blocking the run."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise _timed_out(what, timeout)
        await trio.sleep(interval)
