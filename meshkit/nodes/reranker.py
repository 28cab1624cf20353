"""`Reranker`: reorder retrieved documents by relevance to the question.

``api: tei`` calls a text-embeddings-inference ``/rerank`` endpoint (a cross-encoder);
``api: local`` scores in process by weighted term overlap, a fallback that needs no
model and is good enough to put the document that names the question's words first.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .. import _json
from ..client.http import Timeouts
from ..errors import BadRequest, UpstreamError
from ..protocol.types import ChatRequest
from .base import Context, MicroService, ServiceType, base_urls
from .ports import Document, Documents, documents_in

APIS = ("tei", "local")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and are as at be by can do does for from has have how i in is it its of on or "
    "that the this to was what when where which who why will with you your".split()
)


def terms(text: str) -> list[str]:
    """Lower-case content words of ``text`` with a light plural/suffix folding."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in _STOP:
            continue
        for suffix in ("ing", "es", "s"):
            if len(word) > len(suffix) + 3 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        out.append(word)
    return out


def overlap_scores(query: str, texts: Sequence[str]) -> list[float]:
    """Share of the query's terms (weighted by rarity among ``texts``) each text holds."""
    q = set(terms(query))
    docs = [set(terms(t)) for t in texts]
    if not q or not docs:
        return [0.0] * len(texts)
    idf = {t: math.log(1 + len(docs) / (1 + sum(t in d for d in docs))) + 0.1 for t in q}
    total = sum(idf.values())
    return [sum(idf[t] for t in q if t in d) / total for d in docs]


class Reranker(MicroService):
    """Gives the ``top_n`` documents best for the question, best first, rescored.

    Args:
        name: Node name.
        endpoint: Base URL of a TEI reranker (``api="tei"``); none for ``"local"``.
        api: ``"tei"`` or ``"local"``.
        path: Override of ``/rerank``.
        timeouts: Outbound timeouts.
        params: ``top_n`` (default 3), ``min_score`` (default 0), ``input`` (which node's
            documents to take when several arrive).
    """

    service_type = ServiceType.RERANKER

    def __init__(
        self,
        name: str,
        *,
        endpoint: str | Sequence[str] = (),
        api: str = "local",
        path: str | None = None,
        timeouts: Timeouts | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        super().__init__(name, params=params, timeout=self.timeouts.first_byte)
        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, not {api!r}")
        self.endpoints = base_urls(endpoint)
        if api == "tei" and not self.endpoints:
            raise ValueError("a TEI reranker needs an endpoint")
        self.api = api
        self.path = path or "/rerank"
        self.top_n = int(self.params.get("top_n", 3))
        self.min_score = float(self.params.get("min_score", 0.0))
        self._turn = itertools.cycle(self.endpoints or ("",))

    async def process(self, data: Any, ctx: Context) -> Documents:
        """Rescore and trim the documents against the request's question."""
        try:
            docs = documents_in(data, prefer=self.params.get("input"))
        except ValueError as exc:
            raise BadRequest(f"{self.name}: {exc}") from exc
        if docs is None:
            raise BadRequest(f"{self.name} takes documents, not {type(data).__name__}")
        if not docs:
            return ()
        request = ctx.request
        query = request.prompt if isinstance(request, ChatRequest) else str(request or "")
        texts = [d.text for d in docs]
        if self.api == "tei":
            scores = await self._remote(query, texts, ctx)
        else:
            scores = overlap_scores(query, texts)
        ranked = sorted(
            zip(scores, range(len(docs)), strict=True),
            key=lambda pair: (-pair[0], -docs[pair[1]].score, pair[1]),
        )
        out = [
            Document(
                docs[i].text,
                docs[i].source,
                round(score, 6),
                docs[i].id,
                {**docs[i].meta, "retrieval_score": docs[i].score},
            )
            for score, i in ranked
            if score >= self.min_score
        ]
        return tuple(out[: self.top_n])

    async def _remote(self, query: str, texts: list[str], ctx: Context) -> list[float]:
        url = next(self._turn) + self.path
        limit = ctx.remaining(self.timeouts.first_byte)
        timeouts = Timeouts(self.timeouts.connect, limit, self.timeouts.idle)
        body = {"query": query, "texts": texts, "raw_scores": False, "truncate": True}
        raw = await ctx.client.fetch(
            "POST", url, service=self.name, timeouts=timeouts, what="ranking", body=body
        )
        scores = [0.0] * len(texts)
        try:
            for row in _json.loads(raw):
                scores[int(row["index"])] = float(row["score"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise UpstreamError(
                f"{self.name}: malformed ranking from upstream", service=self.name
            ) from exc
        return scores
