"""Canonical request/response types and pure wire encoders (no I/O)."""

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
