"""Canonical request/response types, and the dialects' wire mapping (no I/O).

:mod:`.openai` and :mod:`.ollama` parse and render requests, chunks and whole answers
for clients and upstreams alike (:mod:`.openai_sse` and :mod:`.ollama_ndjson` render
answers to clients); :mod:`.content` holds what both share (images, tool-call and
logprobs merging), :mod:`.fields` the typed readers, :mod:`.wire` the framing.
"""

from __future__ import annotations

from .types import (
    ChatRequest,
    Chunk,
    ChunkStream,
    Completion,
    EmbeddingRequest,
    Embeddings,
    Message,
    Part,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "ChatRequest",
    "Chunk",
    "ChunkStream",
    "Completion",
    "EmbeddingRequest",
    "Embeddings",
    "Message",
    "Part",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]
