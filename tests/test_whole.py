"""The whole-answer path: a plain non-streaming OpenAI chat on a one-LLM route answers
exactly as the general path does.

Two gateways front one scripted upstream: a route on a :class:`RemoteLLM` (which has the
whole-answer path) and a route on a subclass of it (which the path leaves to the general
one, as any node that may override ``process``). Every request shape is sent to both
with every upstream answer shape; status, headers, body (the answer id and clock
checked apart), what the upstream received, the access lines and the metrics must be
the same. :attr:`Whole.answered` shows the path was taken where it should be.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from meshkit import App
from meshkit.gateway.fastpath import GATE
from meshkit.gateway.whole import Whole
from meshkit.nodes.llm import RemoteLLM

from . import whole_kit as kit
from .conftest import SERVER_KWARGS, LeanTestServer
from .whole_kit import INTAKES, MODEL, USER, GeneralLLM

#: Request bodies: plain ones first, then every kind the general path must take.
REQUESTS: dict[str, Any] = {
    "plain": {"model": "m1", "messages": [USER]},
    "no-model": {"messages": [USER]},
    "empty-model": {"model": "", "messages": [USER], "stream": False},
    "null-stream": {"model": "m1", "messages": [USER], "stream": None},
    "turns": {
        "messages": [
            {"role": "system", "content": "be brief"},
            USER,
            {"role": "assistant", "content": 'hello "you" \u00e9\u4e2d'},
            {"role": "developer", "content": ""},
        ]
    },
    # Not plain: each must reach the upstream and the caller as on the general path.
    "keys-reversed": {"messages": [{"content": "hi", "role": "user"}]},
    "temperature": {"messages": [USER], "temperature": 0.5},
    "unknown-field": {"messages": [USER], "user": "u-1", "metadata": {"a": 1}},
    "tools": {
        "messages": [USER],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    },
    "image": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is it"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                ],
            }
        ]
    },
    "named": {"messages": [{"role": "user", "content": "hi", "name": "ann"}]},
    "response-format": {"messages": [USER], "response_format": {"type": "json_object"}},
    "reasoning-effort": {"messages": [USER], "reasoning_effort": "low"},
    "logprobs": {"messages": [USER], "logprobs": True, "top_logprobs": 2},
    "null-content": {"messages": [{"role": "assistant", "content": None}, USER]},
    # Refused: the same error in OpenAI's shape from both.
    "n2": {"messages": [USER], "n": 2},
    "bad-role": {"messages": [{"role": "robot", "content": "hi"}]},
    "bad-stream": {"messages": [USER], "stream": "yes"},
    "bad-model": {"model": 7, "messages": [USER]},
    "no-messages": {"messages": []},
    "message-not-object": {"messages": ["hi"]},
    "not-json": b"{nope",
    "array": [1, 2],
}
PLAIN_REQUESTS = ("plain", "no-model", "empty-model", "null-stream", "turns")

CHOICE: dict[str, Any] = {
    "index": 0,
    "message": {"role": "assistant", "content": 'Hello "there" \u00e9 \U0001f600\n'},
    "logprobs": None,
    "finish_reason": "stop",
}
USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


def answer(**changes: Any) -> dict[str, Any]:
    """An upstream ``chat.completion`` with ``changes`` (a choice's under ``choice``)."""
    choice = {**CHOICE, **changes.pop("choice", {})}
    body = {
        "id": "up-1",
        "object": "chat.completion",
        "created": 1,
        "model": "served-model",
        "choices": [choice],
        "usage": USAGE,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()

#: Upstream answers: plain ones first, then every kind the general encoder must write.
ANSWERS: dict[str, Any] = {
    "text": answer(),
    "no-usage": answer(usage=DROP),
    "no-model": answer(model=DROP),
    "length": answer(choice={"finish_reason": "length"}),
    "null-finish": answer(choice={"finish_reason": None}),
    "null-content": answer(choice={"message": {"role": "assistant", "content": None}}),
    "more-fields": answer(
        choice={"message": {"role": "assistant", "content": "x", "refusal": None}},
        system_fingerprint="fp",
    ),
    "usage-not-object": answer(usage="many"),
    # Not plain text.
    "reasoning": answer(
        choice={"message": {"role": "assistant", "content": "4", "reasoning_content": "2+2"}}
    ),
    "tool-call": answer(
        choice={
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            "finish_reason": "tool_calls",
        }
    ),
    "logprobs": answer(choice={"logprobs": {"content": [{"token": "x", "logprob": -0.1}]}}),
    "usage-floats": answer(usage={"prompt_tokens": 5.0, "completion_tokens": 7}),
    "usage-strings": answer(usage={"prompt_tokens": "5", "completion_tokens": "7"}),
    "content-list": answer(choice={"message": {"role": "assistant", "content": ["x"]}}),
    # Malformed: the same 502 from both.
    "no-choices": answer(choices=[]),
    "not-json": b"{nope",
}
PLAIN_ANSWERS = ("text", "no-usage", "no-model", "length", "null-finish", "null-content")
PLAIN_ANSWERS += ("more-fields", "usage-not-object")


class Upstream(kit.ScriptedUpstream):
    """The scripted upstream: answers by the request id's answer name, keeps what came."""

    async def chat(self, request: web.Request) -> web.Response:
        rid, refused = await self.arrived(request)
        if refused is not None:
            return refused
        shape = ANSWERS[rid.split("|")[1]]
        data = shape if isinstance(shape, bytes) else json.dumps(shape).encode()
        return web.Response(body=data, content_type="application/json")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """The scripted upstream, served on a free port."""
    async with Upstream().serve() as up:
        yield up


@pytest.fixture(params=INTAKES)
async def gateways(
    upstream: Upstream, request: pytest.FixtureRequest
) -> AsyncIterator[dict[str, str]]:
    """``fast`` (a RemoteLLM route) and ``general`` (a GeneralLLM route), on either intake;
    both fall back to a :class:`Canned` node."""
    async with kit.fast_and_general(upstream.url, request.param) as made:
        yield {name: url for name, (url, _) in made.items()}


class Reply(kit.Reply):
    """One answer as the caller got it."""

    def same(self) -> tuple[int, dict[str, str], Any]:
        """What must be equal between the paths (the answer's id and clock apart)."""
        headers = self.kept_headers()
        try:
            obj = json.loads(self.body)
        except ValueError:
            return self.status, headers, self.body
        if isinstance(obj, dict) and obj.get("object") == "chat.completion":
            assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", obj.pop("id")), self.body
            assert isinstance(obj.pop("created"), int)
        return self.status, headers, obj


async def post(session: aiohttp.ClientSession, url: str, body: Any, rid: str) -> Reply:
    """POST ``body`` (JSON unless bytes) to the chat endpoint as request ``rid``."""
    return Reply(*await kit.send(session, url, body, rid))


def access(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The access lines, without their duration."""
    return [
        {k: v for k, v in e.items() if k != "duration_ms"}
        for e in logs
        if e["event"] == "meshkit.request"
    ]


class TestSameAnswers:
    """The same requests through the whole-answer and the general path."""

    async def test_every_request_with_every_answer(
        self, gateways: dict[str, str], upstream: Upstream
    ) -> None:
        """Equal status, headers, body and upstream request, for every pair of shapes."""
        with capture_logs() as captured:
            replies = await kit.run_all(gateways, REQUESTS, ANSWERS, post)
        logs = kit.logged(captured)
        for key, fast in replies["fast"].items():
            general = replies["general"][key]
            assert fast.same() == general.same(), key
        # What the upstream got, by request: the two gateways' calls byte for byte.
        for rid, pair in upstream.calls().items():
            assert len(pair) == 2 and pair[0] == pair[1], rid
        for rid, lines in logs.items():
            assert len(lines) == 2 and access(lines[:1]) == access(lines[1:]), rid
        ok = [k for k, r in replies["fast"].items() if r.status == 200]
        assert ("plain", "text") in ok and ("tools", "tool-call") in ok

    async def test_whole_path_taken_for_plain_pairs_only(self, upstream: Upstream) -> None:
        """The fast route answers plain requests with plain answers itself, nothing else."""
        llm = RemoteLLM("llm", endpoint=upstream.url, model=MODEL, health_interval=0)
        app = App().mount(llm)
        general = App().mount(GeneralLLM("llm", endpoint=upstream.url, health_interval=0))
        apps = [a.application() for a in (app, general)]
        servers = [LeanTestServer(a, **SERVER_KWARGS) for a in apps]
        for server in servers:
            await server.start_server()
        try:
            url = str(servers[0].make_url("")).rstrip("/")
            async with aiohttp.ClientSession() as session:
                for req in REQUESTS:
                    for ans in ANSWERS:
                        await post(session, url, REQUESTS[req], f"{req}|{ans}")
                # A stream is never answered whole (this upstream sends no events).
                streamed = await post(session, url, {**REQUESTS["plain"], "stream": True}, "s|text")
                assert streamed.status == 502  # the stream reads no event: not a whole answer
            (route,) = apps[0][GATE].routes
            whole = Whole.of(route)
            assert whole is not None
            assert whole.answered == len(PLAIN_REQUESTS) * len(PLAIN_ANSWERS)
            (other,) = apps[1][GATE].routes
            assert Whole.of(other) is None
        finally:
            for server in servers:
                await server.close()

    async def test_metrics_equal(self, upstream: Upstream) -> None:
        """The same counters (requests, tokens, upstream calls, node runs) on both paths."""
        await kit.assert_metrics_equal(
            upstream.url,
            REQUESTS,
            ("plain", "turns", "tools", "n2"),
            ("text", "no-usage", "reasoning", "not-json"),
        )

    async def test_retry_after_a_failed_first_try(
        self, gateways: dict[str, str], upstream: Upstream
    ) -> None:
        """A first try refused with a 503 is retried; the retry's answer is the same."""
        replies = {}
        async with aiohttp.ClientSession() as session:
            for name, url in gateways.items():
                upstream.fail_first.add("plain|text")
                replies[name] = await post(session, url, REQUESTS["plain"], "plain|text")
        assert replies["fast"].status == 200
        assert replies["fast"].same() == replies["general"].same()
        tried = [(rid, body) for rid, body, _ in upstream.received]
        assert len(tried) == 4 and len({body for _, body in tried}) == 1

    async def test_fallback_after_failed_tries(
        self, gateways: dict[str, str], upstream: Upstream
    ) -> None:
        """Every try refused: the fallback node's text, in the same answer from both."""
        upstream.fail_always.add("plain|text")
        replies = {}
        async with aiohttp.ClientSession() as session:
            for name, url in gateways.items():
                replies[name] = await post(session, url, REQUESTS["plain"], "plain|text")
        assert replies["fast"].status == 200
        assert json.loads(replies["fast"].body)["choices"][0]["message"]["content"] == (
            "canned answer"
        )
        assert replies["fast"].same() == replies["general"].same()
