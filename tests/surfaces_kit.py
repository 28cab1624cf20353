"""What the surface tests share: pipelines, requests in both dialects, answer readers.

An answer is read the way a client reads it (SSE events or NDJSON records, streamed or
whole) into one :class:`Answer`, so a test states what the client got whatever the
dialect, and what the upstream got from ``FakeLLM.requests``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import yaml

from meshkit import MicroService
from meshkit.nodes.base import Context
from meshkit.protocol import Chunk, Completion
from meshkit.protocol.streams import aclose, aggregate, is_stream, single

CLIENTS = ("openai", "ollama")
UPSTREAMS = ("openai", "ollama")
PIPELINES = ("llm", "graph")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
#: The upstream's call, arguments exactly as its model wrote them (spacing included).
CALL = {"id": "call_w1", "name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}
ARGS = json.loads(CALL["arguments"])
#: A 1x1 PNG.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a5d1c5a50000000049454e44ae426082"
    )
).decode()
PNG_URL = "data:image/png;base64," + PNG
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
}


class Relay(MicroService):
    """A custom node after the LLM that hands every chunk on unchanged."""

    async def process(self, data: Any, ctx: Context) -> Any:
        if is_stream(data):
            return self._relay(data)
        return data

    async def _relay(self, stream: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await aclose(stream)


class Restream(MicroService):
    """A custom node that turns a stream into a whole answer and the reverse, so the
    gateway re-streams it (``single``) or reads it whole (``aggregate``)."""

    async def process(self, data: Any, ctx: Context) -> Any:
        if is_stream(data):
            return await aggregate(data)
        if isinstance(data, Completion):
            return single(data)
        return data


def mesh(url: str, api: str, pipeline: str, **llm: Any) -> str:
    """Services YAML: one LLM on ``url`` speaking ``api``, alone (``llm``) or followed by
    a relay (``graph``), a stream/whole flip (``restream``) or a guardrail (``guard``)."""
    services: dict[str, Any] = {
        "llm": {"type": "llm", "endpoint": url, "api": api, "model": "llama3.2:1b", **llm},
        "relay": {"type": "custom", "class": "tests.surfaces_kit:Relay"},
        "restream": {"type": "custom", "class": "tests.surfaces_kit:Restream"},
        "guard": {"type": "guardrail", "params": {"words": ["sky"], "action": "redact"}},
    }
    flow = {"nodes": ["llm"]} if pipeline == "llm" else {"edges": [f"llm -> {pipeline}"]}
    if pipeline == "graph":
        flow = {"edges": ["llm -> relay"]}
    return yaml.safe_dump(
        {
            "services": services,
            "pipelines": {"chat": flow},
            "gateway": {
                "routes": [
                    {"dialect": "openai", "pipeline": "chat"},
                    {"dialect": "ollama", "pipeline": "chat"},
                ]
            },
        }
    )


def path(client: str) -> str:
    return "/v1/chat/completions" if client == "openai" else "/api/chat"


@attrs.define
class Answer:
    """What a client got, whichever dialect it speaks."""

    text: str = ""
    reasoning: str = ""
    #: Per call: id, name, arguments as the client got them (text or object).
    calls: list[list[Any]] = attrs.field(factory=list)
    fragments: int = 0
    finish: str | None = None
    logprobs: list[dict[str, Any]] = attrs.field(factory=list)
    ids: set[str] = attrs.field(factory=set)
    error: Any = None
    events: list[Any] = attrs.field(factory=list)

    def arguments(self) -> list[Any]:
        """Each call's arguments as an object."""
        return [a if isinstance(a, dict) else json.loads(a) for _, _, a in self.calls]


def sse_events(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def read(client: str, stream: bool, raw: bytes) -> Answer:
    """Read a response body the way a client of ``client``'s dialect would."""
    answer = Answer()
    if client == "openai":
        if stream:
            _openai_events(answer, sse_events(raw))
        else:
            _openai_whole(answer, json.loads(raw))
    else:
        records = [json.loads(x) for x in raw.splitlines() if x.strip()]
        answer.events = records
        for record in records:
            _ollama_record(answer, record)
    return answer


def _openai_events(answer: Answer, events: list[Any]) -> None:
    answer.events = events
    for event in events:
        if event == "[DONE]":
            continue
        if "error" in event:
            answer.error = event["error"]
            continue
        answer.ids.add(event["id"])
        for choice in event["choices"]:
            delta = choice["delta"]
            answer.text += delta.get("content") or ""
            answer.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
            for frag in delta.get("tool_calls") or ():
                answer.fragments += 1
                while len(answer.calls) <= frag["index"]:
                    answer.calls.append([None, None, ""])
                call = answer.calls[frag["index"]]
                call[0] = call[0] or frag.get("id")
                call[1] = call[1] or frag.get("function", {}).get("name")
                call[2] += frag.get("function", {}).get("arguments") or ""
            if choice.get("logprobs"):
                answer.logprobs += choice["logprobs"]["content"]
            answer.finish = choice.get("finish_reason") or answer.finish


def _openai_whole(answer: Answer, obj: dict[str, Any]) -> None:
    answer.events = [obj]
    if "error" in obj:
        answer.error = obj["error"]
        return
    answer.ids.add(obj["id"])
    choice = obj["choices"][0]
    message = choice["message"]
    answer.text = message.get("content") or ""
    answer.reasoning = message.get("reasoning_content") or ""
    answer.calls = [
        [c["id"], c["function"]["name"], c["function"]["arguments"]]
        for c in message.get("tool_calls") or ()
    ]
    answer.finish = choice["finish_reason"]
    answer.logprobs = (choice.get("logprobs") or {}).get("content") or []


def _ollama_record(answer: Answer, record: dict[str, Any]) -> None:
    if "error" in record:
        answer.error = record["error"]
        return
    message = record.get("message") or {}
    answer.text += message.get("content") or ""
    answer.reasoning += message.get("thinking") or ""
    for call in message.get("tool_calls") or ():
        answer.fragments += 1
        fn = call["function"]
        answer.calls.append([call.get("id"), fn["name"], fn["arguments"]])
    answer.logprobs += record.get("logprobs") or []
    if record.get("done"):
        answer.finish = record.get("done_reason")
