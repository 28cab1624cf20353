"""The RAG pipeline of ``services.yaml``, built in Python and served on both dialects.

    embed -> retrieve -(found documents)-> rerank -> prompt -> llm -> guard
                      \\-(found nothing)-----------/

Run the local model, then this file::

    python -m meshkit.local --port 8009 &
    EMBED_ENDPOINT=http://localhost:8009 LLM_ENDPOINT=http://localhost:8009 \\
        python examples/rag/rag.py
    curl -N localhost:8008/v1/chat/completions \\
        -d '{"messages": [{"role": "user", "content": "Why is the sky blue?"}], "stream": true}'

The last event before ``[DONE]`` carries ``"meshkit": {"sources": [...], "path": [...]}``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from meshkit import HttpClient, RemoteLLM, ServiceOrchestrator, pipeline_handler
from meshkit.nodes.embedding import RemoteEmbedding
from meshkit.nodes.guardrail import Guardrail
from meshkit.nodes.prompt import PromptBuilder
from meshkit.nodes.reranker import Reranker
from meshkit.nodes.retriever import VectorRetriever

DOCS = Path(__file__).parent / "docs"


def build(
    embed_url: str, llm_url: str, *, docs: Path = DOCS, model: str | None = None
) -> ServiceOrchestrator:
    """The pipeline over ``docs``, embedding at ``embed_url`` and answering at ``llm_url``."""
    embed = RemoteEmbedding("embed", endpoint=embed_url)
    retrieve = VectorRetriever(
        "retrieve",
        embedding=embed,
        path=docs,
        params={"top_k": 4, "chunk_size": 600, "min_score": 0.05},
    )
    rerank = Reranker("rerank", params={"top_n": 2})
    prompt = PromptBuilder(
        "prompt",
        params={
            "system": "Answer the question in two sentences using only the numbered context "
            "passages.",
            "empty": "{question}",
        },
    )
    llm = RemoteLLM("llm", endpoint=llm_url, model=model)
    guard = Guardrail(
        "guard",
        params={
            "patterns": [r"\b\d{3}-\d{2}-\d{4}\b"],
            "words": ["password123"],
            "ignore_case": True,
        },
    )
    rag = ServiceOrchestrator("rag")
    for node in (embed, retrieve, rerank, prompt, llm, guard):
        rag.add(node)
    rag.flow_to(embed, retrieve)
    rag.flow_to(retrieve, rerank, when="len(output) > 0")
    rag.flow_to(retrieve, prompt, when="len(output) == 0")
    rag.flow_to(rerank, prompt).flow_to(prompt, llm).flow_to(llm, guard)
    return rag


def app(rag: ServiceOrchestrator) -> web.Application:
    """A gateway for ``rag``: OpenAI chat and Ollama chat/generate."""
    application = web.Application()
    application.router.add_post("/v1/chat/completions", pipeline_handler(rag))
    application.router.add_post("/api/chat", pipeline_handler(rag, dialect="ollama"))
    application.router.add_post(
        "/api/generate", pipeline_handler(rag, dialect="ollama", endpoint="generate")
    )

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        async with HttpClient() as client:
            await rag.open(client)
            try:
                yield
            finally:
                await rag.close()

    application.cleanup_ctx.append(lifecycle)
    return application


if __name__ == "__main__":  # pragma: no cover
    pipeline = build(
        os.environ.get("EMBED_ENDPOINT", "http://localhost:8009"),
        os.environ.get("LLM_ENDPOINT", "http://localhost:8009"),
        model=os.environ.get("LLM_MODEL") or None,
    )
    web.run_app(app(pipeline), port=int(os.environ.get("MESHKIT_PORT", "8008")))
