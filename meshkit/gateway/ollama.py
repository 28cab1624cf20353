"""The Ollama dialect: ``/api/generate``, ``/api/chat``, ``/api/tags`` (NDJSON streams)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .. import _json
from ..errors import BadRequest, MeshError
from ..protocol.types import ChatRequest, Chunk, Completion, Message, Usage
from ..protocol.wire import ndjson_line
from . import ollama_api
from . import validate as v
from .dialect import Handler, error_json, json_response, now_ns, request_id, serve_chat
from .route import Route

#: Ollama ``options`` meshkit maps onto its own request fields.
_MAPPED = {"temperature", "top_p", "num_predict", "stop", "seed"}


def error_body(err: MeshError) -> dict[str, Any]:
    """Ollama's error object."""
    return {"error": err.message}


def error_response(err: MeshError) -> web.Response:
    """An error as Ollama clients expect it."""
    return error_json(error_body(err), err)


def _timestamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _common(obj: dict[str, Any], messages: tuple[Message, ...]) -> ChatRequest:
    options = v.opt_object(obj, "options")
    extra: dict[str, Any] = {}
    rest = {k: val for k, val in options.items() if k not in _MAPPED}
    if rest:
        extra["options"] = rest
    fmt = obj.get("format")
    if fmt == "json":
        extra["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        extra["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt},
        }
    elif fmt not in (None, ""):
        raise BadRequest("'format' must be \"json\" or a JSON schema object", param="format")
    max_tokens = v.opt_int(options, "num_predict", param="options.num_predict")
    return ChatRequest(
        messages=messages,
        model=v.opt_str(obj, "model") or None,
        stream=v.opt_bool(obj, "stream", True),
        temperature=v.opt_number(
            options, "temperature", low=0, high=2, param="options.temperature"
        ),
        top_p=v.opt_number(options, "top_p", low=0, high=1, param="options.top_p"),
        max_tokens=max_tokens if max_tokens is not None and max_tokens > 0 else None,
        stop=v.opt_stop(options, "stop", param="options.stop"),
        seed=v.opt_int(options, "seed", param="options.seed"),
        include_usage=True,
        extra=extra,
    )


def parse_generate(body: bytes) -> ChatRequest:
    """Validate an ``/api/generate`` body into a chat request."""
    obj = v.parse_object(body)
    prompt = v.opt_str(obj, "prompt")
    if prompt is None:
        raise BadRequest("'prompt' is required", param="prompt")
    system = v.opt_str(obj, "system")
    messages = ((Message("system", system),) if system else ()) + (Message("user", prompt),)
    return _common(obj, messages)


def parse_chat(body: bytes) -> ChatRequest:
    """Validate an ``/api/chat`` body."""
    obj = v.parse_object(body)
    return _common(obj, v.messages(obj))


class _Encoder:
    """NDJSON answer: one object per text delta, then a ``done`` object with counts."""

    content_type = "application/x-ndjson"

    def __init__(self, chat: ChatRequest) -> None:
        self.model = chat.model or ""
        self.started = now_ns()
        self.first_token: int | None = None
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.pieces = 0
        self.meta: dict[str, Any] = {}  # from meta chunks; sent on the final object

    def _delta(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def chunk(self, chunk: Chunk) -> bytes | None:
        if chunk.finish_reason:
            self.finish = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.meta:
            self.meta.update(chunk.meta)
        if not chunk.text:
            return None
        if self.first_token is None:
            self.first_token = now_ns()
        self.pieces += 1
        obj = {
            "model": self.model,
            "created_at": _timestamp(),
            **self._delta(chunk.text),
            "done": False,
        }
        return ndjson_line(_json.dumps(obj))

    def _final(self, text: str) -> dict[str, Any]:
        end = now_ns()
        first = self.first_token or end
        usage = self.usage or Usage(0, self.pieces)
        return {
            "model": self.model,
            "created_at": _timestamp(),
            **self._delta(text),
            "done": True,
            "done_reason": _reason(self.finish),
            "total_duration": end - self.started,
            "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": first - self.started,
            "eval_count": usage.completion_tokens or self.pieces,
            "eval_duration": end - first,
        }

    def end(self) -> bytes:
        final = self._final("")
        if self.meta:
            final["meshkit"] = self.meta
        return ndjson_line(_json.dumps(final))

    def error(self, err: MeshError) -> bytes:
        return ndjson_line(_json.dumps(error_body(err)))

    def completion(self, completion: Completion) -> dict[str, Any]:
        self.finish = completion.finish_reason
        self.usage = completion.usage
        self.first_token = self.started
        obj = self._final(completion.text)
        if completion.meta:
            obj["meshkit"] = dict(completion.meta)
        return obj


class GenerateEncoder(_Encoder):
    def _delta(self, text: str) -> dict[str, Any]:
        return {"response": text}


class ChatEncoder(_Encoder):
    def _delta(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}


def _reason(finish: str | None) -> str:
    return "length" if finish == "length" else "stop"


def _handler(route: Route, parse: Any, encoder: Any) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        try:
            parsed = parse(await request.read()).with_model(route.default_model())
            return await serve_chat(request, route.orchestrator, parsed, encoder, rid)
        except MeshError as err:
            return error_response(err)

    return handle


def generate_handler(route: Route) -> Handler:
    """The ``/api/generate`` handler answering from ``route``'s pipeline."""
    return _handler(route, parse_generate, GenerateEncoder)


def chat_handler(route: Route) -> Handler:
    """The ``/api/chat`` handler answering from ``route``'s pipeline."""
    return _handler(route, parse_chat, ChatEncoder)


def add_routes(router: web.UrlDispatcher, route: Route) -> None:
    """Mount the Ollama endpoints for ``route``."""
    prefix = route.prefix

    async def tags(request: web.Request) -> web.Response:
        try:
            names = await route.model_names()
        except MeshError as err:
            return error_response(err)
        stamp = datetime.fromtimestamp(time.time(), UTC).isoformat().replace("+00:00", "Z")
        return json_response(
            {
                "models": [
                    {
                        "name": n,
                        "model": n,
                        "modified_at": stamp,
                        "size": 0,
                        "digest": "",
                        "details": {
                            "format": "",
                            "family": "",
                            "parameter_size": "",
                            "quantization_level": "",
                        },
                    }
                    for n in names
                ]
            }
        )

    router.add_post(prefix + "/api/generate", generate_handler(route))
    router.add_post(prefix + "/api/chat", chat_handler(route))
    router.add_get(prefix + "/api/tags", tags)
    ollama_api.add_routes(router, route, error_response)
