"""``/v1/embeddings``: float and base64 encodings, through the official client and raw HTTP."""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from meshkit.testing import FakeLLM
from meshkit.testing_rag import FakeEmbedder, bag_of_words

from .conftest import Clients, GatewayFactory

TEXTS = ["the sky is blue", "grass is green"]


def embed_mesh(llm: str, embedder: str) -> str:
    """One chat pipeline; both dialects with an embedding service, and one route without."""
    return yaml.safe_dump(
        {
            "services": {
                "llm": {"type": "llm", "endpoint": llm, "model": "llama3.2:1b"},
                "embed": {"type": "embedding", "endpoint": embedder, "model": "fake-embed"},
            },
            "pipelines": {"chat": {"nodes": ["llm"]}},
            "gateway": {
                "routes": [
                    {"dialect": "openai", "pipeline": "chat", "embeddings": "embed"},
                    {"dialect": "ollama", "pipeline": "chat", "embeddings": "embed"},
                    {"dialect": "openai", "pipeline": "chat", "prefix": "/bare"},
                    {"dialect": "ollama", "pipeline": "chat", "prefix": "/bare"},
                ]
            },
        }
    )


@pytest.fixture
async def embedder() -> AsyncIterator[FakeEmbedder]:
    server = FakeEmbedder(dim=64)
    async with server.serve():
        yield server


@pytest.fixture
async def gw(
    fake: FakeLLM, embedder: FakeEmbedder, gateway: GatewayFactory
) -> TestClient[Any, Any]:
    return await gateway(embed_mesh(fake.url, embedder.url))


def decode(text: str) -> list[float]:
    values = array.array("f", base64.b64decode(text))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def as_float32(vector: list[float]) -> list[float]:
    return array.array("f", vector).tolist()


class TestOpenAIClient:
    """The official client asks for base64 unless told otherwise; both come back right."""

    async def test_default_request_is_base64_and_decodes_to_the_vectors(
        self, gw: TestClient[Any, Any], clients: Clients, embedder: FakeEmbedder
    ) -> None:
        result = await clients.openai(gw).embeddings.create(model="fake-embed", input=TEXTS)
        assert embedder.requests[-1]["input"] == TEXTS
        assert [d.embedding for d in result.data] == [
            as_float32(bag_of_words(t, 64)) for t in TEXTS
        ]
        assert result.model == "fake-embed" and result.usage.prompt_tokens == 7

    async def test_float_is_exact(self, gw: TestClient[Any, Any], clients: Clients) -> None:
        result = await clients.openai(gw).embeddings.create(
            model="fake-embed", input=TEXTS, encoding_format="float"
        )
        assert [d.embedding for d in result.data] == [bag_of_words(t, 64) for t in TEXTS]

    async def test_explicit_base64_is_a_string(
        self, gw: TestClient[Any, Any], clients: Clients
    ) -> None:
        result = await clients.openai(gw).embeddings.create(
            model="fake-embed", input="the sky is blue", encoding_format="base64"
        )
        (item,) = result.data
        assert isinstance(item.embedding, str)
        assert decode(item.embedding) == as_float32(bag_of_words("the sky is blue", 64))


class TestRawHTTP:
    """The wire format, and what is refused."""

    async def test_base64_is_little_endian_float32(self, gw: TestClient[Any, Any]) -> None:
        resp = await gw.post("/v1/embeddings", json={"input": ["a b"], "encoding_format": "base64"})
        assert resp.status == 200
        body = await resp.json()
        raw = base64.b64decode(body["data"][0]["embedding"])
        assert len(raw) == 4 * 64
        expected = array.array("f", bag_of_words("a b", 64))
        if sys.byteorder == "big":
            expected.byteswap()
        assert raw == expected.tobytes()

    async def test_float_is_the_default_on_the_wire(self, gw: TestClient[Any, Any]) -> None:
        resp = await gw.post("/v1/embeddings", json={"input": "a b"})
        body = await resp.json()
        assert body["data"][0]["embedding"] == bag_of_words("a b", 64)

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
            ({"input": "a", "encoding_format": 3}, "encoding_format"),
            ({"input": "a", "dimensions": 8}, "dimensions"),
            ({"input": []}, "input"),
            ({"input": [1, 2]}, "input"),
        ],
    )
    async def test_refused_with_400_naming_the_field(
        self, gw: TestClient[Any, Any], body: dict[str, Any], param: str
    ) -> None:
        resp = await gw.post("/v1/embeddings", json=body)
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["param"] == param and param in error["message"]

    async def test_route_without_embedding_service_is_404(self, gw: TestClient[Any, Any]) -> None:
        resp = await gw.post("/bare/v1/embeddings", json={"input": "a"})
        assert resp.status == 404
        assert "embedding" in (await resp.json())["error"]["message"]
