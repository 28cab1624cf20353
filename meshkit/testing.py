"""Test helpers for meshkit pipelines: a scriptable fake LLM server.

:class:`FakeLLM` is a real aiohttp server speaking the OpenAI chat API (and Ollama's
native ``/api/chat``) with scripted tokens and faults, so a pipeline can be tested
end to end without a model::

    fake = FakeLLM(tokens=["The", " sky"], delay=0.01)
    async with fake.serve() as url:
        ...  # point a RemoteLLM or services.yaml at `url`
    assert fake.requests[0]["model"] == "llama3.2:1b"

Faults: ``status`` answers an error before streaming; ``first_delay`` waits before the
first token; ``drop_after`` cuts the connection after N tokens; ``error_after`` sends an
error event after N tokens; ``hold_last`` keeps the last token until ``release()``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
from aiohttp import web


@attrs.define
class FakeLLM:
    """A scripted OpenAI-compatible LLM server, for tests.

    Attributes:
        tokens: Pieces of text streamed in order, one event each.
        delay: Seconds between tokens.
        first_delay: Seconds before the first token (or the whole non-streamed answer).
        status: If set, every chat request is answered with this HTTP status.
        drop_after: Close the connection abruptly after this many tokens.
        error_after: Send an in-stream error event after this many tokens.
        hold_last: Wait for :meth:`release` before sending the last token.
        model_names: What ``/v1/models`` and ``/api/tags`` list.
        requests: Bodies of the chat requests received, in order.
        sent: Per request, the monotonic time each token was written.
        cancelled: Set when a client went away before its answer was complete.
        url: Base URL while :meth:`serve` runs.
        completed: Count of answers delivered in full.
    """

    tokens: Sequence[str] = ("The", " sky", " appears", " blue", ".")
    delay: float = 0.0
    first_delay: float = 0.0
    status: int | None = None
    drop_after: int | None = None
    error_after: int | None = None
    hold_last: bool = False
    model_names: Sequence[str] = ("llama3.2:1b",)
    requests: list[dict[str, Any]] = attrs.field(factory=list)
    sent: list[list[float]] = attrs.field(factory=list)
    cancelled: asyncio.Event = attrs.field(factory=asyncio.Event)
    completed: int = 0
    url: str = ""
    _release: asyncio.Event = attrs.field(factory=asyncio.Event)

    def release(self) -> None:
        """Let held last tokens go."""
        self._release.set()

    @property
    def finished(self) -> bool:
        """Whether the last token of the latest stream has left the server."""
        return bool(self.sent) and len(self.sent[-1]) == len(self.tokens)

    def app(self) -> web.Application:
        """The aiohttp application (mount it with ``aiohttp_server`` or :meth:`serve`)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/api/chat", self._ollama)
        app.router.add_get("/api/tags", self._tags)
        return app

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run the server; yield its base URL (no ``/v1``)."""
        runner = web.AppRunner(self.app(), handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # noqa: SLF001
        bound = sockets[0].getsockname()[1] if sockets else port
        self.url = f"http://{host}:{bound}"
        try:
            yield self.url
        finally:
            await runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
            for m in self.model_names
        ]})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m} for m in self.model_names]})

    async def _fault(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        body = await request.json()
        self.requests.append(body)
        if self.status is not None:
            return body, web.json_response(
                {"error": {"message": f"scripted failure {self.status}", "type": "fake"}},
                status=self.status,
            )
        model = body.get("model")
        if model and model not in self.model_names:
            return body, web.json_response(
                {"error": {"message": f"model '{model}' not found", "type": "not_found"}},
                status=404,
            )
        return body, None

    async def _pace(self, index: int) -> None:
        if index == 0 and self.first_delay:
            await asyncio.sleep(self.first_delay)
        elif index and self.delay:
            await asyncio.sleep(self.delay)
        if self.hold_last and index == len(self.tokens) - 1:
            await self._release.wait()

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._fault(request)
        if failure is not None:
            return failure
        model = body.get("model") or self.model_names[0]
        rid = "chatcmpl-" + uuid.uuid4().hex[:12]
        if not body.get("stream"):
            await self._pace(0)
            self.completed += 1
            return web.json_response({
                "id": rid, "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(self.tokens)}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": len(self.tokens),
                          "total_tokens": 3 + len(self.tokens)},
            })

        def event(delta: dict[str, Any], finish: str | None) -> bytes:
            return b"data: " + json.dumps({
                "id": rid, "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }).encode() + b"\n\n"

        async def send(response: web.StreamResponse) -> None:
            await response.write(event({"role": "assistant", "content": ""}, None))
            for i, token in enumerate(self.tokens):
                await self._pace(i)
                if self.drop_after is not None and i == self.drop_after:
                    assert request.transport is not None
                    request.transport.close()
                    return
                if self.error_after is not None and i == self.error_after:
                    await response.write(b'data: {"error": {"message": "scripted failure"}}\n\n')
                    return
                await response.write(event({"content": token}, None))
                times.append(time.monotonic())
            await response.write(event({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(b"data: " + json.dumps({
                    "id": rid, "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [], "usage": {"prompt_tokens": 3,
                                             "completion_tokens": len(self.tokens),
                                             "total_tokens": 3 + len(self.tokens)},
                }).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            self.completed += 1

        times: list[float] = []
        self.sent.append(times)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await self._guard(send(response))
        return response

    async def _ollama(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._fault(request)
        if failure is not None:
            return web.json_response({"error": f"scripted failure {failure.status}"},
                                     status=failure.status)
        model = body.get("model") or self.model_names[0]

        def line(content: str, done: bool) -> bytes:
            obj: dict[str, Any] = {"model": model, "created_at": "2026-01-01T00:00:00Z",
                                   "message": {"role": "assistant", "content": content},
                                   "done": done}
            if done:
                obj.update(done_reason="stop", prompt_eval_count=3, eval_count=len(self.tokens))
            return json.dumps(obj).encode() + b"\n"

        if body.get("stream") is False:
            await self._pace(0)
            self.completed += 1
            return web.Response(body=line("".join(self.tokens), True),
                                content_type="application/json")

        async def send(response: web.StreamResponse) -> None:
            for i, token in enumerate(self.tokens):
                await self._pace(i)
                if self.drop_after is not None and i == self.drop_after:
                    assert request.transport is not None
                    request.transport.close()
                    return
                await response.write(line(token, False))
                times.append(time.monotonic())
            await response.write(line("", True))
            self.completed += 1

        times: list[float] = []
        self.sent.append(times)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await self._guard(send(response))
        return response

    async def _guard(self, sending: Any) -> None:
        """Run a send loop, noting when the client leaves before the end."""
        try:
            await sending
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise
