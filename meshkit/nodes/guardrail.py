"""`Guardrail`: redact or block patterns in a stream as it flows, or in a request.

On a stream, text is released as soon as it is known safe: only the tail that could
still become a match (the longest possible partial match) is held back, so a pattern
split across chunks is caught and everything before it flows without delay. Exact
partial matching uses the ``regex`` package when installed; without it the guardrail
holds back at most ``max_match - 1`` characters (a bound on a match's length).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs

from ..errors import BadRequest
from ..protocol.types import ChatRequest, Chunk, ChunkStream, Completion
from ..streams import aclose, is_stream
from .base import Context, MicroService, ServiceType

try:
    _regex: Any = importlib.import_module("regex")
except ImportError:  # pragma: no cover - exercised where regex is absent
    _regex = None

ACTIONS = ("redact", "block")


class Blocked(BadRequest):
    """A guardrail refused the request's text."""

    code = "content_filter"


class Scanner:
    """Incremental matcher for one stream: feed text in, get safe text out.

    Args:
        pattern: Source of the combined regular expression.
        flags: ``re`` flags (``re.IGNORECASE``).
        max_match: Longest match length, used when ``regex`` is not installed.
        exact: Use ``regex`` partial matching (default: when installed).
    """

    def __init__(
        self, pattern: str, flags: int = 0, *, max_match: int = 64, exact: bool | None = None
    ) -> None:
        self.exact = (_regex is not None) if exact is None else exact
        self._re: Any = (_regex if self.exact else re).compile(pattern, flags)
        self.max_match = max_match
        self.pending = ""
        self.matches = 0
        self._head = ""

    def _hold_from(self, buf: str) -> int:
        """Index where the text that might still become (or grow) a match starts."""
        if self.exact:
            for m in self._re.finditer(buf, partial=True):
                if m.partial or m.end() == len(buf):
                    return int(m.start())
            return len(buf)
        cut = max(0, len(buf) - (self.max_match - 1))
        for m in self._re.finditer(buf):
            if m.end() > cut or m.end() == len(buf):
                return min(cut, int(m.start()))
        return cut

    def feed(self, text: str, *, final: bool = False) -> tuple[str, bool]:
        """Add ``text``; return what is safe to release and whether a match was found.

        When a match is found the returned text is everything before the first match
        (for blocking) and :meth:`redact` is what a redacting caller releases.
        """
        buf = self.pending + text
        cut = len(buf) if final else self._hold_from(buf)
        head = buf[:cut]
        self.pending = buf[cut:]
        first = self._re.search(head)
        if first is None:
            return head, False
        self.matches += len(self._re.findall(head))
        self._head = head
        return head[: first.start()], True

    def redact(self, replacement: str) -> str:
        """The last fed safe text with every match replaced."""
        return str(self._re.sub(replacement, self._head))


class Guardrail(MicroService):
    """Redacts (``action: redact``) or stops at (``action: block``) forbidden text.

    Takes a chunk stream (from an LLM), a text, or a chat request (checked before it
    reaches the LLM; a block is a 400 error) and gives the same kind. A blocked stream
    ends with ``message`` and ``finish_reason="content_filter"``; what was released
    before the match stays released (it was safe). Matches are counted in
    ``ctx.meta["guardrail"]``.

    Params: ``patterns`` (regular expressions), ``words`` (literal strings),
    ``action``, ``replacement`` (default ``[REDACTED]``), ``message``, ``ignore_case``,
    ``max_match`` (default 64).
    """

    service_type = ServiceType.GUARDRAIL

    def __init__(
        self, name: str, *, params: Mapping[str, Any] | None = None, timeout: float = 60.0
    ) -> None:
        super().__init__(name, params=params, timeout=timeout)
        p = self.params
        patterns = [str(x) for x in p.get("patterns", ())]
        patterns += [re.escape(str(w)) for w in p.get("words", ())]
        if not patterns:
            raise ValueError("a guardrail needs params.patterns or params.words")
        for source in patterns:
            try:
                re.compile(source)
            except re.error as exc:
                raise ValueError(f"params.patterns: {source!r} is not a regex: {exc}") from exc
        self.pattern = "|".join(f"(?:{x})" for x in patterns)
        self.flags = re.IGNORECASE if p.get("ignore_case") else 0
        self.action = str(p.get("action", "redact"))
        if self.action not in ACTIONS:
            raise ValueError(f"params.action must be one of {', '.join(ACTIONS)}")
        self.replacement = str(p.get("replacement", "[REDACTED]"))
        self.message = str(p.get("message", "[blocked by guardrail]"))
        self.max_match = int(p.get("max_match", 64))

    def scanner(self) -> Scanner:
        """A fresh scanner for one stream or text."""
        return Scanner(self.pattern, self.flags, max_match=self.max_match)

    async def process(self, data: Any, ctx: Context) -> Any:
        """Guard a stream, a completion, a text or a request."""
        if is_stream(data):
            return self.guard(data, ctx)
        if isinstance(data, Completion):
            text, blocked = self._whole(data.text, ctx)
            if blocked:
                return attrs.evolve(data, text=text, finish_reason="content_filter")
            return attrs.evolve(data, text=text)
        if isinstance(data, str):
            return self._whole(data, ctx)[0]
        if isinstance(data, ChatRequest):
            return self._request(data, ctx)
        raise BadRequest(f"{self.name} guards text, not {type(data).__name__}")

    def _note(self, ctx: Context, scanner: Scanner, blocked: bool) -> None:
        if scanner.matches:
            ctx.meta["guardrail"] = {
                "node": self.name,
                "matches": scanner.matches,
                "action": "blocked" if blocked else "redacted",
            }

    def _whole(self, text: str, ctx: Context) -> tuple[str, bool]:
        scanner = self.scanner()
        safe, found = scanner.feed(text, final=True)
        blocked = found and self.action == "block"
        self._note(ctx, scanner, blocked)
        if not found:
            return safe, False
        return (safe + self.message, True) if blocked else (scanner.redact(self.replacement), False)

    def _request(self, request: ChatRequest, ctx: Context) -> ChatRequest:
        messages = []
        for m in request.messages:
            if m.role != "user":
                messages.append(m)
                continue
            text, blocked = self._whole(m.text, ctx)
            if blocked:
                raise Blocked(f"{self.name}: the request contains blocked content")
            messages.append(m.with_text(text))
        return attrs.evolve(request, messages=tuple(messages))

    async def guard(self, stream: AsyncIterator[Chunk], ctx: Context) -> ChunkStream:
        """Relay ``stream``, redacting or stopping at matches, chunk by chunk."""
        scanner = self.scanner()
        try:
            async for chunk in stream:
                final = chunk.finish_reason is not None
                if not chunk.text and not (final and scanner.pending):
                    yield chunk
                    continue
                safe, found = scanner.feed(chunk.text, final=final)
                if found and self.action == "block":
                    self._note(ctx, scanner, True)
                    yield Chunk(safe + self.message, "content_filter", chunk.usage, chunk.model)
                    return
                if found:
                    safe = scanner.redact(self.replacement)
                    self._note(ctx, scanner, False)
                if safe == chunk.text and not found:
                    yield chunk
                elif safe or final or chunk.usage is not None:
                    yield chunk.replace_text(safe)
            tail, found = scanner.feed("", final=True)
            if found and self.action == "block":
                self._note(ctx, scanner, True)
                yield Chunk(tail + self.message, "content_filter")
            elif tail:
                if found:
                    tail = scanner.redact(self.replacement)
                    self._note(ctx, scanner, False)
                yield Chunk(tail)
        finally:
            await aclose(stream)
