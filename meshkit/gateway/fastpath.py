"""The chat routes' own request chain, for the lean intake (:mod:`meshkit.gateway.intake`).

On aiohttp a chat request passes the app's middlewares (the observer's record, errors in
the caller's dialect, API keys, admission) before its handler. The lean intake runs the
same steps here, in the same order and with the same objects — the app's
:class:`~meshkit.observability.observer.Observer`, :class:`ApiKeys` and
:class:`Admission` — then the same chat code (:func:`~meshkit.gateway.dialect.chat_reply`: what
:func:`~meshkit.gateway.dialect.answer_chat` runs once it has the body, awaited by
the request's own coroutine): one coroutine per request instead of five nested ones,
and no aiohttp request object.

A :class:`Gate` is what an app built by meshkit leaves in itself for that intake: the
pieces above and its chat endpoints. An app without one (or whose middlewares or
response signals were changed after it was built) is served by aiohttp alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import structlog
from aiohttp import web

from ..errors import InternalError, MeshError, Unauthorized
from ..observability.observer import Observer
from ..observability.record import Labels, Record
from ..protocol import ollama as ollama_wire
from ..protocol import ollama_ndjson, openai_sse
from ..protocol import openai as openai_wire
from ..protocol.types import ChatRequest
from .admission import Admission
from .auth import ApiKeys
from .dialect import Encoder, ErrorBody, chat_reply, dialect_for, render, too_large
from .exchange import Exchange, Streaming, error_answer
from .route import Route

log = structlog.get_logger(__name__)


@attrs.frozen
class Endpoint:
    """One chat path: the route answering it and how its dialect reads and writes.

    Attributes:
        path: The path, as bytes (what the intake matches request lines against).
        route: The mounted route answering it.
        parse: Body → chat request.
        encoder: Chat request → the dialect's encoder.
        error_body: The dialect's error shape for the handler's refusals.
        outer: The dialect of refusals made before the handler (keys, admission, size),
            as aiohttp's error middleware picks it from the path.
        labels: The observer's labels of the path.
    """

    path: bytes
    route: Route
    parse: Callable[[bytes], ChatRequest]
    encoder: Callable[[ChatRequest], Encoder]
    error_body: ErrorBody
    outer: str
    labels: Labels


_CHATS: dict[str, tuple[tuple[str, Any, Any, ErrorBody], ...]] = {
    "openai": (
        (
            "/v1/chat/completions",
            openai_wire.parse_request,
            openai_sse.ChatEncoder,
            openai_sse.error_body,
        ),
    ),
    "ollama": (
        ("/api/chat", ollama_wire.parse_chat, ollama_ndjson.ChatEncoder, ollama_ndjson.error_body),
        (
            "/api/generate",
            ollama_wire.parse_generate,
            ollama_ndjson.GenerateEncoder,
            ollama_ndjson.error_body,
        ),
    ),
}


@attrs.frozen
class Gate:
    """What the lean intake needs of an app meshkit built (kept in the app as :data:`GATE`).

    Attributes:
        observer: The app's observer.
        routes: The mounted routes.
        chat_paths: Further paths answering a route's chat endpoint (``App.mount(chat_path=)``).
        max_body: Largest request body.
        streaming: How streams are written.
        keys: The API keys (None: auth off).
        admission: The admission bound (None: none).
        middlewares: The app's middlewares as built: any other list means the app was
            changed, and aiohttp serves it alone.
    """

    observer: Observer
    routes: Sequence[Route]
    chat_paths: Sequence[tuple[str, Route]]
    max_body: int
    streaming: Streaming
    keys: ApiKeys | None
    admission: Admission | None
    middlewares: tuple[Any, ...]

    def fits(self, app: web.Application) -> bool:
        """Whether ``app`` is still as built (same middlewares, no response signals)."""
        return tuple(app.middlewares) == self.middlewares and not len(app.on_response_prepare)

    def endpoints(self) -> dict[bytes, Endpoint]:
        """Every chat path the lean intake answers, by path."""
        table: dict[bytes, Endpoint] = {}

        def add(path: str, route: Route, chat: tuple[str, Any, Any, ErrorBody]) -> None:
            key = path.encode("utf-8")
            if key in table:  # aiohttp refuses a second POST on one path: the first wins
                return
            table[key] = Endpoint(
                key,
                route,
                chat[1],
                chat[2],
                chat[3],
                dialect_for(path, self.routes),
                self.observer.labels_for(path),
            )

        for route in self.routes:
            for chat in _CHATS[route.dialect]:
                add(route.prefix + chat[0], route, chat)
        for path, route in self.chat_paths:
            add(path, route, _CHATS[route.dialect][0])
        return table


#: Where an app keeps its gate.
GATE = web.AppKey("meshkit.gate", Gate)


class Call(Exchange[int], Protocol):
    """A chat request the lean intake received (it answers with a status code)."""

    rid: str
    record: Record | None
    code: str | None

    @property
    def method(self) -> str: ...

    def received(self) -> bytes:
        """The whole body, read before the request's task starts.

        Raises:
            BodyTooLarge: It passed the gate's limit.
        """

    def served(self, left: bool) -> None:
        """The request is over (its record finishes just after); its connection reads
        on (``left``: the caller left or the server stops: it is being closed)."""


class BodyTooLarge(Exception):
    """The lean intake's request body passed the gate's limit (answered as a 413)."""


async def serve(gate: Gate, endpoint: Endpoint, call: Call) -> None:
    """Answer ``call`` as aiohttp's middlewares and the chat handler would: the record,
    keys, admission, the handler; a refusal or a crash in the route's dialects (one
    coroutine for what aiohttp runs as a chain of them, and the request's task itself:
    it ends by handing the connection back with :meth:`Call.served`)."""
    observer = gate.observer
    record = call.record = Record(observer, endpoint.labels, call.rid, call.headers, call.method)
    gauge = None if observer.metrics is None else observer.metrics.in_flight
    key = endpoint.labels.pipeline_key
    if gauge is not None:
        gauge.inc(key)
    status = 500
    left = True
    try:
        try:
            keys = gate.keys
            if keys is not None and not keys.accepts(call.headers.get("Authorization")):
                raise Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")
            admission = gate.admission
            if admission is not None:
                refusal = admission.refusal()
                if refusal is not None:
                    raise refusal
                admission.enter()
            try:
                try:
                    body = call.received()
                except BodyTooLarge:
                    raise too_large(gate.max_body) from None
                # The chat's answer awaited here: no coroutine of answer_chat's own.
                try:
                    status = await chat_reply(
                        call, body, call.rid, endpoint.route, endpoint.parse, endpoint.encoder
                    )
                except MeshError as err:  # the handler's refusal, in the route's dialect
                    status = call.answer(error_answer(endpoint.error_body(err), err))
            finally:
                if admission is not None:
                    admission.leave()
        except MeshError as err:
            status = call.answer(render(err, endpoint.outer))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("meshkit.gateway.crashed", path=endpoint.path.decode("utf-8"))
            crash = InternalError("internal error in the gateway")
            status = call.answer(render(crash, endpoint.outer))
        code = call.code if status >= 400 else None
        if code is not None and record.error is None:
            record.error = code
        left = False
    except asyncio.CancelledError:
        # The caller left: 499 (as nginx logs it) unless the answer had begun.
        record.left = True
        status = 200 if record.prepared else 499
        raise
    finally:
        if gauge is not None:
            gauge.dec(key)
        # After the answer was handed to the connection, as on aiohttp. (Finishing it
        # in this step instead measured 7 % more CPU per request at c32: the records
        # of one turn of the loop are better finished together.)
        asyncio.get_running_loop().call_soon(record.finish, status)
        call.served(left)
