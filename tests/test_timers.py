"""The loop's deadline wheel: far deadlines filed in slots, near ones exact; and the
upstream call's first-token and idle bounds that use it, end to end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit import RemoteLLM, ServiceOrchestrator
from meshkit.client.http import Timeouts
from meshkit.client.timers import Wheel, wheel
from meshkit.errors import UpstreamTimeout
from meshkit.protocol.types import ChatRequest, Message
from meshkit.testing import FakeLLM

RES = 0.02  # a slot: how late a far deadline may fire
FAR = 0.05  # deadlines at least this far are filed in slots


def _wheel() -> Wheel:
    return Wheel(asyncio.get_running_loop(), resolution=RES, exact_below=FAR)


class TestFarDeadlines:
    """A deadline filed in a slot fires once, never early, at most a slot late."""

    async def test_fires_on_time(self) -> None:
        loop = asyncio.get_running_loop()
        timers = _wheel()
        fired: asyncio.Future[float] = loop.create_future()
        when = loop.time() + 0.2
        timers.call_at(when, lambda f: f.set_result(loop.time()), fired)
        assert timers.filed == 1
        async with asyncio.timeout(5):
            at = await fired
        assert when <= at < when + RES + 0.5  # the slack: a loaded loop runs late
        assert timers.filed == 0

    async def test_cancelled_never_fires(self) -> None:
        loop = asyncio.get_running_loop()
        timers = _wheel()
        ran: list[str] = []
        when = loop.time() + 0.1
        gone = timers.call_at(when, ran.append, "cancelled")
        later: asyncio.Future[None] = loop.create_future()
        timers.call_at(when + 2 * RES, lambda f: f.set_result(None), later)
        gone.cancel()
        gone.cancel()  # twice is harmless
        async with asyncio.timeout(5):
            await later
        assert ran == []
        assert timers.filed == 0

    async def test_near_deadline_gets_an_exact_timer(self) -> None:
        loop = asyncio.get_running_loop()
        timers = _wheel()
        handle = timers.call_at(loop.time() + FAR / 2, print, "never")
        assert isinstance(handle, asyncio.TimerHandle)
        assert timers.filed == 0
        handle.cancel()

    async def test_many_requests_each_fire_once_or_not_at_all(self) -> None:
        loop = asyncio.get_running_loop()
        timers = _wheel()
        fired: dict[int, int] = {}
        done: asyncio.Future[None] = loop.create_future()
        start = loop.time()
        handles = []
        kept = 0
        for i in range(2000):
            when = start + 0.1 + (i % 50) * 0.004  # 2000 deadlines over ~10 slots

            def hit(n: int, when: float = when) -> None:
                assert loop.time() >= when
                fired[n] = fired.get(n, 0) + 1

            handles.append(timers.call_at(when, hit, i))
        for i, handle in enumerate(handles):
            if i % 3 == 0:
                handle.cancel()
            else:
                kept += 1
        timers.call_at(start + 0.5, lambda f: f.set_result(None), done)
        async with asyncio.timeout(5):
            await done
        assert sorted(fired) == [i for i in range(2000) if i % 3]
        assert set(fired.values()) == {1}
        assert len(fired) == kept
        assert timers.filed == 0

    async def test_a_failing_callback_spares_the_others(self) -> None:
        loop = asyncio.get_running_loop()
        timers = _wheel()
        seen: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: seen.append(context))
        ran: asyncio.Future[None] = loop.create_future()
        when = loop.time() + 0.1

        def boom(_: object) -> None:
            raise RuntimeError("boom")

        timers.call_at(when, boom, None)
        timers.call_at(when, lambda f: f.set_result(None), ran)
        async with asyncio.timeout(5):
            await ran
        loop.set_exception_handler(None)
        assert [type(c["exception"]) for c in seen] == [RuntimeError]

    async def test_close_forgets_everything(self) -> None:
        loop = asyncio.get_running_loop()
        timers = _wheel()
        ran: list[int] = []
        pending = timers.call_at(loop.time() + 0.1, ran.append, 1)
        timers.close()
        assert timers.filed == 0
        pending.cancel()  # after close: harmless
        after: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.2, after.set_result, None)
        async with asyncio.timeout(5):
            await after
        assert ran == []

    async def test_one_wheel_per_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert wheel(loop) is wheel(loop)
        other = asyncio.new_event_loop()
        try:
            assert wheel(other) is not wheel(loop)
            assert wheel(loop) is wheel(loop)
        finally:
            other.close()


CHAT = ChatRequest(messages=(Message("user", "hi"),))


@pytest.mark.timeout(20)
class TestUpstreamBounds:
    """The first-token and idle bounds of an upstream call still end it in time."""

    async def test_first_token_budget_over_a_second(self) -> None:
        fake = FakeLLM(first_delay=30)
        async with fake.serve():
            llm = RemoteLLM(
                "llm",
                endpoint=fake.url,
                timeouts=Timeouts(first_byte=1.2),
                health_interval=0,
            )
            async with ServiceOrchestrator().add(llm) as mesh:
                loop = asyncio.get_running_loop()
                start = loop.time()
                with pytest.raises(UpstreamTimeout, match="no answer within"):
                    await mesh.run(CHAT)
                took = loop.time() - start
        assert 1.2 <= took < 1.2 + 3.0

    async def test_idle_bound_over_a_second(self) -> None:
        fake = FakeLLM(stall_after=1)
        async with fake.serve():
            llm = RemoteLLM(
                "llm",
                endpoint=fake.url,
                timeouts=Timeouts(first_byte=5, idle=1.1),
                health_interval=0,
            )
            async with ServiceOrchestrator().add(llm) as mesh:
                stream = await mesh.run(ChatRequest(messages=CHAT.messages, stream=True))
                texts = []
                with pytest.raises(UpstreamTimeout, match="stalled"):
                    async for chunk in stream:
                        texts.append(chunk.text)
                await stream.aclose()
            fake.release()
        assert "".join(texts) == "The"
