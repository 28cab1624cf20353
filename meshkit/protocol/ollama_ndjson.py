"""Ollama answers to a client: NDJSON records for ``/api/chat`` and ``/api/generate``.

One record per piece of text or reasoning, each tool call whole (Ollama clients read
``arguments`` as an object) once its fragments are complete, then a ``done`` record
with the counts and durations Ollama clients show.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .. import _json
from ..errors import MeshError
from .content import ToolCallMerger
from .types import ChatRequest, Chunk, Completion, ToolCall, Usage
from .wire import ndjson_line


def error_body(err: MeshError) -> dict[str, Any]:
    """Ollama's error object."""
    return {"error": err.message}


def _arguments(text: str) -> Any:
    """Tool-call arguments as the object Ollama clients expect (the text if not JSON)."""
    try:
        return _json.loads(text or "{}")
    except ValueError:
        return text


def render_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Whole tool calls in Ollama's shape (arguments as an object)."""
    return [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": _arguments(c.arguments)}}
        for i, c in enumerate(calls)
    ]


def done_reason(finish: str | None) -> str:
    """Ollama's ``done_reason`` (it says ``stop`` after tool calls too)."""
    return "length" if finish == "length" else "stop"


def now_ns() -> int:
    """Monotonic nanoseconds, for the duration fields Ollama clients read."""
    return time.perf_counter_ns()


class Clock:
    """``created_at`` stamps, with the date and time of day formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self, ns: int | None = None) -> str:
        """Now (or ``ns`` since the epoch), as Ollama writes ``created_at``:
        ``datetime.isoformat`` in UTC (microseconds only when not zero), ``Z`` for the
        zone."""
        second, micro = divmod((time.time_ns() if ns is None else ns) // 1000, 1_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{micro:06d}Z" if micro else self._prefix + "Z"


#: Now, as Ollama writes ``created_at`` (one clock per process).
timestamp = Clock().stamp


class _Encoder:
    """NDJSON answer: one object per delta, then a ``done`` object with counts."""

    content_type = "application/x-ndjson"
    #: A text record's bytes before and after its JSON text (see :meth:`_text`).
    _open = b""
    _close = b""

    def __init__(self, chat: ChatRequest) -> None:
        self.model = chat.model or ""
        self._head = b""  # a record's bytes up to its time stamp, for ``_head_model``
        self._head_model: str | None = None
        self.started = now_ns()
        self.first_token: int | None = None
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.pieces = 0
        self.meta: dict[str, Any] = {}  # from meta chunks; sent on the final object
        self._calls = ToolCallMerger()

    def _delta(self, text: str, reasoning: str = "") -> dict[str, Any]:
        raise NotImplementedError

    def _record(self, fields: dict[str, Any]) -> bytes:
        if self.first_token is None:
            self.first_token = now_ns()
        self.pieces += 1
        obj = {"model": self.model, "created_at": timestamp(), **fields, "done": False}
        return ndjson_line(_json.dumps(obj))

    def _text(self, text: str) -> bytes:
        """``_record(_delta(text))`` joined from bytes made once per answer rather than
        from a dictionary per record (a plain text piece: nearly every record)."""
        if self.first_token is None:
            self.first_token = now_ns()
        self.pieces += 1
        if self._head_model is not self.model:
            self._head_model = self.model
            self._head = b'{"model":' + _json.dumps(self.model) + b',"created_at":"'
        # (a time stamp is plain ASCII: quoted, it is its own JSON)
        stamp = timestamp().encode()
        return self._head + stamp + self._open + _json.dumps(text) + self._close

    def chunk(self, chunk: Chunk) -> bytes | None:
        if chunk.finish_reason:
            self.finish = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.meta:
            self.meta.update(chunk.meta)
        if chunk.tool_calls or chunk.reasoning or chunk.logprobs:
            return self._rich(chunk)
        if chunk.finish_reason and self._calls:
            return self._flush() + (self._text(chunk.text) if chunk.text else b"")
        if not chunk.text:
            return None
        return self._text(chunk.text)

    def _rich(self, chunk: Chunk) -> bytes | None:
        out = b""
        if chunk.text or chunk.reasoning or chunk.logprobs:
            fields = self._delta(chunk.text, chunk.reasoning)
            if chunk.logprobs:
                fields["logprobs"] = chunk.logprobs.get("content") or []
            out += self._record(fields)
        if chunk.tool_calls:
            if self._calls and self._calls.starts_new(chunk.tool_calls):
                out += self._flush()  # the calls before a new one are complete
            self._calls.add(chunk.tool_calls)
        if chunk.finish_reason and self._calls:
            out += self._flush()
        return out or None

    def _flush(self) -> bytes:
        """The tool calls gathered so far, whole, in one record."""
        calls = self._calls.take()
        return self._record(self._tools(render_calls(calls))) if calls else b""

    def _tools(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": "", "tool_calls": calls}}

    def _final(self, text: str, reasoning: str = "") -> dict[str, Any]:
        end = now_ns()
        first = self.first_token or end
        usage = self.usage or Usage(0, self.pieces)
        return {
            "model": self.model,
            "created_at": timestamp(),
            **self._delta(text, reasoning),
            "done": True,
            "done_reason": done_reason(self.finish),
            "total_duration": end - self.started,
            "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": first - self.started,
            "eval_count": usage.completion_tokens or self.pieces,
            "eval_duration": end - first,
        }

    def verbatim(self) -> str | None:
        """None: an Ollama caller's records are meshkit's own, never an upstream's."""
        return None

    def end(self) -> bytes:
        head = self._flush() if self._calls else b""
        final = self._final("")
        if self.meta:
            final["meshkit"] = self.meta
        return head + ndjson_line(_json.dumps(final))

    def error(self, err: MeshError) -> bytes:
        return ndjson_line(_json.dumps(error_body(err)))

    def completion(self, completion: Completion) -> dict[str, Any]:
        self.finish = completion.finish_reason
        self.usage = completion.usage
        self.first_token = self.started
        obj = self._final(completion.text, completion.reasoning)
        if completion.tool_calls:
            target = obj["message"] if "message" in obj else obj
            target["tool_calls"] = render_calls(completion.tool_calls)
        if completion.logprobs:
            obj["logprobs"] = completion.logprobs.get("content") or []
        if completion.meta:
            obj["meshkit"] = dict(completion.meta)
        return obj


class GenerateEncoder(_Encoder):
    """``/api/generate`` records (``response``, ``thinking``)."""

    _open = b'","response":'
    _close = b',"done":false}\n'

    def _delta(self, text: str, reasoning: str = "") -> dict[str, Any]:
        if reasoning:
            return {"response": text, "thinking": reasoning}
        return {"response": text}

    def _tools(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        return {"response": "", "tool_calls": calls}


class ChatEncoder(_Encoder):
    """``/api/chat`` records (``message`` with ``content``, ``thinking``, ``tool_calls``)."""

    _open = b'","message":{"role":"assistant","content":'
    _close = b'},"done":false}\n'

    def _delta(self, text: str, reasoning: str = "") -> dict[str, Any]:
        if reasoning:
            return {"message": {"role": "assistant", "content": text, "thinking": reasoning}}
        return {"message": {"role": "assistant", "content": text}}
