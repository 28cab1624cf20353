"""Retries of safe upstream failures (stamina runs them; meshkit judges each failure)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import stamina
from structlog.testing import capture_logs

from meshkit.client import DEADLINE_HEADER, RetryPolicy

from .processes import Meshkit
from .test_resilience import CHAT, _instant, fakes, mesh_text, settled, sse_events, start

__all__ = ["_instant", "fakes"]  # fixtures shared with test_resilience


@contextlib.contextmanager
def real_waits() -> Iterator[None]:
    """Within the block, retries wait as they would in production."""
    with stamina.set_testing(False):
        yield


class TestRetries:
    """Safe failures are retried before anything is sent; the rest are not."""

    @pytest.mark.parametrize("status", [429, 502, 503])
    async def test_safe_status_retried(self, fakes, aiohttp_client, status: int) -> None:
        fake = await fakes(status=status, fail_times=1)
        gw = await start(aiohttp_client, mesh_text(fake.url))
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert resp.status == 200
        assert sse_events(await resp.read())[-1] == "[DONE]"
        assert len(fake.requests) == 2
        await settled(gw)

    async def test_500_not_retried(self, fakes, aiohttp_client) -> None:
        fake = await fakes(status=500)
        gw = await start(aiohttp_client, mesh_text(fake.url))
        resp = await gw.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 502
        assert len(fake.requests) == 1

    async def test_bounded_in_count(self, fakes, aiohttp_client) -> None:
        fake = await fakes(status=503)
        gw = await start(aiohttp_client, mesh_text(fake.url, retries=3))
        resp = await gw.post("/api/chat", json={**CHAT, "stream": False})
        assert resp.status == 502
        assert len(fake.requests) == 4

    async def test_retries_off(self, fakes, aiohttp_client) -> None:
        fake = await fakes(status=503, fail_times=1)
        gw = await start(aiohttp_client, mesh_text(fake.url, retries=0))
        resp = await gw.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 502
        assert len(fake.requests) == 1

    async def test_429_passed_on_with_retry_after(self, fakes, aiohttp_client) -> None:
        fake = await fakes(status=429, retry_after=7)
        gw = await start(aiohttp_client, mesh_text(fake.url, retries=1))
        resp = await gw.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        assert (await resp.json())["error"]["code"] == "upstream_overloaded"

    async def test_retry_after_past_the_budget_is_not_waited(self, fakes, aiohttp_client) -> None:
        """A Retry-After that does not fit in LLM_TIMEOUT fails at once, not at the deadline."""
        fake = await fakes(status=503, retry_after=30)
        gw = await start(aiohttp_client, mesh_text(fake.url, timeout=5))
        with real_waits():  # the call must not wait for a hopeless retry
            async with asyncio.timeout(2):
                resp = await gw.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 502
        assert len(fake.requests) == 1

    def test_longest_backoff_grows_and_is_capped(self) -> None:
        policy = RetryPolicy(base=0.1, cap=0.4, jitter=0.05)
        assert [policy.longest_wait(n) for n in (1, 2, 3, 4)] == pytest.approx(
            [0.15, 0.25, 0.4, 0.4]
        )

    async def test_retries_are_logged_and_counted_once_each(self, fakes, aiohttp_client) -> None:
        fake = await fakes(status=503, fail_times=2)
        gw = await start(aiohttp_client, mesh_text(fake.url, retries=3))
        with capture_logs() as logs:
            resp = await gw.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200 and len(fake.requests) == 3
        retries = [e for e in logs if e["event"] == "meshkit.llm.retry"]
        assert [(e["attempt"], e["error"]) for e in retries] == [
            (1, "upstream_overloaded"),
            (2, "upstream_overloaded"),
        ]


class TestWaits:
    """With real waits: Retry-After is honoured, and the budget bounds the retries."""

    async def test_retry_after_is_honoured(self, fakes, aiohttp_client) -> None:
        """The only replica asked for a second: the retry comes no sooner."""
        fake = await fakes(status=503, fail_times=1, retry_after=1)
        gw = await start(aiohttp_client, mesh_text(fake.url))
        loop = asyncio.get_running_loop()
        with real_waits(), capture_logs() as logs:
            began = loop.time()
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            took = loop.time() - began
        assert resp.status == 200 and len(fake.requests) == 2
        (retry,) = [e for e in logs if e["event"] == "meshkit.llm.retry"]
        assert retry["wait"] >= 1.0 and took >= 1.0

    async def test_another_replica_is_asked_without_waiting(self, fakes, aiohttp_client) -> None:
        """A Retry-After from one replica does not hold back a request another can take."""
        busy = await fakes(status=503, retry_after=20)
        free = await fakes()
        text = mesh_text([busy.url, free.url], balancer="round_robin", timeout=30)
        gw = await start(aiohttp_client, text)
        with real_waits():
            async with asyncio.timeout(5):
                resp = await gw.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        assert (len(busy.requests), len(free.requests)) == (1, 1)

    @pytest.mark.parametrize("budget", ["timeout", "deadline"])
    async def test_budget_bounds_the_retries(self, fakes, aiohttp_client, budget: str) -> None:
        """Ten retries allowed, half a second to spend: the backoff stops the count early,
        no wait runs past the budget, and the caller gets the upstream's failure."""
        fake = await fakes(status=503)
        if budget == "timeout":
            gw = await start(aiohttp_client, mesh_text(fake.url, retries=10, timeout=0.5))
            headers = {}
        else:
            gw = await start(aiohttp_client, mesh_text(fake.url, retries=10))
            headers = {DEADLINE_HEADER: "500"}
        with real_waits():
            async with asyncio.timeout(3):
                resp = await gw.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 502  # the 503 passed on, not a timeout of our own
        assert (await resp.json())["error"]["code"] == "upstream_overloaded"
        assert 2 <= len(fake.requests) <= 4
        await settled(gw)


class TestServed:
    """``meshkit serve`` reports each retry once, as its own event."""

    async def test_one_line_per_retry(self, fakes, tmp_path: Path) -> None:
        fake = await fakes(status=503, fail_times=1)
        async with Meshkit(mesh_text(fake.url), tmp_path, {"MESHKIT_LOG_FORMAT": "json"}) as gw:
            async with aiohttp.ClientSession() as session:
                async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as resp:
                    assert resp.status == 200
                    await resp.read()
            await gw.stop()
        events = [json.loads(line)["event"] for line in gw.lines if line.strip()]
        assert events.count("meshkit.llm.retry") == 1
        assert not [e for e in events if e.startswith("stamina.")]  # said once, by meshkit
