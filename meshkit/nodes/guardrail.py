"""`Guardrail`: redact or block patterns in a stream as it flows, or in a request.

On a stream, text is released as soon as it is known safe: only the tail that could
still become a match (the longest possible partial match, found with ``regex``'s
partial matching) is held back, so a pattern split across chunks is caught and
everything before it flows without delay. The answer's content, its reasoning and each
tool call's arguments are scanned apart, as the client sees them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import attrs
import regex

from ..errors import BadRequest
from ..protocol.streams import aclose, is_stream
from ..protocol.types import ChatRequest, Chunk, ChunkStream, Completion, ToolCallDelta
from .base import Context, MicroService, ServiceType

ACTIONS = ("redact", "block")


class Blocked(BadRequest):
    """A guardrail refused the request's text."""

    code = "content_filter"


class Scanner:
    """Incremental matcher for one channel of a stream: feed text in, get safe text out.

    Only the tail that could still become (or grow) a match is held back, found with
    ``regex``'s partial matching, so text that cannot be part of a match is released
    at once.

    Args:
        pattern: Source of the combined regular expression.
        flags: ``re`` flags (``re.IGNORECASE``).
    """

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._re = regex.compile(pattern, flags)
        self.pending = ""
        self.matches = 0
        self._head = ""

    def _hold_from(self, buf: str) -> int:
        """Index where the text that might still become (or grow) a match starts."""
        for m in self._re.finditer(buf, partial=True):
            if m.partial or m.end() == len(buf):
                return int(m.start())
        return len(buf)

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
        return str(self._re.sub(lambda m: replacement, self._head))


class Guardrail(MicroService):
    """Redacts (``action: redact``) or stops at (``action: block``) forbidden text.

    Takes a chunk stream (from an LLM), a completion, a text, or a chat request
    (checked before it reaches the LLM; a block is a 400 error) and gives the same
    kind. Every text a client sees is scanned: the answer's content, its reasoning and
    each tool call's arguments, each with its own scanner, so a match never spans two
    of them and each releases its safe text at once. A blocked stream ends with
    ``message`` and ``finish_reason="content_filter"``; what was released before the
    match stays released (it was safe). Matches are counted in ``ctx.meta["guardrail"]``.

    Params: ``patterns`` (regular expressions), ``words`` (literal strings),
    ``action``, ``replacement`` (default ``[REDACTED]``), ``message``, ``ignore_case``.
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
                regex.compile(source)
            except regex.error as exc:
                raise ValueError(f"params.patterns: {source!r} is not a regex: {exc}") from exc
        self.pattern = "|".join(f"(?:{x})" for x in patterns)
        self.flags = regex.IGNORECASE if p.get("ignore_case") else 0
        self.action = str(p.get("action", "redact"))
        if self.action not in ACTIONS:
            raise ValueError(f"params.action must be one of {', '.join(ACTIONS)}")
        self.replacement = str(p.get("replacement", "[REDACTED]"))
        self.message = str(p.get("message", "[blocked by guardrail]"))

    def scanner(self) -> Scanner:
        """A fresh scanner for one channel of a stream, or one text."""
        return Scanner(self.pattern, self.flags)

    async def process(self, data: Any, ctx: Context) -> Any:
        """Guard a stream, a completion, a text or a request."""
        if is_stream(data):
            return self.guard(data, ctx)
        if isinstance(data, Completion):
            return self._completion(data, ctx)
        if isinstance(data, str):
            return self._whole(data, ctx)[0]
        if isinstance(data, ChatRequest):
            return self._request(data, ctx)
        raise BadRequest(f"{self.name} guards text, not {type(data).__name__}")

    def _note(self, ctx: Context, scanners: Iterable[Scanner], blocked: bool) -> None:
        matches = sum(s.matches for s in scanners)
        if matches:
            ctx.meta["guardrail"] = {
                "node": self.name,
                "matches": matches,
                "action": "blocked" if blocked else "redacted",
            }

    def _screen(self, scanner: Scanner, text: str, *, final: bool) -> tuple[str, bool]:
        """Feed one channel: the text to release, and whether the channel must block."""
        safe, found = scanner.feed(text, final=final)
        if not found:
            return safe, False
        if self.action == "block":
            return safe, True
        return scanner.redact(self.replacement), False

    def _whole(self, text: str, ctx: Context) -> tuple[str, bool]:
        scanner = self.scanner()
        safe, blocked = self._screen(scanner, text, final=True)
        self._note(ctx, [scanner], blocked)
        return (safe + self.message, True) if blocked else (safe, False)

    def _completion(self, done: Completion, ctx: Context) -> Completion:
        scanners = [self.scanner() for _ in range(2 + len(done.tool_calls))]
        text, blocked = self._screen(scanners[0], done.text, final=True)
        reasoning, stop = self._screen(scanners[1], done.reasoning, final=True)
        blocked = blocked or stop
        calls = []
        for call, scanner in zip(done.tool_calls, scanners[2:], strict=True):
            arguments, stop = self._screen(scanner, call.arguments, final=True)
            blocked = blocked or stop
            calls.append(attrs.evolve(call, arguments=arguments))
        self._note(ctx, scanners, blocked)
        if blocked:
            # What came before the match is safe, but a half tool call is no call.
            return attrs.evolve(
                done,
                text=text + self.message,
                reasoning=reasoning,
                tool_calls=(),
                finish_reason="content_filter",
                logprobs=None,
            )
        # Logprobs spell the text out token by token: none survive a redaction in it.
        logprobs = done.logprobs if scanners[0].matches == 0 else None
        return attrs.evolve(
            done, text=text, reasoning=reasoning, tool_calls=tuple(calls), logprobs=logprobs
        )

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
        channels = _Channels(self)
        try:
            async for chunk in stream:
                out, blocked = channels.step(chunk, final=chunk.finish_reason is not None)
                self._note(ctx, channels.scanners, blocked)
                if out is not None:
                    yield out
                if blocked:
                    return
            # A stream that ended without a finish reason: release what is still held.
            out, blocked = channels.step(Chunk(), final=True)
            self._note(ctx, channels.scanners, blocked)
            if out is not None and (out.has_delta or blocked):
                yield out
        finally:
            await aclose(stream)


class _Channels:
    """The scanners of one stream: content, reasoning, and one per tool-call index.

    Logprobs spell out the content's tokens, so they travel with the content: held
    while their text is held, and dropped when their text had a match (they would show
    what was redacted).
    """

    def __init__(self, guard: Guardrail) -> None:
        self.guard = guard
        self.text = guard.scanner()
        self.reasoning = guard.scanner()
        self.calls: dict[int, Scanner] = {}
        self.fed = 0  # content characters received so far
        self.logprobs: list[tuple[int, Mapping[str, Any]]] = []  # (end of their text, ...)

    @property
    def scanners(self) -> list[Scanner]:
        return [self.text, self.reasoning, *self.calls.values()]

    def step(self, chunk: Chunk, *, final: bool) -> tuple[Chunk | None, bool]:
        """Screen one chunk: what to send on (None: nothing), and whether it blocked.

        A chunk nothing changed is passed on as it came (its raw payload kept).
        """
        guard = self.guard
        blocked = False
        text, reasoning = chunk.text, chunk.reasoning
        self.fed += len(text)
        if chunk.logprobs is not None:
            self.logprobs.append((self.fed, chunk.logprobs))
        matches = self.text.matches
        if text or (final and self.text.pending):
            text, blocked = guard._screen(self.text, text, final=final)
        logprobs = self._logprobs(clean=self.text.matches == matches)
        if reasoning or (final and self.reasoning.pending):
            reasoning, stop = guard._screen(self.reasoning, reasoning, final=final)
            blocked = blocked or stop
        deltas, stop = self._calls(chunk.tool_calls, final=final)
        blocked = blocked or stop
        if blocked:
            blocked_chunk = chunk.replace(
                text=text + guard.message,
                reasoning=reasoning,
                tool_calls=deltas,
                finish_reason="content_filter",
                logprobs=None,
            )
            return blocked_chunk, True
        same = (text, reasoning, deltas) == (chunk.text, chunk.reasoning, chunk.tool_calls)
        if same and logprobs is chunk.logprobs:
            return chunk, False
        out = chunk.replace(text=text, reasoning=reasoning, tool_calls=deltas, logprobs=logprobs)
        keep = out.has_delta or out.finish_reason or out.usage is not None or out.meta
        return (out if keep else None), False

    def _logprobs(self, *, clean: bool) -> Mapping[str, Any] | None:
        """The logprobs whose text has now been released (None if it had a match)."""
        released = self.fed - len(self.text.pending)
        ready = [lp for end, lp in self.logprobs if end <= released]
        if not ready:
            return None
        del self.logprobs[: len(ready)]
        if not clean:
            return None
        if len(ready) == 1:
            return ready[0]
        merged = dict(ready[0])
        merged["content"] = [entry for lp in ready for entry in lp.get("content") or ()]
        return merged

    def _calls(
        self, deltas: tuple[ToolCallDelta, ...], *, final: bool
    ) -> tuple[tuple[ToolCallDelta, ...], bool]:
        """Screen tool-call fragments; a call's held text is released when it ends."""
        out: list[ToolCallDelta] = []
        blocked = False
        for delta in deltas:
            # Calls arrive one after another: a later index means the earlier ones are
            # whole, so what they held back is released now.
            for index in [i for i in self.calls if i < delta.index and self.calls[i].pending]:
                out.extend(self._release(index, "", final=True))
            scanner = self.calls.setdefault(delta.index, self.guard.scanner())
            arguments, stop = self.guard._screen(scanner, delta.arguments, final=final)
            blocked = blocked or stop
            if arguments or delta.id is not None or delta.name is not None:
                out.append(attrs.evolve(delta, arguments=arguments))
        if final:
            for index in [i for i, s in self.calls.items() if s.pending]:
                out.extend(self._release(index, "", final=True))
        return tuple(out), blocked

    def _release(self, index: int, text: str, *, final: bool) -> list[ToolCallDelta]:
        arguments, _ = self.guard._screen(self.calls[index], text, final=final)
        return [ToolCallDelta(index, arguments=arguments)] if arguments else []
