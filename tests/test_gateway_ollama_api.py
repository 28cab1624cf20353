"""Ollama's side endpoints (version, show, ps, embed) through the official ``ollama`` client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ollama
import pytest
from aiohttp.test_utils import TestClient

from meshkit.testing import FakeLLM
from meshkit.testing_rag import FakeEmbedder, bag_of_words

from .conftest import Clients, GatewayFactory
from .test_gateway_embeddings import embed_mesh

TEXTS = ["the sky is blue", "grass is green"]


@pytest.fixture
async def gw(fake: FakeLLM, gateway: GatewayFactory) -> AsyncIterator[TestClient[Any, Any]]:
    """Both dialects with an embedding service at ``/``, without one at ``/bare``."""
    embedder = FakeEmbedder(dim=64)
    async with embedder.serve():
        yield await gateway(embed_mesh(fake.url, embedder.url))


@pytest.fixture
async def bare(gw: TestClient[Any, Any]) -> AsyncIterator[ollama.AsyncClient]:
    """A client of the route that has no embedding service."""
    async with ollama.AsyncClient(host=str(gw.make_url("/bare"))) as client:
        yield client


class TestVersion:
    """GET /api/version answers the API level clients check."""

    async def test_version(self, gw: TestClient[Any, Any]) -> None:
        resp = await gw.get("/api/version")
        assert resp.status == 200
        version = (await resp.json())["version"]
        assert [int(x) for x in version.split(".")] >= [0, 5, 0]


class TestShow:
    """POST /api/show knows the route's chat and embedding models, and no others."""

    async def test_chat_model(self, gw: TestClient[Any, Any], clients: Clients) -> None:
        shown = await clients.ollama(gw).show("llama3.2:1b")
        assert shown.capabilities == ["completion"]
        assert shown.details is not None and shown.modified_at is not None

    async def test_embedding_model(self, gw: TestClient[Any, Any], clients: Clients) -> None:
        shown = await clients.ollama(gw).show("fake-embed")
        assert shown.capabilities == ["embedding"]

    async def test_unknown_model_is_404(self, gw: TestClient[Any, Any], clients: Clients) -> None:
        with pytest.raises(ollama.ResponseError) as caught:
            await clients.ollama(gw).show("mistral:7b")
        assert caught.value.status_code == 404
        assert "mistral:7b" in caught.value.error

    async def test_missing_model_is_400(self, gw: TestClient[Any, Any]) -> None:
        resp = await gw.post("/api/show", json={})
        assert resp.status == 400
        assert "'model'" in (await resp.json())["error"]


class TestPs:
    """GET /api/ps lists the models the route serves, never expiring."""

    async def test_lists_chat_and_embedding_models(
        self, gw: TestClient[Any, Any], clients: Clients
    ) -> None:
        running = await clients.ollama(gw).ps()
        assert [m.model for m in running.models] == ["llama3.2:1b", "fake-embed"]
        assert all(m.expires_at is not None and m.expires_at.year > 2100 for m in running.models)

    async def test_route_without_embeddings_lists_the_chat_model(
        self, bare: ollama.AsyncClient
    ) -> None:
        running = await bare.ps()
        assert [m.name for m in running.models] == ["llama3.2:1b"]


class TestEmbed:
    """POST /api/embed and the older /api/embeddings answer from the embedding service."""

    async def test_embed_batch(self, gw: TestClient[Any, Any], clients: Clients) -> None:
        result = await clients.ollama(gw).embed(model="fake-embed", input=TEXTS)
        assert [list(v) for v in result.embeddings] == [bag_of_words(t, 64) for t in TEXTS]
        assert result.model == "fake-embed" and result.prompt_eval_count == 7
        assert result.total_duration is not None and result.total_duration > 0

    async def test_embed_one_text_without_model(self, gw: TestClient[Any, Any]) -> None:
        resp = await gw.post("/api/embed", json={"input": "the sky is blue"})
        body = await resp.json()
        assert body["model"] == "fake-embed"
        assert body["embeddings"] == [bag_of_words("the sky is blue", 64)]

    async def test_older_embeddings_endpoint(
        self, gw: TestClient[Any, Any], clients: Clients
    ) -> None:
        result = await clients.ollama(gw).embeddings(model="fake-embed", prompt="the sky is blue")
        assert list(result.embedding) == bag_of_words("the sky is blue", 64)

    @pytest.mark.parametrize("path", ["/bare/api/embed", "/bare/api/embeddings"])
    async def test_route_without_embedding_service_is_404(
        self, gw: TestClient[Any, Any], path: str
    ) -> None:
        resp = await gw.post(path, json={"model": "fake-embed", "input": "a", "prompt": "a"})
        assert resp.status == 404
        assert "embedding" in (await resp.json())["error"]

    async def test_client_sees_404(self, bare: ollama.AsyncClient) -> None:
        with pytest.raises(ollama.ResponseError) as caught:
            await bare.embed(model="fake-embed", input="a")
        assert caught.value.status_code == 404

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"input": []}, "input"),
            ({"input": "a", "truncate": False}, "truncate"),
            ({"input": "a", "options": {"num_ctx": 8}}, "options"),
            ({"input": "a", "dimensions": 8}, "dimensions"),
        ],
    )
    async def test_refused_with_400_naming_the_field(
        self, gw: TestClient[Any, Any], body: dict[str, Any], param: str
    ) -> None:
        resp = await gw.post("/api/embed", json=body)
        assert resp.status == 400
        assert f"'{param}'" in (await resp.json())["error"]

    async def test_keep_alive_is_accepted(self, gw: TestClient[Any, Any]) -> None:
        resp = await gw.post("/api/embed", json={"input": "a", "keep_alive": "5m"})
        assert resp.status == 200
