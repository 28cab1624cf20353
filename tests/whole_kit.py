"""What the plain-path tests share (``test_whole.py``, ``test_whole_stream.py``).

Two gateways front one scripted upstream: ``fast``, a route on a :class:`RemoteLLM`
(which has the plain path), and ``general``, a route on :class:`GeneralLLM` (which keeps
the general one). The upstream answers by the request id (``request|shape``) and keeps
what came; what differs between the two modules is the data: the request bodies, the
upstream's answers or streams, and how a caller's answer is compared.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Self, TypeVar

import aiohttp
import attrs
from aiohttp import web
from aiohttp.test_utils import TestServer

from meshkit import App
from meshkit.client.retry import RetryPolicy
from meshkit.nodes.base import Context, MicroService
from meshkit.nodes.llm import RemoteLLM

from .conftest import SERVER_KWARGS, LeanTestServer
from .test_metrics import parse

MODEL = "llama3.2:1b"
USER = {"role": "user", "content": "hi"}
#: The intakes the ``gateways`` fixtures serve through.
INTAKES = ["lean", "aiohttp"]

R = TypeVar("R")


class GeneralLLM(RemoteLLM):
    """A RemoteLLM subclass: the route takes the general path (a subclass may override
    ``process``, so the whole-answer path leaves it alone)."""


class Canned(MicroService):
    """A fallback node answering with fixed text (not a Completion)."""

    async def process(self, data: Any, ctx: Context) -> str:
        return "canned answer"


@attrs.define
class ScriptedUpstream:
    """The scripted upstream's bookkeeping: what came, and which request ids are refused
    with a retryable 503 (once, or always). A subclass answers in :meth:`chat`."""

    url: str = ""
    received: list[tuple[str, bytes, dict[str, str]]] = attrs.field(factory=list)
    fail_first: set[str] = attrs.field(factory=set)
    fail_always: set[str] = attrs.field(factory=set)

    def kept(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The request's headers kept with its body: meshkit's own ``X-`` ones."""
        return {k: v for k, v in headers.items() if k.lower().startswith("x-")}

    async def arrived(self, request: web.Request) -> tuple[str, web.Response | None]:
        """Keep the request; its id, and the refusal to answer with if it is refused."""
        rid = request.headers["X-Request-ID"]
        body = await request.read()
        self.received.append((rid, body, self.kept(request.headers)))
        if rid in self.fail_first or rid in self.fail_always:  # a retryable failure
            self.fail_first.discard(rid)
            return rid, web.json_response({"error": "busy"}, status=503)
        return rid, None

    def calls(self) -> dict[str, list[tuple[bytes, dict[str, str]]]]:
        """What the upstream got (body and kept headers), by request id."""
        calls: dict[str, list[tuple[bytes, dict[str, str]]]] = {}
        for rid, body, kept in self.received:
            calls.setdefault(rid, []).append((body, kept))
        return calls

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL}]})

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[Self]:
        """Serve on a free port (``url`` set) until the block ends."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        server = TestServer(app)
        await server.start_server()
        self.url = str(server.make_url("")).rstrip("/")
        try:
            yield self
        finally:
            await server.close()


@contextlib.asynccontextmanager
async def serving(application: web.Application, intake: str = "lean") -> AsyncIterator[str]:
    """``application`` served on ``intake`` (``lean`` or ``aiohttp``); its URL."""
    server = (LeanTestServer if intake == "lean" else TestServer)(application, **SERVER_KWARGS)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def fast_and_general(
    upstream: str, intake: str
) -> AsyncIterator[dict[str, tuple[str, web.Application]]]:
    """``fast`` (a RemoteLLM route) and ``general`` (a GeneralLLM route) on ``intake``,
    both in front of ``upstream`` and falling back to a :class:`Canned` node: each one's
    URL and application."""
    made: dict[str, tuple[str, web.Application]] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name, kind in (("fast", RemoteLLM), ("general", GeneralLLM)):
            llm = kind(
                "llm",
                endpoint=upstream,
                model=MODEL,
                health_interval=0,
                retry=RetryPolicy(retries=1, base=0.01, jitter=0.01),
                fallback=Canned("canned"),
            )
            application = App().mount(llm).application()
            url = await stack.enter_async_context(serving(application, intake))
            made[name] = (url, application)
        yield made


@attrs.define
class Reply:
    """One answer as the caller got it; a module's subclass says what of it must be
    ``same()`` between the paths."""

    status: int
    headers: dict[str, str]
    body: bytes

    def kept_headers(self) -> dict[str, str]:
        """The headers that must be equal between the paths (all but date and length)."""
        return {k: v for k, v in self.headers.items() if k not in ("Date", "Content-Length")}


async def send(
    session: aiohttp.ClientSession, url: str, body: Any, rid: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` (JSON unless bytes) to the chat endpoint as request ``rid``: the
    answer's status, headers and body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(
        url + "/v1/chat/completions",
        data=data,
        headers={"Content-Type": "application/json", "X-Request-ID": rid, **headers},
    ) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def run_all(
    urls: dict[str, str],
    requests: dict[str, Any],
    shapes: Iterable[str],
    post: Callable[..., Awaitable[R]],
    **headers: str,
) -> dict[str, dict[tuple[str, str], R]]:
    """Every request shape with every upstream shape, through each gateway, by ``post``
    (as request ``request|shape``)."""
    replies: dict[str, dict[tuple[str, str], R]] = {name: {} for name in urls}
    async with aiohttp.ClientSession() as session:
        for req in requests:
            for shape in shapes:
                for name, url in urls.items():
                    reply = await post(session, url, requests[req], f"{req}|{shape}", **headers)
                    replies[name][req, shape] = reply
    return replies


def logged(captured: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The access lines among ``captured`` log lines, by request id."""
    logs: dict[str, list[dict[str, Any]]] = {}
    for line in captured:
        if line["event"] == "meshkit.request":
            logs.setdefault(line["request_id"], []).append(line)
    return logs


def counters(text: str) -> dict[Any, float]:
    """Every counter and histogram count of a ``/metrics`` page (no durations)."""
    return {
        key: v
        for key, v in parse(text).items()
        if not key[0].endswith(("_sum", "_bucket", "_created")) and "in_flight" not in key[0]
    }


async def assert_metrics_equal(
    upstream: str, requests: dict[str, Any], names: Iterable[str], shapes: Iterable[str]
) -> None:
    """A RemoteLLM gateway and a GeneralLLM one, each in front of ``upstream``, show the
    same counters (tokens among them) after every request of ``names`` was sent with
    every upstream shape."""
    sends = [(requests[req], f"{req}|{shape}") for req in names for shape in shapes]
    pages = []
    for kind in (RemoteLLM, GeneralLLM):
        app = App().mount(kind("llm", endpoint=upstream, model=MODEL, health_interval=0))
        async with serving(app.application()) as url, aiohttp.ClientSession() as session:
            for body, rid in sends:
                await send(session, url, body, rid)
            async with session.get(url + "/metrics") as resp:
                assert resp.status == 200
                pages.append(counters(await resp.text()))
    assert pages[0] == pages[1]
    assert any(k[0] == "meshkit_tokens_total" for k in pages[0])
