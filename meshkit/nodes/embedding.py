"""`RemoteEmbedding`: text → vectors through an OpenAI ``/v1/embeddings`` or TEI ``/embed``."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from .. import _json
from ..client.http import Timeouts
from ..errors import BadRequest, UpstreamError
from ..protocol.types import ChatRequest, EmbeddingRequest, Embeddings, Usage
from .base import Context, MicroService, ServiceType, base_urls, bearer

APIS = ("openai", "tei")
_PATHS = {"openai": "/v1/embeddings", "tei": "/embed"}


class RemoteEmbedding(MicroService):
    """An embedding model behind HTTP.

    As a graph node it embeds the request's last user message (or a text input) and
    gives :class:`~meshkit.protocol.Embeddings`; retrievers and the gateway's
    ``/v1/embeddings`` call :meth:`embed` directly.

    Args:
        name: Node name.
        endpoint: Base URL (or several, used in turn), without the API path.
        api: ``"openai"`` (any OpenAI-compatible server, including ``python -m
            meshkit.local``) or ``"tei"`` (Hugging Face text-embeddings-inference).
        path: Override of the path (``/v1/embeddings`` or ``/embed``).
        model: Model name sent with OpenAI requests.
        timeouts: Outbound timeouts (``first_byte`` bounds each whole call).
        api_key: Sent as ``Authorization: Bearer``; never logged.
        batch_size: Most texts sent in one call (``params.batch_size``).
    """

    service_type = ServiceType.EMBEDDING

    def __init__(
        self,
        name: str,
        *,
        endpoint: str | Sequence[str],
        api: str = "openai",
        path: str | None = None,
        model: str | None = None,
        timeouts: Timeouts | None = None,
        api_key: str | None = None,
        params: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        super().__init__(name, params=params, timeout=self.timeouts.first_byte)
        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, not {api!r}")
        self.endpoints = base_urls(endpoint)
        if not self.endpoints:
            raise ValueError("RemoteEmbedding needs at least one endpoint")
        self.api = api
        self.path = path or _PATHS[api]
        self.model = model
        self.batch_size = int(batch_size or self.params.get("batch_size", 32))
        self._headers = bearer(api_key)
        self._turn = itertools.cycle(self.endpoints)

    async def process(self, data: Any, ctx: Context) -> Embeddings:
        """Embed the question: a request's last user message, or a text."""
        if isinstance(data, ChatRequest):
            text = data.prompt
        elif isinstance(data, str):
            text = data
        else:
            raise BadRequest(f"{self.name} embeds text, not {type(data).__name__}")
        return await self.embed(EmbeddingRequest((text,), self.model), ctx)

    async def embed(self, request: EmbeddingRequest, ctx: Context) -> Embeddings:
        """One vector per input text, in order (sent in batches of ``batch_size``)."""
        vectors: list[tuple[float, ...]] = []
        tokens = 0
        model = request.model or self.model
        texts = list(request.input)
        for start in range(0, len(texts), self.batch_size):
            batch, used, reported = await self._call(
                texts[start : start + self.batch_size], model, ctx
            )
            vectors.extend(batch)
            tokens += used
            model = reported or model
        return Embeddings(tuple(vectors), model, Usage(prompt_tokens=tokens))

    async def _call(
        self, texts: list[str], model: str | None, ctx: Context
    ) -> tuple[list[tuple[float, ...]], int, str | None]:
        if self.api == "openai":
            body: dict[str, Any] = {"input": texts}
            if model:
                body["model"] = model
        else:
            body = {"inputs": texts, "truncate": True}
        url = next(self._turn) + self.path
        limit = ctx.remaining(self.timeouts.first_byte)
        timeouts = Timeouts(self.timeouts.connect, limit, self.timeouts.idle)
        raw = await ctx.client.fetch(
            "POST",
            url,
            service=self.name,
            timeouts=timeouts,
            what="embeddings",
            body=body,
            headers=self._headers,
        )
        try:
            obj = _json.loads(raw)
            if self.api == "openai":
                rows = sorted(obj["data"], key=lambda d: int(d.get("index", 0)))
                vectors = [tuple(float(x) for x in row["embedding"]) for row in rows]
                usage = obj.get("usage") or {}
                used, reported = int(usage.get("prompt_tokens") or 0), obj.get("model")
            else:
                vectors = [tuple(float(x) for x in row) for row in obj]
                used, reported = 0, None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(
                f"{self.name}: malformed embeddings from upstream", service=self.name
            ) from exc
        if len(vectors) != len(texts):
            raise UpstreamError(
                f"{self.name}: asked for {len(texts)} vectors, got {len(vectors)}",
                service=self.name,
            )
        return vectors, used, reported
