"""The OpenAI chat dialect, both ways: what a client sends and gets back, and what an
OpenAI-compatible upstream is sent and answers. Bytes and dicts in and out, no I/O.

Fields meshkit models become :class:`ChatRequest` fields; every other request field is
kept in ``extra`` and sent on untouched. Ollama-only settings (``options`` meshkit has no
OpenAI field for, ``keep_alive``) are never sent to an OpenAI upstream as unknown
fields: load-time settings are left to the server, sampling ones refused with a 400.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import _json
from ..errors import BadRequest, UpstreamError
from . import fields as f
from .codec import LineParse
from .openai_events import Events
from .types import (
    ROLES,
    ChatRequest,
    Chunk,
    Completion,
    Message,
    Part,
    ToolCall,
    ToolCallDelta,
    Usage,
    relayed_chunk,
)
from .wire import END_ONLY, SSE_DONE

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

#: Request fields :class:`ChatRequest` models; the rest pass through in ``extra``.
_MODELLED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "n",
        "tools",
        "tool_choice",
        "response_format",
        "reasoning_effort",
        "logprobs",
        "top_logprobs",
    }
)
#: The fields of a plain chat request, read by :func:`parse_request`'s short path.
_PLAIN = frozenset({"model", "messages", "stream"})
_MESSAGE_FIELDS = frozenset(
    {"role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content", "reasoning"}
)
#: Ollama options about loading and running a model, not what it says: they mean
#: nothing to an OpenAI-compatible server, which sets them itself.
RUNTIME_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "num_keep",
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
        "vocab_only",
        "f16_kv",
        "logits_all",
    }
)
#: Extra keys only the Ollama dialect produces (see :mod:`.ollama`).
_OLLAMA_ONLY = frozenset({"options", "keep_alive"})
_EMPTY: Mapping[str, Any] = {}
#: The members of a stream event's ``delta`` that need no more than its text read.
_PLAIN_DELTA = frozenset({"role", "content"})


# -- client side: requests in ------------------------------------------------------------


def parse_request(body: bytes) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body (BadRequest names the bad field)."""
    return request_from(f.parse_object(body))


def request_from(obj: dict[str, Any]) -> ChatRequest:
    """:func:`parse_request` of a body already decoded to its JSON object."""
    items = f.message_list(obj)
    messages = tuple([_message(item, i) for i, item in enumerate(items)])
    if obj.keys() <= _PLAIN:
        # Nothing but a model, messages and a stream switch (the usual chat): the
        # other fields' readers would each find their field absent.
        return ChatRequest(
            messages=messages,
            model=f.opt_str(obj, "model") or None,
            stream=f.opt_bool(obj, "stream", False),
        )
    n = f.opt_int(obj, "n", low=1)
    if n not in (None, 1):
        raise BadRequest("'n' must be 1: meshkit returns one choice", param="n")
    options = f.opt_object(obj, "stream_options")
    field = "max_tokens"
    # The agent and reasoning fields are read only when sent: a plain chat pays for
    # one membership test each.
    more: dict[str, Any] = {}
    if "max_completion_tokens" in obj and obj["max_completion_tokens"] is not None:
        field = more["max_tokens_field"] = "max_completion_tokens"
    if "tools" in obj:
        more["tools"] = tuple(f.objects(f.opt_list(obj, "tools"), "tools"))
    if "tool_choice" in obj:
        more["tool_choice"] = _tool_choice(obj["tool_choice"])
    if "response_format" in obj:
        more["response_format"] = _response_format(obj["response_format"])
    if "reasoning_effort" in obj:
        more["think"] = f.opt_str(obj, "reasoning_effort")
    if "logprobs" in obj:
        more["logprobs"] = _logprobs_flag(obj["logprobs"])
    if "top_logprobs" in obj:
        more["top_logprobs"] = _top_logprobs(obj)
    return ChatRequest(
        messages=messages,
        model=f.opt_str(obj, "model") or None,
        stream=f.opt_bool(obj, "stream", False),
        temperature=f.opt_number(obj, "temperature", low=0, high=2),
        top_p=f.opt_number(obj, "top_p", low=0, high=1),
        max_tokens=f.opt_int(obj, field, low=1),
        stop=f.opt_stop(obj, "stop"),
        seed=f.opt_int(obj, "seed"),
        include_usage=f.opt_bool(
            options, "include_usage", False, param="stream_options.include_usage"
        ),
        extra={k: v for k, v in obj.items() if k not in _MODELLED},
        **more,
    )


def _logprobs_flag(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise BadRequest("'logprobs' must be a boolean", param="logprobs")
    return value


def _top_logprobs(obj: dict[str, Any]) -> int | None:
    top = f.opt_int(obj, "top_logprobs", low=0)
    if top is not None and top > 20:
        raise BadRequest("'top_logprobs' must be at most 20", param="top_logprobs")
    return top


def _message(item: dict[str, Any], index: int) -> Message:
    content = item.get("content")
    role = item.get("role")
    if len(item) == 2 and type(content) is str and type(role) is str and role in ROLES:
        return Message(role, content)  # the common case: role and text, nothing to name
    where = f"messages[{index}]"
    role = f.role(item, where)
    reasoning = f.opt_str(item, "reasoning_content", param=f"{where}.reasoning_content")
    if reasoning is None:
        reasoning = f.opt_str(item, "reasoning", param=f"{where}.reasoning")
    name = f.opt_str(item, "name", param=f"{where}.name")
    extra = {k: v for k, v in item.items() if k not in _MESSAGE_FIELDS}
    if role == "tool" and name is not None:
        extra["name"] = name  # a client's own name on a tool result goes on as sent
    return Message(
        role,
        _content(content, f"{where}.content"),
        tool_calls=_tool_calls(f.opt_list(item, "tool_calls", param=f"{where}.tool_calls"), where),
        tool_call_id=f.opt_str(item, "tool_call_id", param=f"{where}.tool_call_id"),
        name=name,
        reasoning=reasoning,
        extra=extra,
    )


def _content(value: Any, where: str) -> str | tuple[Part, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadRequest(f"'{where}' must be a string or an array of content parts", param=where)
    parts = []
    for j, part in enumerate(f.objects(value, where)):
        at = f"{where}[{j}]"
        kind = part.get("type")
        if not isinstance(kind, str):
            raise BadRequest(f"'{at}.type' must be a string", param=f"{at}.type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"'{at}.text' must be a string", param=f"{at}.text")
            rest = {k: v for k, v in part.items() if k not in ("type", "text")}
            parts.append(Part("text", text, rest))
            continue
        data = {k: v for k, v in part.items() if k != "type"}
        if kind == "image_url":
            ref = data.get("image_url")
            if not isinstance(ref, dict) or not isinstance(ref.get("url"), str):
                raise BadRequest(
                    f"'{at}.image_url.url' must be a string (an http(s) or data: URL)",
                    param=f"{at}.image_url.url",
                )
        parts.append(Part(kind, data=data))
    return tuple(parts)


def _tool_calls(value: list[Any], where: str) -> tuple[ToolCall, ...]:
    calls = []
    for j, call in enumerate(f.objects(value, f"{where}.tool_calls")):
        at = f"{where}.tool_calls[{j}]"
        fn = f.opt_object(call, "function", param=f"{at}.function")
        name = f.opt_str(fn, "name", param=f"{at}.function.name")
        if not name:
            raise BadRequest(f"'{at}.function.name' is required", param=f"{at}.function.name")
        arguments = fn.get("arguments", "{}")
        if isinstance(arguments, dict):
            arguments = _json.dumps(arguments).decode()
        elif not isinstance(arguments, str):
            raise BadRequest(
                f"'{at}.function.arguments' must be a JSON string",
                param=f"{at}.function.arguments",
            )
        ident = f.opt_str(call, "id", param=f"{at}.id") or ""
        calls.append(ToolCall(ident, name, arguments, f.opt_str(call, "type") or "function"))
    return tuple(calls)


def _tool_choice(value: Any) -> str | Mapping[str, Any] | None:
    if value is None or isinstance(value, dict) or value in ("none", "auto", "required"):
        return value  # type: ignore[no-any-return]
    raise BadRequest(
        '\'tool_choice\' must be "none", "auto", "required" or an object', param="tool_choice"
    )


def _response_format(value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise BadRequest(
            "'response_format' must be an object with a 'type'", param="response_format"
        )
    if value["type"] == "json_schema" and not isinstance(value.get("json_schema"), dict):
        raise BadRequest(
            "'response_format.json_schema' must be an object", param="response_format.json_schema"
        )
    return value


# -- upstream side: requests out ---------------------------------------------------------


def request_body(request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The body of ``request`` for an OpenAI-compatible upstream."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_render_message(m) for m in request.messages],
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.max_tokens is not None:
        body[request.max_tokens_field] = request.max_tokens
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = list(request.stop)
    if request.tools:
        body["tools"] = list(request.tools)
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.response_format is not None:
        body["response_format"] = request.response_format
    if request.think is not None:
        body["reasoning_effort"] = effort(request.think)
    if request.logprobs is not None:
        body["logprobs"] = request.logprobs
    if request.top_logprobs is not None:
        body["top_logprobs"] = request.top_logprobs
    for key, value in request.extra.items():
        if key in _OLLAMA_ONLY:
            if key == "options" and value is not None:
                if not isinstance(value, Mapping):
                    raise BadRequest("'options' must be an object")
                _check_options(value)
            continue
        body[key] = value
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def effort(think: bool | str) -> str:
    """A reasoning switch as OpenAI's ``reasoning_effort``."""
    if isinstance(think, str):
        return think
    return "medium" if think else "none"


def _check_options(options: Mapping[str, Any]) -> None:
    for key in options:
        if key not in RUNTIME_OPTIONS:
            raise BadRequest(
                f"'options.{key}' has no equivalent on this route's OpenAI-compatible upstream",
                param=f"options.{key}",
            )


def _render_message(m: Message) -> dict[str, Any]:
    content = m.content
    if isinstance(content, str) and not (
        m.tool_calls or m.tool_call_id or m.name or m.reasoning or m.extra
    ):
        return {"role": m.role, "content": content}
    out: dict[str, Any] = {
        "role": m.role,
        "content": content
        if content is None or isinstance(content, str)
        else [_render_part(p) for p in content],
    }
    if m.tool_calls:
        out["tool_calls"] = [render_call(c) for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None and m.role != "tool":  # a tool result is named by its call id
        # (Ollama's tool_name is not sent on as an OpenAI field the client never used)
        out["name"] = m.name
    if m.reasoning:
        out["reasoning_content"] = m.reasoning
    out.update(m.extra)
    return out


def _render_part(p: Part) -> dict[str, Any]:
    if p.type == "text":
        return {"type": "text", "text": p.text, **p.data}
    return {"type": p.type, **p.data}


def render_call(c: ToolCall) -> dict[str, Any]:
    """A whole tool call in OpenAI's shape."""
    return {"id": c.id, "type": c.type, "function": {"name": c.name, "arguments": c.arguments}}


# -- upstream side: answers in -----------------------------------------------------------


class Upstream:
    """Reads an OpenAI-compatible upstream's streamed events and whole answers.

    Args:
        name: The node's name, for the errors it raises.
    """

    chat_path = CHAT_PATH
    models_path = MODELS_PATH

    def __init__(self, name: str) -> None:
        self.name = name

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        return request_body(request, stream=stream)

    def line_parser(self) -> LineParse:
        """The parser of one stream's lines: :meth:`line`, with its plain text deltas
        recognised from their bytes once the stream has shown their shape."""
        return Events(self.line)

    def _malformed(self, what: str) -> UpstreamError:
        return UpstreamError(f"{self.name}: malformed {what}", service=self.name)

    def line(self, line: bytes) -> Sequence[Chunk]:
        """One SSE line: the chunk of a ``data:`` field, nothing for anything else."""
        if line[:5] != b"data:":
            return ()
        payload = line[5:].strip()
        if not payload:
            return ()
        if payload == SSE_DONE:
            return END_ONLY
        try:
            obj = _json.loads(payload)
        except ValueError as exc:
            raise self._malformed("event in stream") from exc
        if not isinstance(obj, dict):
            raise self._malformed("event in stream")
        if "error" in obj:
            err = obj["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise UpstreamError(f"{self.name}: {message}", service=self.name)
        choices = obj.get("choices")
        usage = obj.get("usage")
        try:
            if choices:
                choice = choices[0]
                delta = choice.get("delta") or _EMPTY
                text = delta.get("content") or ""
                logprobs = choice.get("logprobs")
                if not logprobs and delta.keys() <= _PLAIN_DELTA:
                    # Text, a role or nothing (a stream's first text, its finish): no
                    # reasoning, tool call or logprobs to read.
                    return [
                        relayed_chunk(
                            text,
                            obj.get("model"),
                            obj.get("id"),
                            payload,
                            choice.get("finish_reason"),
                            _usage(usage) if usage else None,
                        )
                    ]
                return [
                    Chunk(
                        text,
                        choice.get("finish_reason"),
                        _usage(usage) if usage else None,
                        obj.get("model"),
                        reasoning=delta.get("reasoning_content") or delta.get("reasoning") or "",
                        tool_calls=_deltas(delta.get("tool_calls")),
                        logprobs=logprobs or None,
                        id=obj.get("id"),
                    ).relaying(payload)
                ]
            if usage:
                return [
                    relayed_chunk("", obj.get("model"), obj.get("id"), payload, None, _usage(usage))
                ]
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise self._malformed("event in stream") from exc
        return ()

    def completion(self, raw: bytes, request: ChatRequest) -> Completion:
        """A whole (non-streamed) answer."""
        try:
            obj = _json.loads(raw)
            choice = obj["choices"][0]
            message = choice["message"]
            return Completion(
                message.get("content") or "",
                choice.get("finish_reason") or "stop",
                _usage(obj.get("usage")),
                obj.get("model") or request.model,
                reasoning=message.get("reasoning_content") or message.get("reasoning") or "",
                tool_calls=tuple(map(_call, calls)) if (calls := message.get("tool_calls")) else (),
                logprobs=choice.get("logprobs") or None,
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise self._malformed("answer from upstream") from exc

    def models(self, raw: bytes) -> list[str]:
        """Model names from ``/v1/models``."""
        try:
            return [str(m["id"]) for m in _json.loads(raw)["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise self._malformed("model list") from exc


def _deltas(value: Any) -> tuple[ToolCallDelta, ...]:
    if not value:
        return ()
    out = []
    for i, tc in enumerate(value):
        fn = tc.get("function") or _EMPTY
        out.append(
            ToolCallDelta(
                int(tc.get("index", i)), tc.get("id"), fn.get("name"), fn.get("arguments") or ""
            )
        )
    return tuple(out)


def _call(tc: Mapping[str, Any]) -> ToolCall:
    fn = tc["function"]
    return ToolCall(
        tc.get("id") or "", fn["name"], fn.get("arguments") or "{}", tc.get("type") or "function"
    )


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def usage_object(usage: Usage) -> dict[str, int]:
    """Usage in OpenAI's shape."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
