"""typha.testing.wait: every flavour returns once the condition holds and fails naming what it awaited."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import trio

from typha.testing.wait import WaitTimeout, wait_until, wait_until_async, wait_until_trio


def test_returns_once_the_condition_holds():
    calls = itertools.count()
    assert wait_until(lambda: next(calls) >= 3, "the third call", interval=0) >= 0
    assert next(calls) == 4


def test_a_timeout_fails_the_test_and_names_what_was_awaited():
    with pytest.raises(WaitTimeout, match=r"timed out after 0 s waiting for the moon") as info:
        wait_until(lambda: False, "the moon", timeout=0, interval=0)
    assert isinstance(info.value, AssertionError)


def test_the_description_may_be_computed_when_the_wait_gives_up():
    state = {"seen": 0}
    with pytest.raises(WaitTimeout, match="saw 7"):
        wait_until(lambda: state.update(seen=7), lambda: f"saw {state['seen']}", timeout=0, interval=0)


def test_asyncio_flavour_awaits_a_coroutine_condition():
    calls = itertools.count()

    async def ready() -> bool:
        return next(calls) >= 2

    asyncio.run(wait_until_async(ready, "two calls", interval=0))
    assert next(calls) == 3
    with pytest.raises(WaitTimeout, match="never"):
        asyncio.run(wait_until_async(lambda: False, "never", timeout=0, interval=0))


def test_trio_flavour():
    calls = itertools.count()
    trio.run(lambda: wait_until_trio(lambda: next(calls) >= 2, "two calls", interval=0))
    assert next(calls) == 3
    with pytest.raises(WaitTimeout, match="never"):
        trio.run(lambda: wait_until_trio(lambda: False, "never", timeout=0, interval=0))
