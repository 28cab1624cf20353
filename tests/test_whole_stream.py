"""The plain path's streamed side: a plain streamed OpenAI chat on a one-LLM route is
answered exactly as the general path answers it.

As in ``test_whole.py``, two gateways front one scripted upstream: a route on a
:class:`RemoteLLM` (which has the plain path) and one on a subclass of it (which keeps
the general path). Every streamed request shape is sent to both with every upstream
stream shape; status, headers, the events (meshkit's own answer ids and clocks checked
apart), what the upstream received, the access lines and the metrics must be the same.
:attr:`Whole.streamed` shows the plain path was taken where it should be.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from meshkit import App
from meshkit.client.retry import RetryPolicy
from meshkit.gateway.fastpath import GATE
from meshkit.gateway.whole import Whole
from meshkit.nodes.llm import RemoteLLM
from meshkit.testing import FakeLLM

from .conftest import SERVER_KWARGS, LeanTestServer
from .test_whole import MODEL, USER, Canned, GeneralLLM, counters

#: Streamed request bodies: plain ones first, then every kind the general path takes.
REQUESTS: dict[str, Any] = {
    "plain": {"model": "m1", "messages": [USER], "stream": True},
    "no-model": {"messages": [USER], "stream": True},
    "empty-model": {"model": "", "messages": [USER], "stream": True},
    "turns": {
        "stream": True,
        "messages": [
            {"role": "system", "content": "be brief"},
            USER,
            {"role": "assistant", "content": 'hello "you" \u00e9\u4e2d'},
        ],
    },
    # Not plain: each must reach the upstream and the caller as on the general path.
    "include-usage": {
        "messages": [USER],
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    "keys-reversed": {"messages": [{"content": "hi", "role": "user"}], "stream": True},
    "temperature": {"messages": [USER], "stream": True, "temperature": 0.5},
    # Refused: the same error in OpenAI's shape from both.
    "stream-int": {"messages": [USER], "stream": 1},
    "bad-role": {"messages": [{"role": "robot", "content": "hi"}], "stream": True},
}
PLAIN_REQUESTS = ("plain", "no-model", "empty-model", "turns")

BASE = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "served"}
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def event(delta: dict[str, Any] | None = None, finish: str | None = None, **more: Any) -> bytes:
    """One upstream SSE event (a choice with ``delta`` unless ``choices`` is given)."""
    obj: dict[str, Any] = {**BASE, **more}
    if "choices" not in more:
        choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
        obj["choices"] = [choice]
    obj = {k: v for k, v in obj.items() if v is not None}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
TEXT = [
    event({"role": "assistant", "content": "Hel"}),
    event({"content": "lo "}),
    event({"content": 'the "re" \u00e9\U0001f600'}),
    event({}, "stop"),
    event(choices=[], usage=USAGE),
    DONE,
]

#: Upstream streams, each a list of writes.
STREAMS: dict[str, list[bytes]] = {
    "text": TEXT,
    "one-write": [b"".join(TEXT)],
    "split": [piece for ev in TEXT for piece in (ev[:9], ev[9:])],
    "role-apart": [
        event({"role": "assistant", "content": ""}),
        event({"content": "a"}),
        event({"content": "b"}),
        event({}, "length"),
        DONE,
    ],
    "no-id": [event({"role": "assistant", "content": "a"}, id=None), event({}, "stop"), DONE],
    "reasoning": [
        event({"role": "assistant", "reasoning_content": "2+2"}),
        event({"content": "4"}),
        event({}, "stop"),
        DONE,
    ],
    "tool-call": [
        event(
            {
                "role": "assistant",
                "tool_calls": [
                    {"index": 0, "id": "c1", "type": "function", "function": {"name": "f"}}
                ],
            }
        ),
        event({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        event({}, "tool_calls"),
        DONE,
    ],
    # Broken streams: an error event, an end without [DONE], no events at all (a failed
    # try: the fallback answers).
    "error-event": [TEXT[0], b'data: {"error": {"message": "overloaded"}}\n\n'],
    "no-done": TEXT[:2],
    "no-events": [b'{"id": "up-1", "choices": []}'],
}


@attrs.define
class Upstream:
    """The scripted upstream: streams by the request id's stream name, keeps what came."""

    url: str = ""
    received: list[tuple[str, bytes, dict[str, str]]] = attrs.field(factory=list)
    fail_first: set[str] = attrs.field(factory=set)
    fail_always: set[str] = attrs.field(factory=set)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rid = request.headers["X-Request-ID"]
        body = await request.read()
        kept = {k: v for k, v in request.headers.items() if k.lower().startswith("x-")}
        if "X-Meshkit-Deadline-Ms" in kept:  # (the budget left differs by a few ms)
            kept["X-Meshkit-Deadline-Ms"] = "set"
        self.received.append((rid, body, kept))
        if rid in self.fail_first or rid in self.fail_always:  # a retryable failure
            self.fail_first.discard(rid)
            return web.json_response({"error": "busy"}, status=503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in STREAMS[rid.split("|")[1]]:
            await response.write(piece)
            await asyncio.sleep(0)  # (each write its own read, mostly)
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL}]})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """The scripted upstream, served on a free port."""
    up = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.chat)
    app.router.add_get("/v1/models", up.models)
    server = TestServer(app)
    await server.start_server()
    up.url = str(server.make_url("")).rstrip("/")
    try:
        yield up
    finally:
        await server.close()


@pytest.fixture(params=["lean", "aiohttp"])
async def gateways(
    upstream: Upstream, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, tuple[str, web.Application]]]:
    """``fast`` (a RemoteLLM route) and ``general`` (a GeneralLLM route), on either intake;
    both fall back to a :class:`Canned` node."""
    made: dict[str, tuple[str, web.Application]] = {}
    servers = []
    serving = LeanTestServer if request.param == "lean" else TestServer
    for name, kind in (("fast", RemoteLLM), ("general", GeneralLLM)):
        llm = kind(
            "llm",
            endpoint=upstream.url,
            model=MODEL,
            health_interval=0,
            retry=RetryPolicy(retries=1, base=0.01, jitter=0.01),
            fallback=Canned("canned"),
        )
        application = App().mount(llm).application()
        server = serving(application, **SERVER_KWARGS)
        await server.start_server()
        servers.append(server)
        made[name] = (str(server.make_url("")).rstrip("/"), application)
    try:
        yield made
    finally:
        for server in servers:
            await server.close()


def whole_of(application: web.Application) -> Whole | None:
    """The plain path of the app's one route."""
    (route,) = application[GATE].routes
    return Whole.of(route)


def access(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The access lines, their durations only checked to be there or not."""
    return [
        {k: (v is None if k in ("duration_ms", "ttft_ms") else v) for k, v in e.items()}
        for e in lines
        if e["event"] == "meshkit.request"
    ]


_OWN_ID = re.compile(r"chatcmpl-[0-9a-f]{24}")


def events(body: bytes) -> list[Any]:
    """A stream's events, decoded; meshkit's own answer id and clock checked apart."""
    out: list[Any] = []
    for raw in body.split(b"\n\n"):
        if not raw:
            continue
        assert raw.startswith(b"data: "), body
        payload = raw[6:]
        try:
            obj = json.loads(payload)
        except ValueError:
            out.append(payload.decode())
            continue
        if isinstance(obj, dict) and _OWN_ID.fullmatch(str(obj.get("id"))):
            obj["id"] = "own"
            assert isinstance(obj.pop("created"), int)
        out.append(obj)
    return out


@attrs.define
class Reply:
    """One answer as the caller got it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def same(self) -> tuple[int, dict[str, str], Any]:
        """What must be equal between the paths."""
        headers = {k: v for k, v in self.headers.items() if k not in ("Date", "Content-Length")}
        if self.headers.get("Content-Type", "").startswith("text/event-stream"):
            return self.status, headers, events(self.body)
        return self.status, headers, json.loads(self.body)


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, rid: str, **headers: str
) -> Reply:
    """POST ``body`` to the chat endpoint as request ``rid``."""
    async with session.post(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Request-ID": rid, **headers},
    ) as resp:
        return Reply(resp.status, dict(resp.headers), await resp.read())


async def run_all(
    gateways: dict[str, tuple[str, web.Application]],
    rid: Callable[[str, str], str],
    **headers: str,
) -> dict[str, dict[tuple[str, str], Reply]]:
    """Every request shape with every stream shape, through each gateway."""
    replies: dict[str, dict[tuple[str, str], Reply]] = {"fast": {}, "general": {}}
    async with aiohttp.ClientSession() as session:
        for req in REQUESTS:
            for shape in STREAMS:
                for name, (url, _) in gateways.items():
                    reply = await post(session, url, REQUESTS[req], rid(req, shape), **headers)
                    replies[name][req, shape] = reply
    return replies


class TestSameStreams:
    """The same streamed requests through the plain and the general path."""

    @pytest.mark.parametrize("deadline", [None, "30000"])
    async def test_every_request_with_every_stream(
        self,
        gateways: dict[str, tuple[str, web.Application]],
        upstream: Upstream,
        deadline: str | None,
    ) -> None:
        """Equal status, headers, events, upstream request and access line for every pair."""
        headers = {} if deadline is None else {"X-Meshkit-Deadline-Ms": deadline}
        logs: dict[str, list[dict[str, Any]]] = {}
        with capture_logs() as captured:
            replies = await run_all(gateways, lambda req, shape: f"{req}|{shape}", **headers)
        for line in captured:
            if line["event"] == "meshkit.request":
                logs.setdefault(line["request_id"], []).append(line)
        for key, fast in replies["fast"].items():
            assert fast.same() == replies["general"][key].same(), key
        calls: dict[str, list[tuple[bytes, dict[str, str]]]] = {}
        for rid, body, kept in upstream.received:
            calls.setdefault(rid, []).append((body, kept))
        for rid, pair in calls.items():
            assert len(pair) == 2 and pair[0] == pair[1], rid
        for rid, lines in logs.items():
            assert len(lines) == 2 and access(lines[:1]) == access(lines[1:]), rid
        # The pairs cover streams relayed, rendered, broken and refused.
        plain = replies["fast"]["plain", "text"]
        assert plain.status == 200 and events(plain.body)[0]["id"] == "up-1"
        for name in ("fast", "general"):  # one own id, made once, on every event
            body = replies[name]["plain", "no-id"].body
            assert len(set(_OWN_ID.findall(body.decode()))) == 1, body
            assert events(body)[0]["id"] == "own"
        assert "error" in events(replies["fast"]["plain", "error-event"].body)[-1]
        # (no event: the tries fail before streaming, so the fallback answers)
        assert b"canned answer" in replies["fast"]["plain", "no-events"].body
        assert replies["fast"]["stream-int", "text"].status == 400
        # Only plain requests took the plain path (every node call returned: a stream,
        # or the fallback's answer).
        whole = whole_of(gateways["fast"][1])
        assert whole is not None and whole.streamed == len(PLAIN_REQUESTS) * len(STREAMS)
        assert whole_of(gateways["general"][1]) is None

    async def test_late_deadline(
        self, gateways: dict[str, tuple[str, web.Application]], upstream: Upstream
    ) -> None:
        """A budget already spent: no upstream call, the fallback's answer, from both."""
        replies = []
        late = {"X-Meshkit-Deadline-Ms": "0"}
        async with aiohttp.ClientSession() as session:
            for url, _ in gateways.values():
                replies.append(await post(session, url, REQUESTS["plain"], "plain|text", **late))
        assert replies[0].status == 200 and b"canned answer" in replies[0].body
        assert replies[0].same() == replies[1].same()
        assert upstream.received == []

    async def test_metrics_equal(self, upstream: Upstream) -> None:
        """The same counters (requests, streams, tokens, upstream calls, node runs)."""
        pages = []
        for kind in (RemoteLLM, GeneralLLM):
            app = App().mount(kind("llm", endpoint=upstream.url, model=MODEL, health_interval=0))
            server = LeanTestServer(app.application(), **SERVER_KWARGS)
            await server.start_server()
            try:
                url = str(server.make_url("")).rstrip("/")
                async with aiohttp.ClientSession() as session:
                    for req in ("plain", "turns", "include-usage", "stream-int"):
                        for shape in ("text", "tool-call", "error-event", "no-events"):
                            await post(session, url, REQUESTS[req], f"{req}|{shape}")
                    async with session.get(url + "/metrics") as resp:
                        assert resp.status == 200
                        pages.append(counters(await resp.text()))
            finally:
                await server.close()
        assert pages[0] == pages[1]
        assert any(k[0] == "meshkit_tokens_total" for k in pages[0])

    async def test_retry_after_a_failed_first_try(
        self, gateways: dict[str, tuple[str, web.Application]], upstream: Upstream
    ) -> None:
        """A first try refused with a 503 is retried; the retry's stream is the same."""
        replies = {}
        async with aiohttp.ClientSession() as session:
            for name, (url, _) in gateways.items():
                upstream.fail_first.add("plain|text")
                replies[name] = await post(session, url, REQUESTS["plain"], "plain|text")
        assert replies["fast"].status == 200
        assert replies["fast"].same() == replies["general"].same()
        tried = [body for _, body, _ in upstream.received]
        assert len(tried) == 4 and len(set(tried)) == 1

    async def test_fallback_after_failed_tries(
        self, gateways: dict[str, tuple[str, web.Application]], upstream: Upstream
    ) -> None:
        """Every try refused: the fallback node's text, streamed the same from both."""
        upstream.fail_always.add("plain|text")
        replies = {}
        async with aiohttp.ClientSession() as session:
            for name, (url, _) in gateways.items():
                replies[name] = await post(session, url, REQUESTS["plain"], "plain|text")
        assert replies["fast"].status == 200
        texts = [e["choices"][0]["delta"].get("content") for e in events(replies["fast"].body)[:-1]]
        assert "canned answer" in texts
        assert replies["fast"].same() == replies["general"].same()


class TestCircuitOpen:
    """No replica to try: the fallback answers on the plain path as on the general one."""

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
    async def test_fallback_with_every_replica_out(self, stream: bool) -> None:
        """The first request finds the replica unreachable, the second finds it out."""
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
        body = {**REQUESTS["plain"], "stream": stream}
        replies: dict[str, list[Reply]] = {}
        with capture_logs() as logs:
            for name, kind in (("fast", RemoteLLM), ("general", GeneralLLM)):
                llm = kind("llm", endpoint=dead, model=MODEL, health_interval=0)
                llm.fallback = Canned("canned")
                application = App().mount(llm).application()
                server = LeanTestServer(application, **SERVER_KWARGS)
                await server.start_server()
                try:
                    url = str(server.make_url("")).rstrip("/")
                    async with aiohttp.ClientSession() as session:
                        replies[name] = [await post(session, url, body, f"r{i}") for i in (1, 2)]
                finally:
                    await server.close()
        for fast, general in zip(replies["fast"], replies["general"], strict=True):
            assert fast.status == 200 and b"canned answer" in fast.body
            if stream:
                assert fast.same() == general.same()
            else:  # (the answer's own id and clock apart)
                assert strip(fast.body) == strip(general.body)
        errors = [e["error"] for e in logs if e["event"] == "meshkit.llm.fallback"]
        assert errors == ["upstream_unavailable", "upstream_circuit_open"] * 2


def strip(body: bytes) -> Any:
    """A whole answer without its id and clock."""
    obj = json.loads(body)
    assert _OWN_ID.fullmatch(obj.pop("id")) and isinstance(obj.pop("created"), int)
    return obj


class TestPlainStreamCancel:
    """A caller leaving a plain stream cancels the upstream call."""

    async def test_caller_leaves(self) -> None:
        """The upstream sees its answer abandoned once the caller closes mid-stream."""
        fake = FakeLLM(tokens=["a", "b", "c"], stall_after=1)
        async with fake.serve() as up:
            llm = RemoteLLM("llm", endpoint=up, model=MODEL, health_interval=0)
            application = App().mount(llm).application()
            server = LeanTestServer(application, **SERVER_KWARGS)
            await server.start_server()
            try:
                url = str(server.make_url("")).rstrip("/") + "/v1/chat/completions"
                async with aiohttp.ClientSession() as session:
                    resp = await session.post(url, json=REQUESTS["no-model"])
                    assert resp.status == 200
                    seen = b""
                    for _ in range(5):  # the role's event, then the first token's
                        seen += await resp.content.readuntil(b"\n\n")
                        if re.search(rb'"content": ?"a"', seen):
                            break
                    assert re.search(rb'"content": ?"a"', seen), seen
                    resp.close()  # the caller leaves with the upstream stalled
                await asyncio.wait_for(fake.cancelled.wait(), 10)
                whole = whole_of(application)
                assert whole is not None and whole.streamed == 1
            finally:
                await server.close()
                fake.release()
