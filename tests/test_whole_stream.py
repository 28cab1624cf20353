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
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from meshkit import App
from meshkit.gateway.fastpath import GATE
from meshkit.gateway.whole import Whole
from meshkit.nodes.llm import RemoteLLM
from meshkit.testing import FakeLLM

from . import whole_kit as kit
from .conftest import SERVER_KWARGS, LeanTestServer
from .whole_kit import INTAKES, MODEL, USER, Canned, GeneralLLM

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


class Upstream(kit.ScriptedUpstream):
    """The scripted upstream: streams by the request id's stream name, keeps what came."""

    def kept(self, headers: Mapping[str, str]) -> dict[str, str]:
        kept = super().kept(headers)
        if "X-Meshkit-Deadline-Ms" in kept:  # (the budget left differs by a few ms)
            kept["X-Meshkit-Deadline-Ms"] = "set"
        return kept

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rid, refused = await self.arrived(request)
        if refused is not None:
            return refused
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in STREAMS[rid.split("|")[1]]:
            await response.write(piece)
            await asyncio.sleep(0)  # (each write its own read, mostly)
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """The scripted upstream, served on a free port."""
    async with Upstream().serve() as up:
        yield up


@pytest.fixture(params=INTAKES)
async def gateways(
    upstream: Upstream, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, tuple[str, web.Application]]]:
    """``fast`` (a RemoteLLM route) and ``general`` (a GeneralLLM route), on either intake;
    both fall back to a :class:`Canned` node."""
    async with kit.fast_and_general(upstream.url, request.param) as made:
        yield made


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


class Reply(kit.Reply):
    """One answer as the caller got it."""

    def same(self) -> tuple[int, dict[str, str], Any]:
        """What must be equal between the paths."""
        headers = self.kept_headers()
        if self.headers.get("Content-Type", "").startswith("text/event-stream"):
            return self.status, headers, events(self.body)
        return self.status, headers, json.loads(self.body)


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, rid: str, **headers: str
) -> Reply:
    """POST ``body`` to the chat endpoint as request ``rid``."""
    return Reply(*await kit.send(session, url, body, rid, **headers))


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
        urls = {name: url for name, (url, _) in gateways.items()}
        with capture_logs() as captured:
            replies = await kit.run_all(urls, REQUESTS, STREAMS, post, **headers)
        logs = kit.logged(captured)
        for key, fast in replies["fast"].items():
            assert fast.same() == replies["general"][key].same(), key
        for rid, pair in upstream.calls().items():
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
        await kit.assert_metrics_equal(
            upstream.url,
            REQUESTS,
            ("plain", "turns", "include-usage", "stream-int"),
            ("text", "tool-call", "error-event", "no-events"),
        )

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
