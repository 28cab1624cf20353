"""Canonical types that cross every layer: requests, messages, chunks, completions.

The model is lossless for both dialects: a message carries content parts (text, images,
audio, files), tool calls and tool results; a chunk carries text, reasoning, tool-call
fragments and logprobs besides its finish reason and usage. Everything a dialect can say
is either one of these fields or kept in an ``extra`` mapping and passed on untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeAlias

import attrs

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@attrs.frozen
class Part:
    """One piece of a message's content.

    ``type`` is the OpenAI part type (``text``, ``image_url``, ``input_audio``, ``file``
    or anything newer); ``text`` holds a text part's text, and ``data`` every other
    field of the part as it was received (``{"image_url": {"url": "data:..."}}``), so a
    part meshkit does not understand still reaches an OpenAI-compatible upstream whole.
    """

    type: str
    text: str = ""
    data: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def image(cls, url: str) -> Part:
        """An ``image_url`` part (``http(s)://`` or ``data:`` URL)."""
        return cls("image_url", data={"image_url": {"url": url}})

    @property
    def image_url(self) -> str | None:
        """The URL of an ``image_url`` part, else None."""
        if self.type != "image_url":
            return None
        ref = self.data.get("image_url")
        url = ref.get("url") if isinstance(ref, Mapping) else ref
        return url if isinstance(url, str) else None


@attrs.frozen
class ToolCall:
    """A whole tool call: which function, with which arguments (JSON text as the model
    wrote it, so a client gets the upstream's exact arguments back)."""

    id: str
    name: str
    arguments: str = "{}"
    type: str = "function"


@attrs.frozen
class ToolCallDelta:
    """A fragment of a streamed tool call; fragments with the same ``index`` belong to
    one call (the first usually carries ``id`` and ``name``, the rest argument text)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@attrs.frozen
class Message:
    """One chat message.

    Attributes:
        role: ``system``, ``developer``, ``user``, ``assistant`` or ``tool``.
        content: Plain text, content parts, or None.
        tool_calls: The calls an assistant turn made.
        tool_call_id: Which call a ``tool`` message answers.
        name: A participant name, or (Ollama ``tool_name``) the tool that answered.
        reasoning: An assistant turn's reasoning text (Ollama ``thinking``).
        extra: Other fields of the message as received, passed on untouched.
    """

    role: str
    content: str | tuple[Part, ...] | None = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def text(self) -> str:
        """The message's text (text parts joined; other parts ignored)."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(p.text for p in content if p.type == "text")

    @property
    def parts(self) -> tuple[Part, ...]:
        """The content as parts (plain text is one text part)."""
        content = self.content
        if not content:
            return ()
        if isinstance(content, str):
            return (Part("text", content),)
        return content

    @property
    def images(self) -> tuple[str, ...]:
        """URLs of the message's image parts."""
        return tuple(url for p in self.parts if (url := p.image_url) is not None)

    def with_text(self, text: str) -> Message:
        """A copy whose text is ``text``; non-text parts are kept, after it."""
        content = self.content
        if content is None or isinstance(content, str):
            return attrs.evolve(self, content=text)
        others = tuple(p for p in content if p.type != "text")
        return attrs.evolve(self, content=(Part("text", text), *others))


@attrs.frozen
class ChatRequest:
    """A chat request in meshkit's own shape, whichever dialect it arrived in.

    ``tools``, ``tool_choice`` and ``response_format`` are kept in OpenAI's shape (the
    Ollama dialect maps onto it). ``think`` is a reasoning switch: True/False, or an
    effort level (``"low"``, ``"medium"``, ``"high"``). ``max_tokens_field`` remembers
    which OpenAI name the caller used for ``max_tokens``, so an OpenAI upstream gets it
    back under that name. ``extra`` keeps request fields meshkit does not model; they
    are passed on to an upstream of the same dialect untouched.
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
    tools: tuple[Mapping[str, Any], ...] = attrs.field(default=(), kw_only=True)
    tool_choice: str | Mapping[str, Any] | None = attrs.field(default=None, kw_only=True)
    response_format: Mapping[str, Any] | None = attrs.field(default=None, kw_only=True)
    think: bool | str | None = attrs.field(default=None, kw_only=True)
    logprobs: bool | None = attrs.field(default=None, kw_only=True)
    top_logprobs: int | None = attrs.field(default=None, kw_only=True)
    max_tokens_field: str = attrs.field(default="max_tokens", kw_only=True)

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
                return message.text
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

    Besides ``text`` a chunk may carry ``reasoning`` text, ``tool_calls`` fragments and
    ``logprobs`` (OpenAI's ``choice.logprobs`` object, as the upstream sent it). Any of
    them is the answer's first byte, for timeouts and time to first token.

    ``raw`` is the upstream's own OpenAI ``data:`` payload when the chunk is that
    payload's parse, unchanged; the OpenAI dialect may relay it byte for byte when its
    ``id`` is the id the answer goes out under. Only :meth:`relaying` sets it, on a
    chunk just built: it is no ``__init__`` argument, so every copy (:meth:`replace`,
    ``attrs.evolve``) is without it, and a node that changes a chunk cannot relay
    stale bytes.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    meta: Mapping[str, Any] | None = None
    raw: bytes | None = attrs.field(default=None, init=False, eq=False, repr=False)
    reasoning: str = attrs.field(default="", kw_only=True)
    tool_calls: tuple[ToolCallDelta, ...] = attrs.field(default=(), kw_only=True)
    logprobs: Mapping[str, Any] | None = attrs.field(default=None, kw_only=True)
    #: The upstream's completion id (OpenAI ``id``), when it sent one.
    id: str | None = attrs.field(default=None, kw_only=True)

    @property
    def has_delta(self) -> bool:
        """Whether the chunk carries any part of the answer itself."""
        return bool(self.text or self.reasoning or self.tool_calls or self.logprobs)

    def replace_text(self, text: str) -> Chunk:
        """A copy with other text and no raw payload."""
        return self.replace(text=text)

    def replace(self, **changes: Any) -> Chunk:
        """A copy with ``changes`` applied (and, as every copy, no raw payload)."""
        return attrs.evolve(self, **changes)

    def relaying(self, payload: bytes) -> Chunk:
        """This chunk, just built as the parse of ``payload``, carrying it as ``raw``."""
        _set(self, "raw", payload)
        return self


#: How :meth:`Chunk.relaying` sets the one field that is not an ``__init__`` argument.
_set = object.__setattr__

# Each field's slot, set directly by :func:`relayed_chunk` (attrs' ``__init__`` sets
# every slot through ``object.__setattr__``, by name, at twice the cost).
_new = object.__new__
_slot = vars(Chunk)
_text = _slot["text"].__set__
_finish_reason = _slot["finish_reason"].__set__
_usage = _slot["usage"].__set__
_model = _slot["model"].__set__
_meta = _slot["meta"].__set__
_raw = _slot["raw"].__set__
_reasoning = _slot["reasoning"].__set__
_tool_calls = _slot["tool_calls"].__set__
_logprobs = _slot["logprobs"].__set__
_id = _slot["id"].__set__


def relayed_chunk(
    text: str,
    model: str | None,
    id: str | None,
    raw: bytes,
    finish_reason: str | None = None,
    usage: Usage | None = None,
) -> Chunk:
    """``Chunk(text, finish_reason, usage, model, id=id).relaying(raw)``, built at half
    the cost: an upstream event with no reasoning, tool call or logprobs (a plain text
    delta, once per chunk of a stream; a stream's first text with its role, its finish,
    its usage). It sets every field: one added to :class:`Chunk` must be added here too
    (its tests compare the two)."""
    chunk: Chunk = _new(Chunk)
    _text(chunk, text)
    _finish_reason(chunk, finish_reason)
    _usage(chunk, usage)
    _model(chunk, model)
    _meta(chunk, None)
    _raw(chunk, raw)
    _reasoning(chunk, "")
    _tool_calls(chunk, ())
    _logprobs(chunk, None)
    _id(chunk, id)
    return chunk


ChunkStream: TypeAlias = AsyncIterator[Chunk]


@attrs.frozen
class Completion:
    """A whole answer, for callers that did not ask to stream."""

    text: str
    finish_reason: str | None = "stop"
    usage: Usage | None = None
    model: str | None = None
    meta: Mapping[str, Any] | None = None
    reasoning: str = attrs.field(default="", kw_only=True)
    tool_calls: tuple[ToolCall, ...] = attrs.field(default=(), kw_only=True)
    logprobs: Mapping[str, Any] | None = attrs.field(default=None, kw_only=True)


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
