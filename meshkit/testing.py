"""Test helpers for meshkit pipelines: a scriptable fake LLM server.

:class:`FakeLLM` is a real aiohttp server speaking the OpenAI chat API (and Ollama's
native ``/api/chat``) with scripted tokens and faults, so a pipeline can be tested
end to end without a model::

    fake = FakeLLM(tokens=["The", " sky"], delay=0.01)
    async with fake.serve() as url:
        ...  # point a RemoteLLM or services.yaml at `url`
    assert fake.requests[0]["model"] == "llama3.2:1b"

Faults, one attribute each (combine them freely; change them between requests). A
non-streamed answer honours them too: a drop closes the connection before the answer,
a stall holds it, a malformed or error fault sends a bad body instead.

=====================  =====================================================================
``first_delay``        seconds before the first token (or the whole non-streamed answer)
``delay``              seconds between tokens: a slow trickle
``status``             answer every chat request with this HTTP status (429, 500, 503, ...)
``retry_after``        with ``status``: send ``Retry-After`` with this many seconds
``fail_times``         with ``status``: fail only the first N chat requests, then answer
``drop_after``         close the connection abruptly after N tokens (0: before any)
``stall_after``        after N tokens, stop sending (connection open) until :meth:`release`
``error_after``        after N tokens, send an in-stream error event and end the stream
``malformed_after``    after N tokens, send a line that is not valid SSE JSON / NDJSON
``hold_last``          keep the last token until :meth:`release`
=====================  =====================================================================

Besides text it scripts what agent and reasoning models send, in both APIs:

=====================  =====================================================================
``reasoning``          reasoning pieces streamed before the text (OpenAI ``reasoning_content``
                       or ``reasoning_field``; Ollama ``message.thinking``)
``tool_calls``         calls (``{"id", "name", "arguments"}``) streamed after the text: OpenAI
                       fragments (``tool_pieces`` argument pieces each), Ollama one record
logprobs               sent with each text piece whenever the request asks for ``logprobs``
=====================  =====================================================================

Faults count every streamed piece (reasoning, text, tool-call fragments) in order, so
``error_after`` can break a stream in the middle of a tool call.

:meth:`crash` cuts every open connection at once, as a killed replica would.

Every request is recorded as it arrived (``requests``, ``headers``), so a test asserts
exactly what reached the upstream; so are the answers
finished (``completed``) or abandoned by the client (``cancelled``), and the requests
being answered right now (``in_flight``). ``python -m meshkit.testing --port 8000``
serves one from the command line (for Compose files or other hosts).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
from aiohttp import web

from .gateway.intake_serve import IntakeRunner
from .testing_wire import Script

Send = Callable[[bytes], Awaitable[None]]


@asynccontextmanager
async def serve_app(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0: a free port) until the block ends; yield its
    base URL. Handlers are cancelled when their client leaves, and an app meshkit built
    has its chat endpoints read by the lean intake, as in ``meshkit serve``."""
    runner = IntakeRunner(app, handler_cancellation=True)
    await runner.setup()
    try:
        site = runner.site(host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


@attrs.define
class FakeLLM:
    """A scripted LLM server speaking the OpenAI chat API and Ollama's ``/api/chat``.

    Attributes:
        tokens: Pieces of text streamed in order, one event each.
        reasoning: Pieces of reasoning streamed before the text.
        reasoning_field: The OpenAI delta field reasoning goes in.
        tool_calls: Whole calls (``id``, ``name``, ``arguments`` JSON text) streamed
            after the text; the answer then finishes with ``tool_calls``.
        tool_pieces: Into how many fragments each call's arguments are cut (OpenAI).
        delay: Seconds between tokens (a slow trickle).
        first_delay: Seconds before the first token (or the whole non-streamed answer).
        status: If set, chat requests are answered with this HTTP status.
        retry_after: ``Retry-After`` seconds sent with ``status``.
        fail_times: Fail only this many chat requests with ``status`` (None: all).
        drop_after: Close the connection abruptly after this many tokens.
        stall_after: Stop sending after this many tokens until :meth:`release`.
        error_after: Send an in-stream error event after this many tokens.
        malformed_after: Send a malformed event after this many tokens.
        hold_last: Wait for :meth:`release` before sending the last token.
        model_names: What ``/v1/models`` and ``/api/tags`` list.
        requests: Bodies of the chat requests received, in order.
        headers: Headers of the chat requests received, in order.
        sent: Per request, the monotonic time each token was written.
        cancelled: Set when a client went away before its answer was complete.
        url: Base URL while :meth:`serve` runs.
        completed: Count of answers delivered in full.
        in_flight: Chat requests being answered now.
    """

    tokens: Sequence[str] = ("The", " sky", " appears", " blue", ".")
    delay: float = 0.0
    first_delay: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    fail_times: int | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    error_after: int | None = None
    malformed_after: int | None = None
    hold_last: bool = False
    reasoning: Sequence[str] = ()
    reasoning_field: str = "reasoning_content"
    tool_calls: Sequence[Mapping[str, str]] = ()
    tool_pieces: int = 3
    model_names: Sequence[str] = ("llama3.2:1b",)
    requests: list[dict[str, Any]] = attrs.field(factory=list)
    headers: list[dict[str, str]] = attrs.field(factory=list)
    sent: list[list[float]] = attrs.field(factory=list)
    cancelled: asyncio.Event = attrs.field(factory=asyncio.Event)
    completed: int = 0
    in_flight: int = 0
    url: str = ""
    _failed: int = 0
    _lengths: list[int] = attrs.field(factory=list)
    _release: asyncio.Event = attrs.field(factory=asyncio.Event)
    _transports: set[asyncio.BaseTransport] = attrs.field(factory=set)

    def release(self) -> None:
        """Let held last tokens and stalled streams go."""
        self._release.set()

    def crash(self) -> None:
        """Die like a killed process: cut every open connection at once, mid-answer.

        The listening socket stays until :meth:`serve` ends; stop it there (or give a
        port nobody listens on) to refuse new connections too.
        """
        for transport in list(self._transports):
            transport.close()
        self._transports.clear()

    @property
    def finished(self) -> bool:
        """Whether the last token of the latest stream has left the server."""
        return bool(self.sent) and len(self.sent[-1]) == self._lengths[-1]

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
        async with serve_app(self.app(), host, port) as url:
            self.url = url
            yield url

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                    for m in self.model_names
                ],
            }
        )

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m} for m in self.model_names]})

    async def _fault(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        if request.transport is not None:
            self._transports.add(request.transport)
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.status is not None and (self.fail_times is None or self._failed < self.fail_times):
            self._failed += 1
            headers = {}
            if self.retry_after is not None:
                headers["Retry-After"] = f"{self.retry_after:g}"
            return body, web.json_response(
                {"error": {"message": f"scripted failure {self.status}", "type": "fake"}},
                status=self.status,
                headers=headers,
            )
        model = body.get("model")
        if model and model not in self.model_names:
            return body, web.json_response(
                {"error": {"message": f"model '{model}' not found", "type": "not_found"}},
                status=404,
            )
        return body, None

    async def _pace(self, index: int, count: int) -> None:
        if index == 0 and self.first_delay:
            await asyncio.sleep(self.first_delay)
        elif index and self.delay:
            await asyncio.sleep(self.delay)
        if self.hold_last and index == count - 1:
            await self._release.wait()

    def _answer(self, body: Mapping[str, Any]) -> Script:
        return Script(
            body,
            body.get("model") or self.model_names[0],
            self.tokens,
            self.reasoning,
            self.reasoning_field,
            self.tool_calls,
            self.tool_pieces,
        )

    async def _script(
        self,
        request: web.Request,
        write: Send,
        steps: Sequence[bytes],
        error: bytes,
        malformed: bytes,
    ) -> bool:
        """Send the pieces with the scripted faults; True when all were sent."""
        times: list[float] = []
        self.sent.append(times)
        self._lengths.append(len(steps))
        for i, piece in enumerate(steps):
            await self._pace(i, len(steps))
            if self.drop_after is not None and i == self.drop_after:
                assert request.transport is not None
                request.transport.close()
                return False
            if self.stall_after is not None and i == self.stall_after:
                await self._release.wait()
            if self.error_after is not None and i == self.error_after:
                await write(error)
                return False
            if self.malformed_after is not None and i == self.malformed_after:
                await write(malformed)
                return False
            await write(piece)
            times.append(time.monotonic())
        return True

    async def _whole(self, request: web.Request) -> bytes | None:
        """Faults of a non-streamed answer: None to answer normally, else what to send
        instead (b"" when the connection was dropped)."""
        await self._pace(0, 1)
        if self.drop_after is not None:
            assert request.transport is not None
            request.transport.close()
            return b""
        if self.stall_after is not None:
            await self._release.wait()
        if self.malformed_after is not None:
            return b"{not json"
        if self.error_after is not None:
            return b'{"error": "scripted failure"}'
        return None

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._fault(request)
        if failure is not None:
            return failure
        answer = self._answer(body)
        rid = "chatcmpl-" + uuid.uuid4().hex[:12]
        if not body.get("stream"):
            instead = await self._whole(request)
            if instead is not None:
                return web.Response(body=instead, content_type="application/json")
            self.completed += 1
            return web.json_response(answer.openai_whole(rid, int(time.time())))

        async def send(response: web.StreamResponse) -> None:
            done = await self._script(
                request,
                response.write,
                answer.openai_steps(rid),
                b'data: {"error": {"message": "scripted failure"}}\n\n',
                b"data: {not json\n\n",
            )
            if done:
                await response.write(answer.openai_end(rid))
                self.completed += 1

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await self._guard(send(response))
        return response

    async def _ollama(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._fault(request)
        if failure is not None:
            retry = {k: v for k, v in failure.headers.items() if k == "Retry-After"}
            return web.json_response(
                {"error": f"scripted failure {failure.status}"},
                status=failure.status,
                headers=retry,
            )
        answer = self._answer(body)
        if body.get("stream") is False:
            instead = await self._whole(request)
            if instead is not None:
                return web.Response(body=instead, content_type="application/json")
            self.completed += 1
            return web.json_response(answer.ollama_whole())

        async def send(response: web.StreamResponse) -> None:
            done = await self._script(
                request,
                response.write,
                answer.ollama_steps(),
                b'{"error": "scripted failure"}\n',
                b"{not json\n",
            )
            if done:
                await response.write(answer.ollama_end())
                self.completed += 1

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await self._guard(send(response))
        return response

    async def _guard(self, sending: Awaitable[None]) -> None:
        """Run a send loop, noting when the client leaves before the end."""
        self.in_flight += 1
        try:
            await sending
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise
        finally:
            self.in_flight -= 1


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a :class:`FakeLLM` until interrupted (``python -m meshkit.testing``)."""
    parser = argparse.ArgumentParser(
        prog="python -m meshkit.testing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--tokens",
        default="The, sky, appears, blue, .",
        help="comma-separated tokens (spaces kept after the comma)",
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--first-delay", type=float, default=0.0)
    parser.add_argument("--model", action="append", dest="models")
    args = parser.parse_args(argv)
    tokens = [t if i == 0 else " " + t.lstrip() for i, t in enumerate(args.tokens.split(","))]
    fake = FakeLLM(
        tokens=tokens,
        delay=args.delay,
        first_delay=args.first_delay,
        model_names=tuple(args.models or ("llama3.2:1b",)),
    )

    async def run() -> None:
        async with fake.serve(args.host, args.port) as url:
            print(f"fake LLM on {url}", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":  # pragma: no cover
    main()
