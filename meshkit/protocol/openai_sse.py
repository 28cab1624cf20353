"""OpenAI answers to a client: ``chat.completion`` objects and ``chat.completion.chunk``
server-sent events, and OpenAI's error object.

An OpenAI-compatible upstream's own events are relayed byte for byte when they carry
the id the answer goes out under; every other chunk is rendered here, with reasoning as
``reasoning_content`` and tool calls as ``delta.tool_calls`` fragments.
"""

from __future__ import annotations

import time
from typing import Any

from .. import _json
from ..errors import MeshError
from .openai import render_call, usage_object
from .types import ChatRequest, Chunk, Completion, ToolCallDelta, Usage
from .wire import SSE_DONE, new_id, sse_event


def error_body(err: MeshError) -> dict[str, Any]:
    """OpenAI's error object."""
    return {
        "error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}
    }


#: A text event's bytes after its text (as ``_event`` writes them).
_TEXT_TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'

#: Never an upstream id: the answer's id before a first chunk has been seen.
_UNSET = object()


class ChatEncoder:
    """Encodes one answer as ``chat.completion`` or ``chat.completion.chunk`` events.

    Every event of one answer carries the same id: the upstream's, when its first
    event is relayed as it came, else meshkit's own. An upstream event is relayed byte
    for byte only when it carries that id.
    """

    content_type = "text/event-stream; charset=utf-8"

    def __init__(self, chat: ChatRequest) -> None:
        self._begin(chat.model or "", chat.include_usage)

    @classmethod
    def plain(cls, model: str) -> ChatEncoder:
        """The encoder of a plain streamed chat asking for ``model`` (no stream options:
        what ``ChatEncoder(chat)`` is for it, with no :class:`ChatRequest` made)."""
        encoder = cls.__new__(cls)
        encoder._begin(model, False)
        return encoder

    def _begin(self, model: str, include_usage: bool) -> None:
        # meshkit's own answer id, made when first asked for: an answer relayed under
        # the upstream's id (nearly every OpenAI-compatible stream) never needs one.
        self._id = ""
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._first = True
        self._relay: object = _UNSET  # the upstream id whose events are relayed as they came
        self._usage: Usage | None = None
        self._usage_relayed = False
        self._head = b""  # a text event's bytes up to its JSON text, for these two:
        self._head_id: str | None = None
        self._head_model: str | None = None

    @property
    def id(self) -> str:
        """The id every event of the answer carries (meshkit's own until an upstream
        event relayed as it came gives the upstream's)."""
        return self._id or self._mint()

    @id.setter
    def id(self, value: str) -> None:
        self._id = value

    def _mint(self) -> str:
        self._id = ident = "chatcmpl-" + new_id()[:24]
        return ident

    def _event(self, delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> bytes:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        return sse_event(_json.dumps(obj))

    def _text(self, text: str) -> bytes:
        """``_event({"content": text}, None)``, joined from bytes made once per answer
        rather than from dictionaries per event (nearly every event)."""
        if self._head_model is not self.model or self._head_id is not self._id:
            ident = self.id
            self._head_id, self._head_model = ident, self.model
            self._head = b'{"id":%b,"object":"chat.completion.chunk","created":%b,"model":%b%b' % (
                _json.dumps(ident),
                _json.dumps(self.created),
                _json.dumps(self.model),
                b',"choices":[{"index":0,"delta":{"content":',
            )
        return b"data: " + self._head + _json.dumps(text) + _TEXT_TAIL

    def _bare(self, **fields: Any) -> bytes:
        """A chunk event with no choices, carrying ``fields`` (usage, meshkit)."""
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            **fields,
        }
        return sse_event(_json.dumps(obj))

    def chunk(self, chunk: Chunk) -> bytes | None:
        if not self.model and chunk.model:
            self.model = chunk.model
        if chunk.raw is not None:
            if self._first and chunk.id:
                # The answer goes out under the upstream's id (an upstream that sends
                # none gets every event rebuilt under meshkit's).
                self._id = self._relay = chunk.id
            if chunk.id == self._relay:
                # Relay the upstream's own event; drop the usage-only event unless asked.
                if chunk.usage is not None and not chunk.text and chunk.finish_reason is None:
                    self._usage = chunk.usage
                    if not self.include_usage:
                        return None
                    self._usage_relayed = True
                    return sse_event(chunk.raw)
                self._first = False
                return sse_event(chunk.raw)
        if (
            chunk.text
            and not self._first
            and chunk.finish_reason is None
            and chunk.usage is None
            and chunk.logprobs is None
            and not (chunk.meta or chunk.reasoning or chunk.tool_calls)
        ):
            return self._text(chunk.text)
        if chunk.usage is not None:
            self._usage = chunk.usage
        out = b""
        if chunk.meta:
            out += self._bare(meshkit=dict(chunk.meta))
        if chunk.text or chunk.finish_reason or self._first or chunk.has_delta:
            delta: dict[str, Any] = {}
            if self._first:
                delta["role"] = "assistant"
            if chunk.text or self._first:
                delta["content"] = chunk.text
            if chunk.reasoning:
                delta["reasoning_content"] = chunk.reasoning
            if chunk.tool_calls:
                delta["tool_calls"] = [_render_delta(d) for d in chunk.tool_calls]
            self._first = False
            out += self._event(delta, chunk.finish_reason, chunk.logprobs)
        return out or None

    def verbatim(self) -> str | None:
        """The upstream id whose plain text delta events this answer now sends exactly
        as they came (``data: <payload>`` and a blank line, as :meth:`chunk` relays
        them), so a sink may write such an event without its chunk; None until that is
        settled (the first event relayed, the answer's model known) or when the
        answer's events are meshkit's own."""
        relay = self._relay
        if self._first or not self.model or not isinstance(relay, str):
            return None
        return relay

    def end(self) -> bytes:
        tail = b""
        if self.include_usage and self._usage is not None and not self._usage_relayed:
            tail = self._bare(usage=usage_object(self._usage))
        return tail + sse_event(SSE_DONE)

    def error(self, err: MeshError) -> bytes:
        return sse_event(_json.dumps(error_body(err)))

    def completion(self, completion: Completion) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": completion.text or (None if completion.tool_calls else ""),
        }
        if completion.reasoning:
            message["reasoning_content"] = completion.reasoning
        if completion.tool_calls:
            message["tool_calls"] = [render_call(c) for c in completion.tool_calls]
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model or completion.model or "",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": completion.logprobs,
                    "finish_reason": completion.finish_reason or "stop",
                }
            ],
        }
        if completion.usage is not None:
            obj["usage"] = usage_object(completion.usage)
        if completion.meta:
            obj["meshkit"] = dict(completion.meta)
        return obj


def _render_delta(d: ToolCallDelta) -> dict[str, Any]:
    if d.id is None and d.name is None:
        return {"index": d.index, "function": {"arguments": d.arguments}}
    out: dict[str, Any] = {"index": d.index, "type": "function"}
    if d.id is not None:
        out["id"] = d.id
    out["function"] = {"name": d.name or "", "arguments": d.arguments}
    return out
