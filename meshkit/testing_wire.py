"""What :class:`~meshkit.testing.FakeLLM` writes: one scripted answer in the OpenAI and
Ollama APIs, streamed piece by piece or whole.

The pieces come in a model's order: reasoning, text (with made-up logprobs when the
request asks for them), then tool calls — OpenAI fragments (a head with the id and name,
then argument pieces), Ollama one record with every call whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@attrs.frozen
class Script:
    """One answer to one request (``body``), as :class:`FakeLLM` scripts it."""

    body: Mapping[str, Any]
    model: str
    tokens: Sequence[str]
    reasoning: Sequence[str] = ()
    reasoning_field: str = "reasoning_content"
    tool_calls: Sequence[Mapping[str, str]] = ()
    tool_pieces: int = 3

    @property
    def usage(self) -> dict[str, int]:
        n = len(self.tokens)
        return {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}

    def logprobs(self, i: int, text: str) -> list[dict[str, Any]]:
        """Made-up logprobs for the ``i``-th text piece, when the request asked for them."""
        if not self.body.get("logprobs"):
            return []
        top = int(self.body.get("top_logprobs") or 0)
        entry = {"token": text, "logprob": -0.125 * (i + 1), "bytes": list(text.encode())}
        alts = [{**entry, "token": f"alt{k}", "bytes": [97]} for k in range(top)]
        return [{**entry, "top_logprobs": alts}]

    def all_logprobs(self) -> list[dict[str, Any]]:
        return [e for i, t in enumerate(self.tokens) for e in self.logprobs(i, t)]

    def pieces(self, arguments: str) -> list[str]:
        """``arguments`` cut into ``tool_pieces`` fragments."""
        size = -(-len(arguments) // max(1, self.tool_pieces)) or 1
        return [arguments[k : k + size] for k in range(0, len(arguments), size)] or [""]

    # -- OpenAI ------------------------------------------------------------------------

    def event(
        self, rid: str, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> bytes:
        """One ``chat.completion.chunk`` event."""
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": logprobs, "refusal": None}
        return _sse(
            {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "choices": [choice],
            }
        )

    def openai_steps(self, rid: str) -> list[bytes]:
        """The streamed pieces, the role-only opening event sent with the first."""
        steps = [self.event(rid, {self.reasoning_field: r}) for r in self.reasoning]
        steps += [
            self.event(rid, {"content": t}, None, self.logprobs(i, t))
            for i, t in enumerate(self.tokens)
        ]
        for k, call in enumerate(self.tool_calls):
            head = {"index": k, "id": call["id"], "type": "function"}
            head["function"] = {"name": call["name"], "arguments": ""}
            steps.append(self.event(rid, {"tool_calls": [head]}))
            for piece in self.pieces(call["arguments"]):
                frag = {"index": k, "function": {"arguments": piece}}
                steps.append(self.event(rid, {"tool_calls": [frag]}))
        opening = self.event(rid, {"role": "assistant", "content": ""})
        if not steps:
            return [opening]
        steps[0] = opening + steps[0]
        return steps

    @property
    def finish(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"

    def openai_end(self, rid: str) -> bytes:
        """The finish event, the usage event when asked for, and ``[DONE]``."""
        out = self.event(rid, {}, self.finish)
        if (self.body.get("stream_options") or {}).get("include_usage"):
            out += _sse(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage,
                }
            )
        return out + b"data: [DONE]\n\n"

    def openai_whole(self, rid: str, created: int) -> dict[str, Any]:
        """The ``chat.completion`` object."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.tokens)}
        if self.reasoning:
            message[self.reasoning_field] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in self.tool_calls
            ]
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish, "message": message}
        if logprobs := self.all_logprobs():
            choice["logprobs"] = {"content": logprobs, "refusal": None}
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage,
        }

    # -- Ollama ------------------------------------------------------------------------

    def record(self, content: str, done: bool, **message: Any) -> dict[str, Any]:
        """One ``/api/chat`` record."""
        obj: dict[str, Any] = {
            "model": self.model,
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": content, **message},
            "done": done,
        }
        if done:
            obj.update(done_reason="stop", prompt_eval_count=3, eval_count=len(self.tokens))
        return obj

    def ollama_calls(self) -> list[dict[str, Any]]:
        return [
            {"function": {"name": c["name"], "arguments": json.loads(c["arguments"] or "{}")}}
            for c in self.tool_calls
        ]

    def ollama_steps(self) -> list[bytes]:
        """The streamed records (without the final ``done`` one)."""
        records = [self.record("", False, thinking=r) for r in self.reasoning]
        for i, text in enumerate(self.tokens):
            records.append(self.record(text, False))
            if logprobs := self.logprobs(i, text):
                records[-1]["logprobs"] = logprobs
        if self.tool_calls:
            records.append(self.record("", False, tool_calls=self.ollama_calls()))
        return [json.dumps(r).encode() + b"\n" for r in records]

    def ollama_end(self) -> bytes:
        return json.dumps(self.record("", True)).encode() + b"\n"

    def ollama_whole(self) -> dict[str, Any]:
        """The non-streamed answer."""
        extra: dict[str, Any] = {}
        if self.reasoning:
            extra["thinking"] = "".join(self.reasoning)
        if self.tool_calls:
            extra["tool_calls"] = self.ollama_calls()
        whole = self.record("".join(self.tokens), True, **extra)
        if logprobs := self.all_logprobs():
            whole["logprobs"] = logprobs
        return whole
