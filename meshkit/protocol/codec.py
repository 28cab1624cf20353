"""`UpstreamCodec`: what the LLM node needs from a dialect to talk to an upstream.

``protocol.openai.Upstream`` and ``protocol.ollama.Upstream`` implement it; the node
holds one and never looks at the dialect again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .types import ChatRequest, Chunk, Completion


class LineParse(Protocol):
    """One stream's parser: a whole line of the streamed body in, its chunks out."""

    def __call__(self, line: bytes) -> Sequence[Chunk]:
        """The chunks ``line`` completes (``END`` marks the end of the stream)."""
        ...

    def whole(self, data: bytes) -> Chunk | None:
        """The chunk of ``data`` when it is exactly one whole event of a shape the
        parser recognises without parsing (the usual read of a stream), else None:
        ``data`` is then cut into lines and each parsed."""
        ...

    def verbatim(self, data: bytes) -> str | None:
        """The upstream's answer id when ``data`` is exactly one whole event that
        :meth:`whole` recognises and that is written as a caller of the same dialect
        is sent such an event (``data: <payload>`` and a blank line), else None."""
        ...


class UpstreamCodec(Protocol):
    """Renders requests for one upstream API and reads its answers back."""

    name: str
    chat_path: str
    models_path: str

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The JSON body of ``request`` for the upstream's chat endpoint."""
        ...

    def line_parser(self) -> LineParse:
        """A parser for one stream's lines (fresh per stream: it may keep state)."""
        ...

    def completion(self, raw: bytes, request: ChatRequest) -> Completion:
        """A whole (non-streamed) answer."""
        ...

    def models(self, raw: bytes) -> list[str]:
        """Model names from the upstream's model list."""
        ...
