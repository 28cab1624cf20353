"""The plain path: a plain OpenAI chat on a one-LLM route, answered whole or streamed.

Most chat requests are plain: a model, role-and-text messages, no stream, and the
upstream answers with text and usage. For those the general path
(:func:`~meshkit.gateway.dialect.serve_chat`) builds a :class:`ChatRequest` and its
messages, renders them back into an upstream body, reads the answer into a
:class:`Completion` and renders that into a dictionary to serialise — through the
orchestrator, its node call and the node's ``process``. Here the client's own message
objects are checked once and sent on as they came, the node's first try is made
directly (under the same node record, attempt record, replicas, timeouts and
deadline), and the upstream's answer is written in the caller's shape from a byte
template made per request.

A plain *streamed* chat (``"stream": true``, no stream options) is its counterpart:
no :class:`ChatRequest` or messages are made, the upstream body is the client's
messages as they came, the node's first try is made as above, and the stream is written
by the general :func:`~meshkit.gateway.sink.stream_answer` with the general encoder
(its events are the upstream's, relayed or rendered as on the general path).

Anything else takes the general path, decided before any work is lost: a request with
any other field or message shape, a route that is not one OpenAI-compatible
:class:`~meshkit.nodes.llm.RemoteLLM`, an upstream answer with anything but text
(reasoning, tool calls, logprobs, odd usage) and every retry or fallback. The answers
are the same bytes either way (the tests send the same requests through both).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from .. import _json
from ..client.deadline import deadline_from
from ..nodes.base import Context
from ..nodes.llm import RemoteLLM
from ..protocol import openai as openai_wire
from ..protocol.openai_sse import ChatEncoder
from ..protocol.streams import collect
from ..protocol.types import ROLES, ChatRequest, ChunkStream, Completion, Usage
from ..protocol.wire import new_id
from .exchange import Answer, Exchange
from .route import UNSET, Route
from .sink import stream_answer

R = TypeVar("R")

#: The fields of a plain request (as :func:`openai_wire.parse_request`'s short path).
_PLAIN = frozenset({"model", "messages", "stream"})


class Plain:
    """One plain request on its way: the upstream body, and how the answer is written.

    Args:
        obj: The client's body, parsed and found plain.
        model: The model the request goes out under.
        messages: The client's messages, found plain.
        codec: The node's reader of OpenAI answers (for any answer that is not plain).
        llm: The route's LLM node.
        stream: Whether the answer is streamed.
    """

    __slots__ = ("answer", "codec", "created", "id", "llm", "messages", "model", "obj", "stream")

    def __init__(
        self,
        obj: dict[str, Any],
        model: str,
        messages: list[Any],
        codec: openai_wire.Upstream,
        llm: RemoteLLM,
        stream: bool = False,
    ) -> None:
        self.obj = obj
        self.llm = llm
        self.model = model
        self.messages = messages
        self.codec = codec
        self.stream = stream
        #: The caller's answer, once the upstream's was plain (None: render it in full).
        self.answer: bytes | None = None
        if not stream:  # (a stream's encoder makes its own)
            # As ChatEncoder does, before the run (its ``created`` counts from the request).
            self.id = "chatcmpl-" + new_id()[:24]
            self.created = int(time.time())

    def body(self) -> dict[str, Any]:
        """The upstream body (what :func:`openai_wire.request_body` makes of :meth:`chat`)."""
        if self.stream:
            return {
                "model": self.model,
                "messages": self.messages,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        return {"model": self.model, "messages": self.messages, "stream": False}

    def process(self, body: dict[str, Any], ctx: Context) -> Awaitable[Completion | ChunkStream]:
        """The node's call for this request (the orchestrator runs it as the node's)."""
        return self.llm.whole(body, self, ctx)

    def chat(self) -> ChatRequest:
        """The request in full, as the general path reads it."""
        return openai_wire.request_from(self.obj).with_model(self.model)

    def read(self, raw: bytes, request: Any) -> Completion:
        """The upstream's whole answer: written at once when it is plain text (kept in
        :attr:`answer`), else read by the codec for the general encoder."""
        try:
            obj = _json.loads(raw)
            choice = obj["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
            usage = obj.get("usage")
            finish = choice.get("finish_reason") or "stop"
            plain = not (
                type(text) is not str
                or message.get("reasoning_content")
                or message.get("reasoning")
                or message.get("tool_calls")
                or choice.get("logprobs")
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            plain = False
        if plain and isinstance(usage, dict):
            prompt = usage.get("prompt_tokens") or 0
            completion = usage.get("completion_tokens") or 0
            plain = type(prompt) is int and type(completion) is int
        if not plain:
            return self.codec.completion(raw, self.chat())
        counts = None
        tail = b"}"
        if isinstance(usage, dict):
            counts = Usage(prompt, completion)
            tail = b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}' % (
                prompt,
                completion,
                prompt + completion,
            )
        self.answer = b"".join(
            (
                b'{"id":%b,"object":"chat.completion","created":%d,"model":%b,'
                % (
                    _json.dumps(self.id),
                    self.created,
                    _json.dumps(self.model),
                ),
                b'"choices":[{"index":0,"message":{"role":"assistant","content":',
                _json.dumps(text),
                b'},"logprobs":null,"finish_reason":',
                _json.dumps(finish),
                b"}]",
                tail,
            )
        )
        return Completion(text, finish, counts, obj.get("model") or self.model)


class Whole:
    """A route's whole-answer path: its one LLM node, and the request check.

    Args:
        route: The route (OpenAI dialect).
        llm: Its pipeline's only node.

    Attributes:
        answered: Requests answered from the upstream's answer at once (the rest of
            the plain requests were answered by the general encoder: a retry's, the
            fallback's, or an answer with more than text).
        streamed: Plain streamed chats taken (their node call made, their streams
            written, as on the general path).
    """

    def __init__(self, route: Route, llm: RemoteLLM) -> None:
        self.route = route
        self.llm = llm
        self.codec = openai_wire.Upstream(llm.name)
        self.answered = 0
        self.streamed = 0

    @classmethod
    def of(cls, route: Route) -> Whole | None:
        """The route's path (looked up once, as its default model), None when it has none."""
        plan = route.whole
        if plan is UNSET:
            plan = route.whole = cls._find(route)
        return plan  # type: ignore[return-value]

    @classmethod
    def _find(cls, route: Route) -> Whole | None:
        orchestrator = route.orchestrator
        services = list(orchestrator.services.values())
        if route.dialect != "openai" or len(services) != 1:
            return None
        orchestrator.plan()
        llm = services[0]
        # A subclass may override ``process``; a node timeout is the orchestrator's timer.
        if type(llm) is not RemoteLLM or llm.api != "openai" or llm.timeout is not None:
            return None
        return cls(route, llm)

    def plain(self, obj: Any) -> Plain | None:
        """``obj`` (a parsed body) as a plain request, None when it is anything else."""
        if type(obj) is not dict or not obj.keys() <= _PLAIN:
            return None
        stream = obj.get("stream")
        if stream is not None and type(stream) is not bool:
            return None
        model = obj.get("model")
        if model is None or model == "":
            model = self.route.default_model() or self.llm.model
        if type(model) is not str or not model:
            return None
        messages = obj.get("messages")
        if type(messages) is not list or not messages:
            return None
        for item in messages:
            # Exactly a role and a text, in that order: the general path renders each
            # message as {"role", "content"}, so the client's object is the same bytes.
            if type(item) is not dict or len(item) != 2 or next(iter(item)) != "role":
                return None
            role = item["role"]
            if type(role) is not str or role not in ROLES or type(item.get("content")) is not str:
                return None
        return Plain(obj, model, messages, self.codec, self.llm, stream is True)

    def _context(self, exchange: Exchange[Any], plain: Plain, rid: str, observer: Any) -> Context:
        """The node call's context for ``plain`` (as the orchestrator's run makes it)."""
        headers = exchange.headers
        return Context(
            client=self.route.orchestrator.client,
            request_id=rid,
            headers=headers,
            deadline=deadline_from(headers),
            request=plain,
            observer=observer,
        )

    async def answer(self, exchange: Exchange[R], plain: Plain, rid: str) -> R:
        """Run the node's call for ``plain`` and answer (as :func:`serve_chat` would)."""
        llm = self.llm
        observer = exchange.observe(plain.model, False)
        ctx = self._context(exchange, plain, rid, observer)
        # The orchestrator's node call (record, errors, debug line), running the node's
        # ``whole`` in place of its ``process``.
        result = await self.route.orchestrator.call_node(llm, plain.body(), ctx, plain.process)
        if isinstance(result, Completion):
            completion = result
        else:  # a fallback node's text or stream
            completion = await collect(result)
        observer.completed(completion)
        body = plain.answer
        if body is not None:
            self.answered += 1
        else:  # a retry's, the fallback's or an answer that was not plain text
            encoder = ChatEncoder(plain.chat())
            encoder.id, encoder.created = plain.id, plain.created
            body = _json.dumps(encoder.completion(completion))
        return exchange.answer(
            Answer(200, body, {"Content-Type": "application/json", "X-Request-ID": rid})
        )

    def stream(self, exchange: Exchange[R], plain: Plain, rid: str) -> Awaitable[R]:
        """Run the node's call for the streamed ``plain`` and write its stream (as
        :func:`serve_chat` would; to await: the sink's coroutine, which awaits the node
        call first)."""
        observer = exchange.observe(plain.model, True)
        ctx = self._context(exchange, plain, rid, observer)
        encoder = ChatEncoder.plain(plain.model)  # before the run, as serve_chat makes it
        self.streamed += 1
        return stream_answer(
            exchange,
            self.route.orchestrator.call_node(self.llm, plain.body(), ctx, plain.process),
            encoder.chunk,
            encoder.verbatim,
            encoder.end,
            encoder.error,
            {
                "Content-Type": encoder.content_type,
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "X-Request-ID": rid,
            },
            observer,
            rid,
        )
