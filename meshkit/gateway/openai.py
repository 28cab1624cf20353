"""The OpenAI dialect: ``/v1/chat/completions``, ``/v1/models``, ``/v1/embeddings``."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .. import _json
from ..errors import BadRequest, MeshError
from ..protocol.types import ChatRequest, Chunk, Completion, Usage
from ..protocol.wire import SSE_DONE, new_id, sse_event
from . import embeddings
from . import validate as v
from .dialect import Handler, error_json, json_response, request_id, serve_chat
from .route import Route

#: Request fields passed to the LLM untouched (sampling and output controls).
PASSTHROUGH = (
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_effort",
)


def error_body(err: MeshError) -> dict[str, Any]:
    """OpenAI's error object."""
    return {
        "error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}
    }


def error_response(err: MeshError) -> web.Response:
    """An error as OpenAI clients expect it."""
    return error_json(error_body(err), err)


def parse_chat(body: bytes) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body."""
    obj = v.parse_object(body)
    messages = v.messages(obj)
    n = v.opt_int(obj, "n", low=1)
    if n not in (None, 1):
        raise BadRequest("'n' must be 1: meshkit returns one choice", param="n")
    options = v.opt_object(obj, "stream_options")
    max_tokens = v.opt_int(obj, "max_completion_tokens", low=1)
    if max_tokens is None:
        max_tokens = v.opt_int(obj, "max_tokens", low=1)
    return ChatRequest(
        messages=messages,
        model=v.opt_str(obj, "model") or None,
        stream=v.opt_bool(obj, "stream", False),
        temperature=v.opt_number(obj, "temperature", low=0, high=2),
        top_p=v.opt_number(obj, "top_p", low=0, high=1),
        max_tokens=max_tokens,
        stop=v.opt_stop(obj, "stop"),
        seed=v.opt_int(obj, "seed"),
        include_usage=v.opt_bool(
            options, "include_usage", False, param="stream_options.include_usage"
        ),
        extra={k: obj[k] for k in PASSTHROUGH if k in obj},
    )


class ChatEncoder:
    """Encodes one answer as ``chat.completion`` or ``chat.completion.chunk`` events."""

    content_type = "text/event-stream; charset=utf-8"

    def __init__(self, chat: ChatRequest) -> None:
        self.id = "chatcmpl-" + new_id()[:24]
        self.created = int(time.time())
        self.model = chat.model or ""
        self.include_usage = chat.include_usage
        self._first = True
        self._usage: Usage | None = None
        self._usage_relayed = False

    def _event(self, delta: dict[str, Any], finish: str | None) -> bytes:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return sse_event(_json.dumps(obj))

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
            # Relay the upstream's own event; drop the usage-only event unless asked.
            if chunk.usage is not None and not chunk.text and chunk.finish_reason is None:
                self._usage = chunk.usage
                if not self.include_usage:
                    return None
                self._usage_relayed = True
                return sse_event(chunk.raw)
            self._first = False
            return sse_event(chunk.raw)
        if chunk.usage is not None:
            self._usage = chunk.usage
        out = b""
        if chunk.meta:
            out += self._bare(meshkit=dict(chunk.meta))
        if chunk.text or chunk.finish_reason or self._first:
            delta: dict[str, Any] = {"content": chunk.text} if chunk.text or self._first else {}
            if self._first:
                delta["role"] = "assistant"
                self._first = False
            out += self._event(delta, chunk.finish_reason)
        return out or None

    def end(self) -> bytes:
        tail = b""
        if self.include_usage and self._usage is not None and not self._usage_relayed:
            tail = self._bare(usage=_usage(self._usage))
        return tail + sse_event(SSE_DONE)

    def error(self, err: MeshError) -> bytes:
        return sse_event(_json.dumps(error_body(err)))

    def completion(self, completion: Completion) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model or completion.model or "",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "logprobs": None,
                    "finish_reason": completion.finish_reason or "stop",
                }
            ],
        }
        if completion.usage is not None:
            obj["usage"] = _usage(completion.usage)
        if completion.meta:
            obj["meshkit"] = dict(completion.meta)
        return obj


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def chat_handler(route: Route) -> Handler:
    """The ``/v1/chat/completions`` handler answering from ``route``'s pipeline."""

    async def chat(request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        try:
            body = await request.read()
            parsed = parse_chat(body).with_model(route.default_model())
            return await serve_chat(request, route.orchestrator, parsed, ChatEncoder, rid)
        except MeshError as err:
            return error_response(err)

    return chat


def add_routes(router: web.UrlDispatcher, route: Route) -> None:
    """Mount the OpenAI endpoints for ``route``."""
    prefix = route.prefix

    async def models(request: web.Request) -> web.Response:
        try:
            names = await route.model_names()
        except MeshError as err:
            return error_response(err)
        return json_response(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": 0, "owned_by": "meshkit"} for n in names
                ],
            }
        )

    router.add_post(prefix + "/v1/chat/completions", chat_handler(route))
    router.add_get(prefix + "/v1/models", models)
    router.add_post(prefix + "/v1/embeddings", embeddings.openai_handler(route, error_response))
