"""``/metrics``: every series of the README's table, with exact values after known traffic."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from meshkit.nodes.base import Context, MicroService
from meshkit.observability.metrics import MAX_MODELS, OTHER
from meshkit.protocol.types import Chunk

from .test_resilience import CHAT, Client, _instant, fakes, free_port, mesh_text, settled, start

__all__ = ["_instant", "fakes"]  # fixtures shared with test_resilience

SERIES = {
    "meshkit_requests": "counter",
    "meshkit_requests_in_flight": "gauge",
    "meshkit_request_duration_seconds": "histogram",
    "meshkit_time_to_first_token_seconds": "histogram",
    "meshkit_time_per_output_token_seconds": "histogram",
    "meshkit_tokens": "counter",
    "meshkit_node_duration_seconds": "histogram",
    "meshkit_upstream_requests": "counter",
    "meshkit_upstream_up": "gauge",
    "meshkit_client_disconnects": "counter",
    "meshkit_streams": "counter",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def label_values(samples: Samples, label: str) -> set[str]:
    """Every value ``label`` takes in the exposition."""
    return {v for (_, ls) in samples for k, v in ls if k == label}


async def scrape(gw: Client) -> Samples:
    """The gateway's ``/metrics``, parsed."""
    resp = await gw.get("/metrics")
    assert resp.status == 200, await resp.text()
    return parse(await resp.text())


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on an exposition (Debian's ``prometheus`` package)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test-deps` installs Debian's prometheus package")
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition.decode(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class Plain(MicroService):
    """A custom node streaming three words and no usage (tokens must be counted)."""

    async def process(self, data: Any, ctx: Context) -> AsyncIterator[Chunk]:
        async def words() -> AsyncIterator[Chunk]:
            for word in ("one", " two", " three"):
                yield Chunk(word)
            yield Chunk("", "stop")

        return words()


def custom_yaml(gateway: Mapping[str, Any] | None = None) -> str:
    return yaml.safe_dump(
        {
            "services": {"plain": {"type": "custom", "class": "tests.test_metrics:Plain"}},
            "pipelines": {"words": {"nodes": ["plain"]}},
            "gateway": {
                "routes": [{"dialect": "openai", "pipeline": "words", "model": "plain-1"}],
                **(gateway or {}),
            },
        }
    )


class TestExposition:
    """The endpoint itself: names, types, formats, access."""

    async def test_every_series_with_its_type_and_promtool_accepts_it(
        self, fakes, aiohttp_client
    ) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url))
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True})
        await resp.read()
        await settled(gw)
        metrics = await gw.get("/metrics")
        assert metrics.headers["Content-Type"].startswith("text/plain")
        body = await metrics.read()
        types = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
        assert {name: types.get(name) for name in SERIES} == SERIES
        checked = promtool_check(body)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    async def test_openmetrics_when_the_scraper_asks(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url))
        resp = await gw.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).endswith("# EOF\n")

    async def test_needs_no_credentials_and_is_never_refused(self, fakes, aiohttp_client) -> None:
        fake = await fakes(hold_last=True)
        text = mesh_text(fake.url, gateway={"api_keys": ["k-1"], "max_inflight": 1})
        gw = await start(aiohttp_client, text)
        assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 401
        busy = await gw.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"Authorization": "Bearer k-1"},
        )
        assert busy.status == 200
        samples = await scrape(gw)  # while the only slot is taken
        assert value(samples, "meshkit_requests_in_flight", pipeline="chat") == 1
        fake.release()
        await busy.read()
        await settled(gw)
        samples = await scrape(gw)
        assert value(samples, "meshkit_requests_in_flight", pipeline="chat") == 0
        assert value(samples, "meshkit_requests_total", code="401") == 1
        assert value(samples, "meshkit_requests_total", code="200") == 1

    async def test_off_means_no_endpoint_and_requests_still_served(
        self, fakes, aiohttp_client
    ) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url, gateway={"metrics": False}))
        assert (await gw.get("/metrics")).status == 404
        resp = await gw.post(
            "/v1/chat/completions", json={**CHAT, "stream": True}, headers={"X-Request-ID": "r-1"}
        )
        assert resp.status == 200 and resp.headers["X-Request-ID"] == "r-1"
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")


class TestCounts:
    """Values equal what happened, request by request."""

    async def test_a_known_mix(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url))
        for _ in range(3):
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True})
            await resp.read()
        for _ in range(2):
            resp = await gw.post("/api/chat", json={**CHAT, "stream": True})
            await resp.read()
        resp = await gw.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "model": "ghost"})
        assert resp.status == 404  # the upstream does not know it
        resp = await gw.post("/v1/chat/completions", json={"messages": "nope"})
        assert resp.status == 400
        await settled(gw)
        s = await scrape(gw)
        total = "meshkit_requests_total"
        assert value(s, total, pipeline="chat", dialect="openai", code="200") == 4
        assert value(s, total, pipeline="chat", dialect="ollama", code="200") == 2
        assert value(s, total, pipeline="chat", dialect="openai", code="404") == 1
        assert value(s, total, pipeline="chat", dialect="openai", code="400") == 1
        assert value(s, total) == 8
        assert value(s, "meshkit_request_duration_seconds_count", pipeline="chat") == 8
        assert value(s, "meshkit_requests_in_flight") == 0
        model = {"pipeline": "chat", "model": "llama3.2:1b"}
        assert value(s, "meshkit_time_to_first_token_seconds_count", **model) == 5
        assert value(s, "meshkit_time_per_output_token_seconds_count", **model) == 5
        # The fake reports 3 prompt tokens and one per token (5) on each of 6 answers.
        assert value(s, "meshkit_tokens_total", **model, type="input") == 18
        assert value(s, "meshkit_tokens_total", **model, type="output") == 30
        assert value(s, "meshkit_node_duration_seconds_count", pipeline="chat", node="llm") == 7
        up = {"service": "llm", "replica": fake.url}
        assert value(s, "meshkit_upstream_requests_total", **up, outcome="ok") == 6
        assert value(s, "meshkit_upstream_requests_total", **up, outcome="error") == 1
        assert value(s, "meshkit_upstream_requests_total") == 7
        assert value(s, "meshkit_upstream_up", **up) == 1
        assert value(s, "meshkit_client_disconnects_total") == 0
        assert "ghost" not in label_values(s, "model")  # unknown models are "other"

    async def test_a_disconnect_mid_stream(self, fakes, aiohttp_client) -> None:
        fake = await fakes(hold_last=True)
        gw = await start(aiohttp_client, mesh_text(fake.url))
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert resp.status == 200
        await resp.content.readline()  # the answer has begun
        resp.close()
        await asyncio.wait_for(fake.cancelled.wait(), 5)
        await settled(gw)
        s = await scrape(gw)
        assert value(s, "meshkit_client_disconnects_total", pipeline="chat") == 1
        assert value(s, "meshkit_requests_in_flight", pipeline="chat") == 0
        assert value(s, "meshkit_requests_total", code="200") == 1
        assert value(s, "meshkit_upstream_requests_total", outcome="cancelled") == 1
        assert value(s, "meshkit_time_to_first_token_seconds_count") == 1

    async def test_a_replica_down_is_retried_and_reported_out(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        dead = f"http://127.0.0.1:{free_port()}"
        gw = await start(aiohttp_client, mesh_text([dead, fake.url]))
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert resp.status == 200
        await resp.read()
        await settled(gw)
        s = await scrape(gw)
        attempts = "meshkit_upstream_requests_total"
        assert value(s, attempts, service="llm", replica=dead, outcome="retried") == 1
        assert value(s, attempts, service="llm", replica=fake.url, outcome="ok") == 1
        assert value(s, attempts) == 2
        assert value(s, "meshkit_upstream_up", service="llm", replica=dead) == 0
        assert value(s, "meshkit_upstream_up", service="llm", replica=fake.url) == 1

    async def test_tokens_are_counted_when_no_usage_is_reported(self, aiohttp_client) -> None:
        gw = await start(aiohttp_client, custom_yaml())
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "model": None, "stream": True})
        assert resp.status == 200
        await resp.read()
        s = await scrape(gw)
        tokens = {"pipeline": "words", "model": "plain-1"}
        assert value(s, "meshkit_tokens_total", **tokens, type="output") == 3
        assert value(s, "meshkit_tokens_total", **tokens, type="input") == 0

    async def test_labels_come_from_the_configuration_only(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url))
        assert (await gw.get("/wp-admin/secret-token-123")).status == 404
        assert (await gw.post("/v1/chat/completions", json={**CHAT, "model": "x" * 40})).status
        s = await scrape(gw)
        assert value(s, "meshkit_requests_total", pipeline="other", dialect="other") == 1
        seen = set().union(*(label_values(s, k) for k in ("pipeline", "dialect", "model")))
        assert not any("secret" in v or "x" * 40 in v for v in seen), seen
        assert "/healthz" not in str(s) and value(s, "meshkit_requests_total") == 2

    async def test_every_node_of_a_graph_is_timed(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        text = yaml.safe_dump(
            {
                "services": {
                    "prompt": {"type": "prompt"},
                    "llm": {"type": "llm", "endpoint": fake.url, "model": "llama3.2:1b"},
                },
                "pipelines": {"rag": {"edges": ["prompt -> llm"]}},
                "gateway": {"routes": [{"dialect": "openai", "pipeline": "rag"}]},
            }
        )
        gw = await start(aiohttp_client, text)
        for stream in (True, False):
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            assert resp.status == 200
            await resp.read()
        await settled(gw)
        s = await scrape(gw)
        nodes = "meshkit_node_duration_seconds_count"
        assert value(s, nodes, pipeline="rag", node="prompt") == 2
        assert value(s, nodes, pipeline="rag", node="llm") == 2
        assert value(s, "meshkit_time_to_first_token_seconds_count", pipeline="rag") == 1
        assert value(s, "meshkit_tokens_total", pipeline="rag", type="output") == 10
        assert value(s, "meshkit_upstream_requests_total", service="llm", outcome="ok") == 2

    async def test_models_learned_from_answers_are_capped(self, fakes, aiohttp_client) -> None:
        names = tuple(f"m{i:02d}" for i in range(MAX_MODELS + 6))
        fake = await fakes(model_names=("llama3.2:1b", *names))
        gw = await start(aiohttp_client, mesh_text(fake.url))
        for name in names:
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "model": name})
            assert resp.status == 200
        s = await scrape(gw)
        models = label_values(s, "model")
        assert models == {*names[:MAX_MODELS], OTHER}
        assert value(s, "meshkit_tokens_total", model=OTHER, type="output") == 6 * 5

    async def test_each_gateway_has_its_own_registry(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        one = await start(aiohttp_client, mesh_text(fake.url))
        two = await start(aiohttp_client, mesh_text(fake.url))
        await (await one.post("/v1/chat/completions", json=CHAT)).read()
        assert value(await scrape(one), "meshkit_requests_total") == 1
        assert value(await scrape(two), "meshkit_requests_total") == 0
