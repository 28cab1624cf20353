"""What every dialect shares: running a chat through a pipeline and writing the answer.

A dialect supplies a parser (body → :class:`ChatRequest`) and an encoder (chunks →
bytes); :func:`answer_chat` and :func:`serve_chat` do the rest: status before the first
byte, a whole answer as JSON, or a stream written by its
:class:`~meshkit.gateway.sink.Sink` (spliced or pulled, a final error event when the
stream breaks, the pipeline's stream closed — cancelling the upstream call — however
the response ends). They run on an :class:`~meshkit.gateway.exchange.Exchange`, so the
same code answers on aiohttp and on the lean intake.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import structlog
from aiohttp import web

from ..client.deadline import deadline_from
from ..errors import MeshError, PayloadTooLarge
from ..graph.orchestrator import ServiceOrchestrator
from ..nodes.base import Context
from ..nodes.probe import RequestObserver
from ..protocol import ollama_ndjson, openai_sse
from ..protocol import openai as openai_wire
from ..protocol.fields import parse_object
from ..protocol.streams import collect
from ..protocol.types import ChatRequest, Chunk, Completion
from ..protocol.wire import new_id
from .exchange import Answer, Exchange, error_answer, json_answer
from .route import Route
from .sink import stream_answer
from .web_exchange import RequestExchange, to_response
from .whole import Whole

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
R = TypeVar("R")

#: Where a request keeps its id once chosen.
REQUEST_ID = web.RequestKey("meshkit.request_id", str)


class Encoder(Protocol):
    """Turns one answer into a dialect's bytes."""

    content_type: str

    def chunk(self, chunk: Chunk) -> bytes | None: ...

    def verbatim(self) -> str | None: ...

    def end(self) -> bytes: ...

    def error(self, err: MeshError) -> bytes: ...

    def completion(self, completion: Completion) -> dict[str, Any]: ...


class Dialect(Protocol):
    """How one API family reads requests and renders answers and errors."""

    name: str

    def error_response(self, err: MeshError) -> web.Response: ...


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-ID`` when sane, else a fresh one (once per request)."""
    if REQUEST_ID in request:
        return request[REQUEST_ID]
    return assign_request_id(request)


def assign_request_id(request: web.Request) -> str:
    """:func:`request_id` for the first middleware, which knows none was chosen yet
    (a look-up that misses raises a KeyError inside aiohttp's mapping: ~1 µs)."""
    given = request[REQUEST_ID] = choose_request_id(request.headers)
    return given


def choose_request_id(headers: Mapping[str, str]) -> str:
    """The caller's ``X-Request-ID`` when sane (printable, 1 to 128 characters), else a new id."""
    given = headers.get("X-Request-ID", "")
    if not (0 < len(given) <= 128 and given.isprintable()):
        given = new_id()
    return given


class Prefixed(Protocol):
    """What :func:`dialect_for` reads of a route."""

    @property
    def dialect(self) -> str: ...
    @property
    def prefix(self) -> str: ...


def dialect_for(path: str, routes: Iterable[Prefixed]) -> str:
    """Which dialect's error shape fits a refusal before any handler ran on ``path``
    (a path under an Ollama route's ``/api/``: Ollama's; any other: OpenAI's)."""
    for route in routes:
        if route.dialect == "ollama" and path.startswith(route.prefix + "/api/"):
            return "ollama"
    return "openai"


def render(err: MeshError, dialect: str) -> Answer:
    """``err`` in ``dialect``'s error shape."""
    body = ollama_ndjson.error_body(err) if dialect == "ollama" else openai_sse.error_body(err)
    return error_answer(body, err)


def _size(n: int) -> str:
    """A byte count as people read it (``8 MiB``)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit} ({n} bytes)"
    return f"{n} bytes"


def too_large(limit: int) -> PayloadTooLarge:
    """The refusal of a body over ``limit`` bytes."""
    return PayloadTooLarge(f"request body is larger than the gateway's limit of {_size(limit)}")


def json_response(obj: Any, *, status: int = 200, rid: str | None = None) -> web.Response:
    """A JSON response serialised with meshkit's fast encoder."""
    return to_response(json_answer(obj, status=status, rid=rid))


def error_json(body: Any, err: MeshError) -> web.Response:
    """An error body as a response, with the headers its error asks for
    (``Retry-After`` when it says when to come back, ``WWW-Authenticate`` on 401)."""
    return to_response(error_answer(body, err))


#: A dialect's error body for an error.
ErrorBody = Callable[[MeshError], Any]


def chat_handler(
    route: Route,
    parse: Callable[[bytes], ChatRequest],
    make_encoder: Callable[[ChatRequest], Encoder],
    error_body: ErrorBody,
) -> Handler:
    """An aiohttp handler answering one chat endpoint from ``route``'s pipeline."""

    async def chat(request: web.Request) -> web.StreamResponse:
        exchange = RequestExchange(request)
        return await answer_chat(
            exchange, request_id(request), route, parse, make_encoder, error_body
        )

    return chat


async def answer_chat(
    exchange: Exchange[R],
    rid: str,
    route: Route,
    parse: Callable[[bytes], ChatRequest],
    make_encoder: Callable[[ChatRequest], Encoder],
    error_body: ErrorBody,
) -> R:
    """Read, check and answer one chat request; a refusal in the route's dialect."""
    try:
        body = await exchange.body()
        return await chat_reply(exchange, body, rid, route, parse, make_encoder)
    except MeshError as err:
        return exchange.answer(error_answer(error_body(err), err))


def chat_reply(
    exchange: Exchange[R],
    body: bytes,
    rid: str,
    route: Route,
    parse: Callable[[bytes], ChatRequest],
    make_encoder: Callable[[ChatRequest], Encoder],
) -> Awaitable[R]:
    """Check the chat request ``body`` and start its answer, to await: what
    :func:`answer_chat` does once the body is read, with no coroutine of its own (the
    lean intake has the body before its request's task starts).

    Raises:
        MeshError: The request is refused (here, or when the answer is awaited), for
            the caller to answer in the route's dialect.
    """
    whole = Whole.of(route) if parse is openai_wire.parse_request else None
    if whole is None:
        parsed = parse(body)
    else:
        obj = parse_object(body)
        plain = whole.plain(obj)
        if plain is not None:  # a plain chat: the route's plain path
            if plain.stream:
                return whole.stream(exchange, plain, rid)
            return whole.answer(exchange, plain, rid)
        parsed = openai_wire.request_from(obj)
    parsed = parsed.with_model(route.default_model())
    return serve_chat(exchange, route.orchestrator, parsed, make_encoder, rid)


def serve_chat(
    exchange: Exchange[R],
    orchestrator: ServiceOrchestrator,
    chat: ChatRequest,
    make_encoder: Callable[[ChatRequest], Encoder],
    rid: str,
) -> Awaitable[R]:
    """Run ``chat`` through ``orchestrator`` and answer in the encoder's dialect (to
    await: a stream is the sink's coroutine, with no layer of this function's)."""
    observer = exchange.observe(chat.model, chat.stream)
    headers = exchange.headers
    ctx = Context(
        client=orchestrator.client,
        request_id=rid,
        headers=headers,
        deadline=deadline_from(headers),
        request=chat,
        observer=observer,
    )
    encoder = make_encoder(chat)  # before the run, so durations count from the request
    if not chat.stream:
        return _answer_whole(exchange, orchestrator.run(chat, ctx), encoder, observer, rid)
    stream_headers = {
        "Content-Type": encoder.content_type,
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "X-Request-ID": rid,
    }
    return stream_answer(
        exchange,
        orchestrator.run(chat, ctx),
        encoder.chunk,
        encoder.verbatim,
        encoder.end,
        encoder.error,
        stream_headers,
        observer,
        rid,
    )


async def _answer_whole(
    exchange: Exchange[R],
    call: Awaitable[Any],
    encoder: Encoder,
    observer: RequestObserver,
    rid: str,
) -> R:
    """Answer the pipeline's ``call`` with one JSON body."""
    result = await call
    # An LLM answers a whole Completion: no coroutine to collect it.
    completion = result if isinstance(result, Completion) else await collect(result)
    observer.completed(completion)
    return exchange.answer(json_answer(encoder.completion(completion), rid=rid))


def now_ns() -> int:
    """Monotonic nanoseconds, for the duration fields Ollama clients read."""
    return time.perf_counter_ns()
