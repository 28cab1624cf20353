"""Canonical types that cross every layer: requests, chunks, completions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeAlias

import attrs

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@attrs.frozen
class Message:
    """One chat message; content is plain text."""

    role: str
    content: str


@attrs.frozen
class ChatRequest:
    """A chat request in meshkit's own shape, whichever dialect it arrived in.

    ``extra`` keeps sampling options meshkit does not model itself; they are passed on
    to the LLM untouched.
    """

    messages: tuple[Message, ...]
    model: str | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    include_usage: bool = False
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    def with_model(self, model: str | None) -> ChatRequest:
        """Return a copy that names ``model`` (the request's own model wins)."""
        if self.model or not model:
            return self
        return attrs.evolve(self, model=model)

    @property
    def prompt(self) -> str:
        """Text of the last user message (what a retriever or guardrail looks at)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""


@attrs.frozen
class Usage:
    """Token counts, as the upstream reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@attrs.frozen
class Chunk:
    """One piece of a streamed answer.

    ``raw`` is the upstream's own OpenAI ``data:`` payload when the chunk came from an
    OpenAI-compatible server unchanged; the OpenAI dialect may relay it byte for byte.
    Any node that changes ``text`` must drop ``raw`` (``attrs.evolve`` keeps it, so use
    :meth:`replace_text`).
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    meta: Mapping[str, Any] | None = None
    raw: bytes | None = attrs.field(default=None, eq=False, repr=False)

    def replace_text(self, text: str) -> Chunk:
        """A copy with other text and no raw payload."""
        return Chunk(text, self.finish_reason, self.usage, self.model, self.meta)


ChunkStream: TypeAlias = AsyncIterator[Chunk]


@attrs.frozen
class Completion:
    """A whole answer, for callers that did not ask to stream."""

    text: str
    finish_reason: str | None = "stop"
    usage: Usage | None = None
    model: str | None = None
    meta: Mapping[str, Any] | None = None


@attrs.frozen
class EmbeddingRequest:
    """Texts to embed."""

    input: tuple[str, ...]
    model: str | None = None


@attrs.frozen
class Embeddings:
    """One vector per input text, in order."""

    vectors: tuple[tuple[float, ...], ...]
    model: str | None = None
    usage: Usage | None = None
