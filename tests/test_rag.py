"""The RAG example end to end: fake embedder + fake LLM behind the real gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from examples.rag.rag import app as rag_app
from examples.rag.rag import build
from meshkit import Mesh, build_app
from meshkit.spec import loads
from meshkit.testing import FakeLLM
from meshkit.testing_rag import FakeEmbedder

DOCS = Path("examples/rag/docs").resolve()
QUESTION = "Why is the sky blue at noon and red at sunset?"


def rag_yaml(embed_url: str, llm_url: str, *, api: str = "openai") -> str:
    spec = yaml.safe_load(Path("examples/rag/services.yaml").read_text())
    spec["services"]["embed"].update(endpoint=embed_url, api=api)
    spec["services"]["llm"].update(endpoint=llm_url, model="llama3.2:1b")
    spec["services"]["retrieve"]["params"]["path"] = str(DOCS)
    return yaml.safe_dump(spec)


@pytest.fixture
async def embedder() -> AsyncIterator[FakeEmbedder]:
    server = FakeEmbedder()
    async with server.serve():
        yield server


@pytest.fixture
async def rag(aiohttp_client: Any, embedder: FakeEmbedder, fake: FakeLLM) -> TestClient[Any, Any]:
    text = rag_yaml(embedder.url, fake.url)  # type: ignore[attr-defined]
    client: TestClient[Any, Any] = await aiohttp_client(
        TestServer(build_app(Mesh(loads(text, env={}))), handler_cancellation=True)
    )
    return client


def sse_events(body: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in body.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


class TestRagThroughTheGateway:
    """Retrieval is relevant, the LLM sees the passages, the client gets the sources."""

    async def test_openai_stream_ends_with_sources(self, rag: Any, fake: FakeLLM) -> None:
        resp = await rag.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": QUESTION}], "stream": True},
        )
        assert resp.status == 200
        events = sse_events(await resp.text())
        text = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices")
        )
        assert text == "The sky appears blue."
        (report,) = [e["meshkit"] for e in events if "meshkit" in e]
        assert report["sources"][0]["source"] == "sky.md"
        assert report["path"] == ["embed", "retrieve", "rerank", "prompt", "llm", "guard"]
        sent = fake.requests[-1]["messages"]
        assert sent[0]["role"] == "system"
        assert "Rayleigh scattering" in sent[-1]["content"] and QUESTION in sent[-1]["content"]

    @pytest.mark.parametrize(
        ("question", "source"),
        [
            ("How hot should the water be for green tea?", "tea.md"),
            ("How do bees turn nectar into honey?", "bees.md"),
            ("What makes a sourdough starter rise?", "sourdough.md"),
            ("Where do volcanoes and lava come from?", "volcanoes.md"),
        ],
    )
    async def test_non_streaming_sources_are_relevant(
        self, rag: Any, question: str, source: str
    ) -> None:
        resp = await rag.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": question}]}
        )
        body = await resp.json()
        assert body["choices"][0]["message"]["content"] == "The sky appears blue."
        assert body["meshkit"]["sources"][0]["source"] == source

    async def test_ollama_stream_carries_sources_on_the_final_object(self, rag: Any) -> None:
        resp = await rag.post(
            "/api/chat",
            json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": QUESTION}]},
        )
        lines = [json.loads(x) for x in (await resp.text()).splitlines()]
        assert lines[-1]["done"] is True
        assert lines[-1]["meshkit"]["sources"][0]["source"] == "sky.md"

    async def test_no_relevant_document_skips_the_reranker(self, rag: Any, fake: FakeLLM) -> None:
        resp = await rag.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "qwxz?"}]}
        )
        meta = (await resp.json())["meshkit"]
        assert meta["skipped"] == ["rerank"] and meta["sources"] == []
        assert fake.requests[-1]["messages"][-1]["content"] == "qwxz?"

    async def test_guardrail_redacts_the_answer(
        self, aiohttp_client: Any, embedder: FakeEmbedder
    ) -> None:
        llm = FakeLLM(tokens=["Your number is 123-", "45-67", "89, keep it safe."])
        async with llm.serve() as url:
            text = rag_yaml(embedder.url, url)  # type: ignore[attr-defined]
            client = await aiohttp_client(TestServer(build_app(Mesh(loads(text, env={})))))
            resp = await client.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": QUESTION}], "stream": True},
            )
            events = sse_events(await resp.text())
        text = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices")
        )
        assert text == "Your number is [REDACTED], keep it safe."

    async def test_tei_embeddings_and_the_embeddings_route(
        self, aiohttp_client: Any, embedder: FakeEmbedder, fake: FakeLLM
    ) -> None:
        text = rag_yaml(embedder.url, fake.url, api="tei")  # type: ignore[attr-defined]
        client = await aiohttp_client(TestServer(build_app(Mesh(loads(text, env={})))))
        resp = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "green tea water temperature"}]},
        )
        assert (await resp.json())["meshkit"]["sources"][0]["source"] == "tea.md"
        assert {r["path"] for r in embedder.requests} == {"/embed"}
        resp = await client.post("/v1/embeddings", json={"input": ["a b", "c"]})
        assert len((await resp.json())["data"]) == 2


class TestRagInPython:
    """The same pipeline built in code answers the same way."""

    async def test_python_version(
        self, aiohttp_client: Any, embedder: FakeEmbedder, fake: FakeLLM
    ) -> None:
        pipeline = build(embedder.url, fake.url)  # type: ignore[attr-defined]
        client = await aiohttp_client(TestServer(rag_app(pipeline)))
        resp = await client.post("/api/generate", json={"prompt": QUESTION, "stream": False})
        body = await resp.json()
        assert body["response"] == "The sky appears blue."
        assert body["meshkit"]["sources"][0]["source"] == "sky.md"
