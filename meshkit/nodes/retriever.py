"""`VectorRetriever`: an in-memory vector index over a folder of text files.

At :meth:`~VectorRetriever.open` it reads the folder, cuts each file into chunks of
about ``chunk_size`` characters (on paragraph, then sentence boundaries), and embeds
them through its embedding service; queries then rank chunks by cosine similarity.
Plain Python arithmetic: meant for demo- and test-sized corpora (thousands of chunks),
so a RAG pipeline needs no database.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ..errors import BadRequest
from ..protocol.types import ChatRequest, EmbeddingRequest, Embeddings
from .base import Context, MicroService, ServiceType
from .ports import Document, Documents

if TYPE_CHECKING:
    from ..client.http import HttpClient

log = structlog.get_logger(__name__)

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class Embedder(Protocol):
    """Anything that embeds texts: a RemoteEmbedding, a LocalLLM, a test double."""

    name: str

    async def embed(self, request: EmbeddingRequest, ctx: Context) -> Embeddings: ...


def chunk_text(text: str, size: int = 800) -> list[str]:
    """Cut ``text`` into pieces of at most ~``size`` characters on natural boundaries."""
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        parts = [para] if len(para) <= size else _SENTENCE.split(para)
        for part in parts:
            if pieces and len(pieces[-1]) + len(part) + 1 <= size and len(part) < size // 2:
                pieces[-1] += " " + part
            else:
                pieces.extend(part[i : i + size] for i in range(0, len(part), size))
    return pieces


def _unit(vector: Sequence[float]) -> tuple[float, ...]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return tuple(x / norm for x in vector)


class VectorRetriever(MicroService):
    """Finds the ``top_k`` chunks most similar to the question.

    Takes the question's :class:`Embeddings` (from an embedding node) or the request
    itself (then embeds the question through ``embedding``); gives documents, best
    first, each with its file name as ``source`` and its cosine ``score``.

    Args:
        name: Node name.
        embedding: The embedder, or the name of an embedding service (bound by the mesh).
        path: Folder of ``.txt``/``.md`` files loaded at open (relative to the YAML file).
        top_k: Most documents given (``params.top_k``, default 4).
        min_score: Documents scoring below it are dropped (``params.min_score``).
        chunk_size: Characters per chunk (``params.chunk_size``, default 800).
    """

    service_type = ServiceType.RETRIEVER

    def __init__(
        self,
        name: str,
        *,
        embedding: Embedder | str | None = None,
        path: str | Path | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(name, params=params, timeout=timeout)
        p = self.params
        embedding = embedding if embedding is not None else p.get("embedding")
        self._embedder: Embedder | None = None if isinstance(embedding, str) else embedding
        self.embedding_name = embedding if isinstance(embedding, str) else None
        raw_path = path if path is not None else p.get("path")
        self.path = Path(raw_path) if raw_path is not None else None
        self.top_k = int(p.get("top_k", 4))
        self.min_score = float(p.get("min_score", 0.0))
        self.chunk_size = int(p.get("chunk_size", 800))
        self.patterns = tuple(str(p.get("glob", "*.md,*.txt")).split(","))
        self.documents: list[Document] = []
        self._vectors: list[tuple[float, ...]] = []
        if self.top_k < 1 or self.chunk_size < 50:
            raise ValueError("params.top_k must be >= 1 and params.chunk_size >= 50")

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Services that must be open before this one (its embedding service)."""
        return (self.embedding_name,) if self.embedding_name else ()

    def bind(self, services: Mapping[str, MicroService], base: Path | None = None) -> None:
        """Resolve the embedding service by name and the folder against ``base``."""
        if self.embedding_name is not None:
            found = services.get(self.embedding_name)
            if found is None:
                raise ValueError(f"params.embedding: unknown service {self.embedding_name!r}")
            if not hasattr(found, "embed"):
                raise ValueError(f"params.embedding: service {self.embedding_name!r} cannot embed")
            self._embedder = found
        if self.path is not None and base is not None and not self.path.is_absolute():
            self.path = base / self.path

    @property
    def embedder(self) -> Embedder:
        """The embedding service (set in the constructor or bound by the mesh)."""
        if self._embedder is None:
            raise RuntimeError(f"{self.name}: no embedding service (set params.embedding)")
        return self._embedder

    async def open(self, client: HttpClient) -> None:
        """Load and embed the folder (once)."""
        if self.path is None or self.documents:
            return
        files = await asyncio.to_thread(self._read_folder, self.path)
        docs = [
            Document(piece, source, id=f"{source}#{i}")
            for source, text in files
            for i, piece in enumerate(chunk_text(text, self.chunk_size))
        ]
        await self.add(docs, Context(client=client))
        log.info("meshkit.retriever.loaded", node=self.name, files=len(files), chunks=len(docs))

    def _read_folder(self, folder: Path) -> list[tuple[str, str]]:
        if not folder.is_dir():
            raise FileNotFoundError(f"{self.name}: {folder} is not a folder")
        found = sorted({f for pattern in self.patterns for f in folder.rglob(pattern.strip())})
        return [(str(f.relative_to(folder)), f.read_text(encoding="utf-8")) for f in found]

    async def add(self, documents: Sequence[Document], ctx: Context) -> None:
        """Embed ``documents`` and add them to the index."""
        if not documents:
            return
        result = await self.embedder.embed(EmbeddingRequest(tuple(d.text for d in documents)), ctx)
        self.documents.extend(documents)
        self._vectors.extend(_unit(v) for v in result.vectors)

    async def process(self, data: Any, ctx: Context) -> Documents:
        """The best ``top_k`` documents for the question."""
        if isinstance(data, Embeddings):
            if not data.vectors:
                raise BadRequest(f"{self.name}: no query vector")
            query = data.vectors[0]
        elif isinstance(data, (ChatRequest, str)):
            text = data.prompt if isinstance(data, ChatRequest) else data
            query = (await self.embedder.embed(EmbeddingRequest((text,)), ctx)).vectors[0]
        else:
            raise BadRequest(f"{self.name} takes vectors or a question, not {type(data).__name__}")
        return self.search(query)

    def search(self, query: Sequence[float]) -> Documents:
        """Rank the index against a query vector."""
        unit = _unit(query)
        scored = sorted(
            (
                (sum(a * b for a, b in zip(unit, vec, strict=False)), i)
                for i, vec in enumerate(self._vectors)
            ),
            reverse=True,
        )
        out: list[Document] = []
        for score, i in scored[: self.top_k]:
            if score < self.min_score:
                break
            doc = self.documents[i]
            out.append(Document(doc.text, doc.source, round(score, 6), doc.id, doc.meta))
        return tuple(out)
