"""The local node served by meshkit itself, called with the official `openai` client."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Iterator

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openai.types.chat import ChatCompletionMessageParam

from meshkit.gateway import build_service_app
from meshkit.local import LlamaEngine, LocalLLM, resolve_model

pytestmark = pytest.mark.slow

Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    eng = LlamaEngine(resolve_model())
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.close())


@pytest.fixture
async def client(engine: LlamaEngine) -> AsyncIterator[Client]:
    node = LocalLLM("llm", engine=engine)
    async with TestClient(TestServer(build_service_app(node, embeddings=node))) as test_client:
        yield test_client


@pytest.fixture
async def oai(client: Client) -> AsyncIterator[openai.AsyncOpenAI]:
    base = str(client.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0) as oai:
        yield oai


QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Why is the sky blue?"}]


class TestOpenAIClient:
    """The official client sees a well-formed OpenAI server."""

    async def test_streamed_chat(self, oai: openai.AsyncOpenAI) -> None:
        stream = await oai.chat.completions.create(
            model="gemma-3-270m",
            messages=QUESTION,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert len(chunks) >= 3 and text
        assert finishes[-1] in ("stop", "length")
        usage = chunks[-1].usage
        assert usage is not None and 1 <= usage.completion_tokens <= 12

    async def test_whole_chat_without_model_uses_the_local_one(
        self, oai: openai.AsyncOpenAI
    ) -> None:
        answer = await oai.chat.completions.create(
            model="",
            messages=QUESTION,
            max_tokens=8,
        )
        assert answer.choices[0].message.content
        assert answer.usage is not None and answer.usage.prompt_tokens > 0

    async def test_unknown_model_is_a_404(self, oai: openai.AsyncOpenAI) -> None:
        with pytest.raises(openai.NotFoundError, match=re.escape("llama3.2:1b")):
            await oai.chat.completions.create(
                model="llama3.2:1b",
                messages=QUESTION,
                max_tokens=4,
                stream=True,
            )

    async def test_models_lists_the_local_model(self, oai: openai.AsyncOpenAI) -> None:
        models = await oai.models.list()
        assert [m.id async for m in models] == ["gemma-3-270m"]

    async def test_embeddings_for_a_batch(self, oai: openai.AsyncOpenAI) -> None:
        result = await oai.embeddings.create(
            model="gemma-3-270m",
            input=["The cat sat on the mat.", "A kitten rested on a rug.", "Tax is due."],
        )
        vectors = [d.embedding for d in result.data]
        assert [len(v) for v in vectors] == [640, 640, 640]
        related = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
        unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
        assert related > unrelated
        assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-3) for v in vectors)


class TestDisconnect:
    """A client that hangs up mid-stream frees the model."""

    async def test_next_request_starts_promptly(self, client: Client, engine: LlamaEngine) -> None:
        cancelled = engine.stats.cancelled
        body = {"messages": QUESTION, "max_tokens": 400, "stream": True}
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"data: ")
        response.close()  # hang up with ~390 tokens (>10 s) still to generate
        async with asyncio.timeout(10):
            short = await client.post(
                "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4}
            )
            answer = await short.json()
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
        assert engine.stats.cancelled == cancelled + 1


class TestHealth:
    """Liveness and readiness."""

    @pytest.mark.parametrize("path", ["/healthz", "/readyz"])
    async def test_ok(self, client: Client, path: str) -> None:
        response = await client.get(path)
        assert response.status == 200
