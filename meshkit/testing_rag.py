"""Test helpers for RAG pipelines: a fake embedding and reranking server.

:class:`FakeEmbedder` is a real aiohttp server answering OpenAI ``/v1/embeddings``,
TEI ``/embed`` and TEI ``/rerank`` with deterministic bag-of-words vectors: each
content word (lower-cased, light suffix folding, stop words dropped) is hashed into
one of ``dim`` buckets. Texts that share words get similar vectors, so retrieval over
a small corpus is provably relevant without a model::

    embedder = FakeEmbedder()
    async with embedder.serve() as url:
        ...  # point an `embedding` service (api: openai or tei) at `url`
    assert embedder.requests[0]["input"]
"""

from __future__ import annotations

import math
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
from aiohttp import web

from .nodes.reranker import overlap_scores, terms
from .testing import serve_app


def bag_of_words(text: str, dim: int = 512) -> list[float]:
    """A unit vector counting ``text``'s content words in ``dim`` hashed buckets."""
    vector = [0.0] * dim
    for term in terms(text):
        vector[zlib.crc32(term.encode()) % dim] += 1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


@attrs.define
class FakeEmbedder:
    """A deterministic embedding + rerank server, for tests.

    Attributes:
        dim: Vector length.
        status: If set, every request is answered with this HTTP status.
        requests: Bodies received, in order (each with its ``path``).
        url: Base URL while :meth:`serve` runs.
    """

    dim: int = 512
    status: int | None = None
    requests: list[dict[str, Any]] = attrs.field(factory=list)
    url: str = ""

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._openai)
        app.router.add_post("/embed", self._tei)
        app.router.add_post("/rerank", self._rerank)
        return app

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run the server; yield its base URL."""
        async with serve_app(self.app(), host, port) as url:
            self.url = url
            yield url

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        body = await request.json()
        self.requests.append({"path": request.path, **body})
        if self.status is not None:
            return body, web.json_response(
                {"error": {"message": "scripted failure"}}, status=self.status
            )
        return body, None

    def _vectors(self, texts: Sequence[str]) -> list[list[float]]:
        return [bag_of_words(t, self.dim) for t in texts]

    async def _openai(self, request: web.Request) -> web.Response:
        body, failure = await self._body(request)
        if failure is not None:
            return failure
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response(
            {
                "object": "list",
                "model": body.get("model") or "fake-embed",
                "data": [
                    {"object": "embedding", "index": i, "embedding": v}
                    for i, v in enumerate(self._vectors(texts))
                ],
                "usage": {
                    "prompt_tokens": sum(len(t.split()) for t in texts),
                    "total_tokens": sum(len(t.split()) for t in texts),
                },
            }
        )

    async def _tei(self, request: web.Request) -> web.Response:
        body, failure = await self._body(request)
        if failure is not None:
            return failure
        texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        return web.json_response(self._vectors(texts))

    async def _rerank(self, request: web.Request) -> web.Response:
        body, failure = await self._body(request)
        if failure is not None:
            return failure
        scores = overlap_scores(body["query"], body["texts"])
        ranked = sorted(enumerate(scores), key=lambda pair: -pair[1])
        return web.json_response([{"index": i, "score": s} for i, s in ranked])
