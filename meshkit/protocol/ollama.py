"""The Ollama chat dialect, both ways: what a client sends to ``/api/chat`` and
``/api/generate`` and gets back as NDJSON, and what an Ollama-native upstream is sent
and answers. Bytes and dicts in and out, no I/O.

The canonical request keeps OpenAI's shapes, so this module maps: ``images`` (base64)
↔ ``image_url`` parts with ``data:`` URLs, ``format`` ↔ ``response_format``,
``thinking`` ↔ reasoning, ``think`` ↔ the reasoning switch, ``tool_name`` ↔ the call a
tool result answers, ``options`` ↔ the sampling fields. Options with no canonical field
stay in ``extra["options"]`` and ``keep_alive`` in ``extra["keep_alive"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import _json
from ..errors import BadRequest, UpstreamError
from . import fields as f
from .codec import LineParse
from .content import call_id, data_url_payload, image_data_url
from .types import ChatRequest, Chunk, Completion, Message, Part, ToolCall, ToolCallDelta, Usage
from .wire import END

CHAT_PATH = "/api/chat"
MODELS_PATH = "/api/tags"

_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "tools",
        "format",
        "options",
        "stream",
        "keep_alive",
        "think",
        "logprobs",
        "top_logprobs",
    }
)
_GENERATE_FIELDS = (_CHAT_FIELDS - {"messages", "tools"}) | {"prompt", "system", "images"}
#: Generate fields meshkit cannot honour through a chat upstream: refused, named.
_UNSUPPORTED = ("suffix", "template", "context", "raw")
#: Options meshkit maps onto its own fields; OpenAI-named penalties go to ``extra``.
_MAPPED = frozenset({"temperature", "top_p", "num_predict", "stop", "seed"})
_PENALTIES = ("presence_penalty", "frequency_penalty")
#: OpenAI request fields an Ollama upstream cannot honour.
_REFUSED = ("logit_bias",)
_MESSAGE_FIELDS = frozenset(
    {"role", "content", "images", "tool_calls", "tool_name", "tool_call_id", "thinking"}
)
_EFFORTS = ("low", "medium", "high")
_EMPTY: Mapping[str, Any] = {}


# -- client side: requests in ------------------------------------------------------------


def parse_chat(body: bytes) -> ChatRequest:
    """Validate an ``/api/chat`` body."""
    obj = f.parse_object(body)
    if obj.keys() <= _PLAIN:
        # Nothing but a model, messages and a stream switch (the usual chat): the
        # options' and other fields' readers would each find their field absent.
        return ChatRequest(
            messages=_messages(f.message_list(obj)),
            model=f.opt_str(obj, "model") or None,
            stream=f.opt_bool(obj, "stream", True),
            include_usage=True,
        )
    _known(obj, _CHAT_FIELDS)
    return _common(obj, _messages(f.message_list(obj)))


#: The fields of a plain chat request, read by :func:`parse_chat`'s short path.
_PLAIN = frozenset({"model", "messages", "stream"})


def parse_generate(body: bytes) -> ChatRequest:
    """Validate an ``/api/generate`` body into a chat request."""
    obj = f.parse_object(body)
    for key in _UNSUPPORTED:
        if obj.get(key) not in (None, "", [], False):
            raise BadRequest(
                f"'{key}' is not supported: meshkit answers /api/generate through a chat model",
                param=key,
            )
    _known(obj, _GENERATE_FIELDS | set(_UNSUPPORTED))
    prompt = f.opt_str(obj, "prompt")
    if prompt is None:
        raise BadRequest("'prompt' is required", param="prompt")
    system = f.opt_str(obj, "system")
    images = _images(f.opt_list(obj, "images"), "images")
    user = Message("user", (Part("text", prompt), *images) if images else prompt)
    messages = ((Message("system", system),) if system else ()) + (user,)
    return _common(obj, messages)


def _known(obj: dict[str, Any], known: frozenset[str] | set[str]) -> None:
    for key in obj:
        if key not in known:
            raise BadRequest(f"'{key}' is not a field meshkit's Ollama API knows", param=key)


def _common(obj: dict[str, Any], messages: tuple[Message, ...]) -> ChatRequest:
    options = f.opt_object(obj, "options")
    extra: dict[str, Any] = {}
    for key in _PENALTIES:
        value = f.opt_number(options, key, low=-2, high=2, param=f"options.{key}")
        if value is not None:
            extra[key] = value
    rest = {k: v for k, v in options.items() if k not in _MAPPED and k not in _PENALTIES}
    if rest:
        extra["options"] = rest
    if obj.get("keep_alive") is not None:
        extra["keep_alive"] = obj["keep_alive"]
    max_tokens = f.opt_int(options, "num_predict", param="options.num_predict")
    think = obj.get("think")
    if think is not None and not isinstance(think, bool) and think not in _EFFORTS:
        raise BadRequest('\'think\' must be true, false, "low", "medium" or "high"', param="think")
    logprobs = obj.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequest("'logprobs' must be a boolean", param="logprobs")
    return ChatRequest(
        messages=messages,
        model=f.opt_str(obj, "model") or None,
        stream=f.opt_bool(obj, "stream", True),
        temperature=f.opt_number(
            options, "temperature", low=0, high=2, param="options.temperature"
        ),
        top_p=f.opt_number(options, "top_p", low=0, high=1, param="options.top_p"),
        max_tokens=max_tokens if max_tokens is not None and max_tokens > 0 else None,
        stop=f.opt_stop(options, "stop", param="options.stop"),
        seed=f.opt_int(options, "seed", param="options.seed"),
        include_usage=True,
        extra=extra,
        tools=tuple(f.objects(f.opt_list(obj, "tools"), "tools")),
        response_format=_format(obj.get("format")),
        think=think,
        logprobs=logprobs,
        top_logprobs=f.opt_int(obj, "top_logprobs", low=0),
        max_tokens_field="max_tokens",
    )


def _format(fmt: Any) -> Mapping[str, Any] | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    raise BadRequest("'format' must be \"json\" or a JSON schema object", param="format")


def _images(value: list[Any], where: str) -> tuple[Part, ...]:
    parts = []
    for j, data in enumerate(value):
        try:
            if not isinstance(data, str):
                raise ValueError("not a string")
            parts.append(Part.image(image_data_url(data)))
        except ValueError as exc:
            raise BadRequest(
                f"'{where}[{j}]' must be a base64-encoded image ({exc})", param=f"{where}[{j}]"
            ) from exc
    return tuple(parts)


def _messages(items: list[dict[str, Any]]) -> tuple[Message, ...]:
    out = []
    pending: list[ToolCall] = []  # calls of the last assistant turn not answered yet
    for i, item in enumerate(items):
        where = f"messages[{i}]"
        role = f.role(item, where)
        text = f.opt_str(item, "content", param=f"{where}.content") or ""
        if len(item) == 2 and "content" in item and role != "tool":
            out.append(Message(role, text))
            continue
        images = _images(f.opt_list(item, "images", param=f"{where}.images"), f"{where}.images")
        calls = _calls(f.opt_list(item, "tool_calls", param=f"{where}.tool_calls"), i, where)
        if calls:
            pending = list(calls)
        name = f.opt_str(item, "tool_name", param=f"{where}.tool_name")
        answers = f.opt_str(item, "tool_call_id", param=f"{where}.tool_call_id")
        if role == "tool" and answers is None and pending:
            # Ollama names the tool, not the call: answer the first pending call of it.
            match = next((c for c in pending if c.name == name), pending[0])
            pending.remove(match)
            answers = match.id
        out.append(
            Message(
                role,
                (Part("text", text), *images) if images else text,
                tool_calls=calls,
                tool_call_id=answers,
                name=name,
                reasoning=f.opt_str(item, "thinking", param=f"{where}.thinking"),
                extra={k: v for k, v in item.items() if k not in _MESSAGE_FIELDS},
            )
        )
    return tuple(out)


def _calls(value: list[Any], i: int, where: str) -> tuple[ToolCall, ...]:
    calls = []
    for j, call in enumerate(f.objects(value, f"{where}.tool_calls")):
        at = f"{where}.tool_calls[{j}].function"
        fn = f.opt_object(call, "function", param=at)
        name = f.opt_str(fn, "name", param=f"{at}.name")
        if not name:
            raise BadRequest(f"'{at}.name' is required", param=f"{at}.name")
        arguments = fn.get("arguments") or {}
        if not isinstance(arguments, dict | str):
            raise BadRequest(f"'{at}.arguments' must be an object", param=f"{at}.arguments")
        text = arguments if isinstance(arguments, str) else _json.dumps(arguments).decode()
        # Ids are made up the same way every turn, so a tool result matches its call.
        given = call.get("id")
        ident = given if isinstance(given, str) and given else f"call_{i}_{j}"
        calls.append(ToolCall(ident, name, text))
    return tuple(calls)


# -- upstream side: requests out ---------------------------------------------------------


def request_body(request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The body of ``request`` for an Ollama-native ``/api/chat`` upstream."""
    extra = request.extra
    options: dict[str, Any] = dict(extra.get("options") or {})
    for key in _PENALTIES:
        if key in extra:
            options[key] = extra[key]
    for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed")):
        value = getattr(request, key)
        if value is not None:
            options[name] = value
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = list(request.stop)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": _render_messages(request.messages),
        "stream": stream,
        "options": options,
    }
    choice = request.tool_choice
    if choice not in (None, "auto", "none"):
        raise BadRequest(
            '\'tool_choice\' can only be "auto" or "none" with an Ollama upstream',
            param="tool_choice",
        )
    if request.tools and choice != "none":
        body["tools"] = list(request.tools)
    fmt = request.response_format
    if fmt is not None and fmt.get("type") != "text":
        if fmt.get("type") == "json_object":
            body["format"] = "json"
        elif fmt.get("type") == "json_schema":
            body["format"] = (fmt.get("json_schema") or _EMPTY).get("schema") or "json"
        else:
            raise BadRequest(
                f"'response_format.type' {fmt.get('type')!r} has no Ollama equivalent",
                param="response_format.type",
            )
    if request.think is not None:
        think = request.think
        body["think"] = think if isinstance(think, bool) or think in _EFFORTS else False
    if request.logprobs is not None:
        body["logprobs"] = request.logprobs
    if request.top_logprobs is not None:
        body["top_logprobs"] = request.top_logprobs
    for key, value in extra.items():
        if key in _REFUSED:
            raise BadRequest(f"'{key}' has no equivalent on an Ollama upstream", param=key)
        if key != "options" and key not in _PENALTIES:
            body[key] = value  # keep_alive, and OpenAI fields Ollama reads or ignores
    return body


def _render_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    out = []
    names: dict[str, str] = {}  # tool-call id -> the tool's name, for tool results
    for i, m in enumerate(messages):
        content = m.content
        role = "system" if m.role == "developer" else m.role
        if isinstance(content, str) and not (
            m.tool_calls or m.tool_call_id or m.name or m.reasoning or m.extra
        ):
            out.append({"role": role, "content": content})
            continue
        item: dict[str, Any] = {"role": role, "content": m.text}
        images = _render_images(m, i)
        if images:
            item["images"] = images
        if m.tool_calls:
            item["tool_calls"] = [_render_call(c, i, j) for j, c in enumerate(m.tool_calls)]
            names.update((c.id, c.name) for c in m.tool_calls)
        tool_name = m.name or (names.get(m.tool_call_id) if m.tool_call_id else None)
        if m.role == "tool" and tool_name:
            item["tool_name"] = tool_name
        if m.reasoning:
            item["thinking"] = m.reasoning
        item.update(m.extra)
        out.append(item)
    return out


def _render_images(m: Message, i: int) -> list[str]:
    if m.content is None or isinstance(m.content, str):
        return []
    images = []
    for j, part in enumerate(m.content):
        if part.type == "text":
            continue
        where = f"messages[{i}].content[{j}]"
        url = part.image_url
        if url is None:
            raise BadRequest(
                f"'{where}' ({part.type}) cannot be sent to an Ollama upstream", param=where
            )
        payload = data_url_payload(url)
        if payload is None:
            raise BadRequest(
                f"'{where}.image_url.url' must be a data: URL for an Ollama upstream "
                "(it takes image bytes, not links)",
                param=f"{where}.image_url.url",
            )
        images.append(payload)
    return images


def _render_call(c: ToolCall, i: int, j: int) -> dict[str, Any]:
    try:
        arguments = _json.loads(c.arguments or "{}")
    except ValueError as exc:
        where = f"messages[{i}].tool_calls[{j}].function.arguments"
        raise BadRequest(f"'{where}' is not valid JSON", param=where) from exc
    call: dict[str, Any] = {"function": {"name": c.name, "arguments": arguments}}
    if c.id:
        call["id"] = c.id
    return call


# -- upstream side: answers in -----------------------------------------------------------


class Upstream:
    """Reads an Ollama-native upstream's NDJSON stream and whole answers.

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
        """A parser for one stream's lines (it numbers the stream's tool calls)."""
        return _Lines(self.name)

    def completion(self, raw: bytes, request: ChatRequest) -> Completion:
        """A whole (non-streamed) answer."""
        try:
            obj = _json.loads(raw)
            message = obj["message"]
            calls = tuple(
                ToolCall(d.id or "", d.name or "", d.arguments) for d in _deltas(message, 0)
            )
            finish = obj.get("done_reason") or "stop"
            return Completion(
                message.get("content") or "",
                "tool_calls" if calls and finish == "stop" else finish,
                usage(obj),
                obj.get("model") or request.model,
                reasoning=message.get("thinking") or "",
                tool_calls=calls,
                logprobs=_logprobs(obj),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamError(
                f"{self.name}: malformed answer from upstream", service=self.name
            ) from exc

    def models(self, raw: bytes) -> list[str]:
        """Model names from ``/api/tags``."""
        try:
            return [str(m.get("name") or m["model"]) for m in _json.loads(raw)["models"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"{self.name}: malformed model list", service=self.name) from exc


class _Lines:
    """One NDJSON stream's line parser."""

    __slots__ = ("_calls", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls = 0

    def whole(self, data: bytes) -> Chunk | None:
        """Nothing is recognised without parsing: each record's time stamp differs."""
        return None

    def verbatim(self, data: bytes) -> str | None:
        """No record is relayed as it came (an Ollama caller's records are meshkit's own)."""
        return None

    def __call__(self, line: bytes) -> Sequence[Chunk]:
        """One NDJSON record as chunks (ending with ``END`` on the last one)."""
        line = line.strip()
        if not line:
            return ()
        try:
            obj = _json.loads(line)
        except ValueError as exc:
            raise self._malformed() from exc
        if not isinstance(obj, dict):
            raise self._malformed()
        if "error" in obj:
            raise UpstreamError(f"{self._name}: {obj['error']}", service=self._name)
        try:
            message = obj.get("message") or _EMPTY
            text = message.get("content") or obj.get("response") or ""
            model = obj.get("model")
            done = obj.get("done")
            if len(message) <= 2 and not done and not obj.get("logprobs"):
                return [Chunk(text, None, None, model)]  # plain text: cheap path
            calls = _deltas(message, self._calls)
            self._calls += len(calls)
            body = Chunk(
                text,
                None,
                None,
                model,
                reasoning=message.get("thinking") or obj.get("thinking") or "",
                tool_calls=calls,
                logprobs=_logprobs(obj),
            )
            if not done:
                return [body]
            finish = obj.get("done_reason") or "stop"
            if self._calls and finish == "stop":
                finish = "tool_calls"
            last = Chunk("", finish, usage(obj), model)
            return [body, last, END] if body.text or body.has_delta else [last, END]
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise self._malformed() from exc

    def _malformed(self) -> UpstreamError:
        return UpstreamError(f"{self._name}: malformed line in stream", service=self._name)


def _deltas(message: Mapping[str, Any], start: int) -> tuple[ToolCallDelta, ...]:
    calls = message.get("tool_calls")
    if not calls:
        return ()
    out = []
    for j, call in enumerate(calls):
        fn = call["function"]
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            arguments = _json.dumps(arguments if arguments is not None else {}).decode()
        out.append(ToolCallDelta(start + j, call.get("id") or call_id(), fn["name"], arguments))
    return tuple(out)


def _logprobs(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    value = obj.get("logprobs")
    return {"content": value} if isinstance(value, list) and value else None


def usage(obj: Mapping[str, Any]) -> Usage:
    """Token counts from an Ollama final record."""
    return Usage(int(obj.get("prompt_eval_count") or 0), int(obj.get("eval_count") or 0))
