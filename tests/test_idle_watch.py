"""Idle watches: each wait for data on a stream is bounded by its own ``idle``, the
watches of one loop sharing one timer that is never later than a watch's bound."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from meshkit.client import h1
from meshkit.client.limits import IdleWatch


class Failing:
    """What a watch fails when a wait runs out: records why, and when it happened."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.failed = asyncio.Event()

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.failed.set()


def watch(idle: float, *, waiting: bool = True) -> tuple[IdleWatch, Failing]:
    response = Failing()
    w = IdleWatch(cast(h1.Response, response), idle)
    if waiting:
        w.reading = asyncio.get_running_loop().time()
    return w, response


class TestIdleWatch:
    """A wait longer than its watch's ``idle`` fails the response; nothing else does."""

    async def test_a_wait_longer_than_idle_fails_the_response(self) -> None:
        w, response = watch(0.05)
        await asyncio.wait_for(response.failed.wait(), 10)
        (error,) = response.errors
        assert isinstance(error, TimeoutError)
        w.cancel()

    async def test_a_shorter_watch_added_later_is_checked_in_its_own_time(self) -> None:
        """The shared timer, armed for a long watch, is brought forward by a short one."""
        long, slow = watch(30.0)
        _, fast = watch(0.05)
        await asyncio.wait_for(fast.failed.wait(), 10)
        assert slow.errors == []
        long.cancel()

    async def test_cancelled_and_paused_watches_never_fail(self) -> None:
        """Checked at the same time as a watch that fails, neither fails."""
        cancelled, first = watch(0.05)
        cancelled.cancel()
        paused, second = watch(0.05, waiting=False)
        _, third = watch(0.05)
        await asyncio.wait_for(third.failed.wait(), 10)
        await asyncio.sleep(0)  # (anything failed in the same check is failed by now)
        assert first.errors == [] and second.errors == []
        paused.cancel()

    async def test_each_watch_fails_once(self) -> None:
        """Later checks (here, the one failing a watch made after) leave it alone."""
        watches: list[tuple[IdleWatch, Any]] = [watch(0.05) for _ in range(5)]
        for _, response in watches:
            await asyncio.wait_for(response.failed.wait(), 10)
        later, last = watch(0.05)
        await asyncio.wait_for(last.failed.wait(), 10)
        for w, response in [*watches, (later, last)]:
            w.cancel()
            assert len(response.errors) == 1
