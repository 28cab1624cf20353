"""A real Prometheus scrapes a running ``meshkit serve``; what it stored is what happened.

Debian's ``prometheus`` (installed by ``make test-deps``) runs on a free loopback port
with a temporary configuration and data directory, scraping the gateway every 250 ms.
After a known mix of requests — streams in both dialects, whole answers, an upstream
that refuses a model, a pipeline whose upstream is down, a caller that leaves mid-stream,
a replica going down — the test waits for a scrape that began after the last request had
ended, then reads the series back through Prometheus's HTTP query API.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from meshkit.testing import FakeLLM

from .conftest import free_port
from .processes import Meshkit, Prometheus
from .test_dashboard import concrete, expressions
from .test_metrics import parse, promtool_check, value

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


def services(good: str, spare: str, dead: str, held: str) -> str:
    def llm(endpoint: str | list[str]) -> dict[str, Any]:
        return {
            "type": "llm",
            "endpoint": endpoint,
            "model": "llama3.2:1b",
            "health_interval": 0.2,
            "retries": 0,
        }

    return yaml.safe_dump(
        {
            "services": {"llm": llm([good, spare]), "dead": llm(dead), "slow": llm(held)},
            "pipelines": {
                "chat": {"nodes": ["llm"]},
                "broken": {"nodes": ["dead"]},
                "held": {"nodes": ["slow"]},
            },
            "gateway": {
                "routes": [
                    {"dialect": "openai", "pipeline": "chat"},
                    {"dialect": "ollama", "pipeline": "chat"},
                    {"dialect": "openai", "pipeline": "broken", "prefix": "/broken"},
                    {"dialect": "openai", "pipeline": "held", "prefix": "/held"},
                ]
            },
        }
    )


async def own_metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return await resp.text()


async def until_metric(url: str, name: str, want: float, **labels: str) -> None:
    """Wait (bounded) until the gateway's own exposition shows ``want``."""
    async with asyncio.timeout(20):
        while value(parse(await own_metrics(url)), name, **labels) != want:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


class TestPrometheusScrape:
    """Prometheus's view of a known mix of requests."""

    async def test_known_mix_read_back_through_the_query_api(self, tmp_path: Path) -> None:
        good, spare, held = FakeLLM(), FakeLLM(), FakeLLM(hold_last=True)
        dead = f"http://127.0.0.1:{free_port()}"
        async with good.serve(), held.serve():
            spare_server = spare.serve()
            await spare_server.__aenter__()
            spare_up = True
            try:
                text = services(good.url, spare.url, dead, held.url)
                async with (
                    Meshkit(text, tmp_path) as gw,
                    Prometheus([f"127.0.0.1:{gw.port}"], tmp_path) as prom,
                ):
                    await self._mix(gw, prom, held, spare_server)
                    spare_up = False
            finally:
                if spare_up:
                    await spare_server.__aexit__(None, None, None)

    async def _mix(self, gw: Meshkit, prom: Prometheus, held: FakeLLM, spare_server: Any) -> None:
        # Both replicas in, as Prometheus first sees them.
        await until_metric(gw.url, "meshkit_upstream_up", 2, service="llm")
        await prom.scraped_after(time.time())
        gw_replicas = _replicas(gw)
        assert await prom.query('meshkit_upstream_up{service="llm"}') == {
            frozenset({("service", "llm"), ("replica", r)}): 1.0 for r in gw_replicas
        }
        # A replica goes down: its health probe takes it out.
        await spare_server.__aexit__(None, None, None)
        await until_metric(gw.url, "meshkit_upstream_up", 1, service="llm")

        async with aiohttp.ClientSession() as session:
            for _ in range(4):
                async with session.post(
                    gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}
                ) as resp:
                    assert resp.status == 200
                    assert (await resp.read()).endswith(b"data: [DONE]\n\n")
            for _ in range(2):
                async with session.post(
                    gw.url + "/api/chat", json={**CHAT, "stream": True}
                ) as resp:
                    assert resp.status == 200
                    await resp.read()
            for _ in range(2):
                async with session.post(gw.url + "/v1/chat/completions", json=CHAT) as resp:
                    assert resp.status == 200
            async with session.post(
                gw.url + "/v1/chat/completions", json={**CHAT, "model": "ghost"}
            ) as resp:
                assert resp.status == 404
            for _ in range(2):
                async with session.post(
                    gw.url + "/broken/v1/chat/completions", json={**CHAT, "stream": True}
                ) as resp:
                    assert resp.status == 502
            async with session.post(
                gw.url + "/held/v1/chat/completions", json={**CHAT, "stream": True}
            ) as resp:
                assert resp.status == 200
                await resp.content.readline()  # the answer has begun; then the caller leaves
                resp.close()
            await asyncio.wait_for(held.cancelled.wait(), 10)
        await until_metric(gw.url, "meshkit_client_disconnects_total", 1, pipeline="held")
        await until_metric(gw.url, "meshkit_requests_in_flight", 0)
        done = time.time()
        await prom.scraped_after(done)

        def labels(**kv: str) -> frozenset[tuple[str, str]]:
            return frozenset(kv.items())

        assert await prom.query("meshkit_requests_total > 0") == {
            labels(pipeline="chat", dialect="openai", code="200"): 6.0,
            labels(pipeline="chat", dialect="ollama", code="200"): 2.0,
            labels(pipeline="chat", dialect="openai", code="404"): 1.0,
            labels(pipeline="broken", dialect="openai", code="502"): 2.0,
            labels(pipeline="held", dialect="openai", code="200"): 1.0,
        }
        ttft = "meshkit_time_to_first_token_seconds"
        streams = {
            labels(pipeline="chat", model="llama3.2:1b"): 6.0,
            labels(pipeline="held", model="llama3.2:1b"): 1.0,
        }
        assert await prom.query(f"{ttft}_count") == streams
        assert await prom.query(f'sum without (le) ({ttft}_bucket{{le="+Inf"}})') == streams
        assert all(v > 0 for v in (await prom.query(f"{ttft}_sum")).values())
        up = await prom.query("meshkit_upstream_up")
        assert up == {
            labels(service="llm", replica=gw_replicas[0]): 1.0,
            labels(service="llm", replica=gw_replicas[1]): 0.0,
            labels(service="dead", replica=_dead(gw)): 0.0,
            labels(service="slow", replica=held.url): 1.0,
        }
        assert await prom.query("meshkit_client_disconnects_total > 0") == {
            labels(pipeline="held"): 1.0
        }
        assert set((await prom.query("meshkit_requests_in_flight")).values()) == {0.0}
        # Every query of the Grafana dashboard is valid PromQL and finds its series
        # (after one more scrape, so that every series has two samples for rate()).
        await prom.scraped_after(time.time())
        for expr in expressions():
            data = await prom.api("query", query=concrete(expr))
            assert data["result"], expr
        exposition = (await own_metrics(gw.url)).encode()
        checked = promtool_check(exposition)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def _replicas(gw: Meshkit) -> list[str]:
    return list(yaml.safe_load(gw.file.read_text())["services"]["llm"]["endpoint"])


def _dead(gw: Meshkit) -> str:
    return str(yaml.safe_load(gw.file.read_text())["services"]["dead"]["endpoint"])
