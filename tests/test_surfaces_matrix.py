"""Every surface feature on every path: client dialect x upstream API x pipeline.

Each cell sends one request in the client's dialect through a gateway whose LLM node
speaks the upstream's API (alone, or followed by a custom node that relays the stream),
then asserts what reached the upstream (``FakeLLM.requests``) and what the client got.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshkit.testing import FakeLLM

from .surfaces_kit import (
    ARGS,
    CALL,
    CLIENTS,
    PIPELINES,
    PNG,
    PNG_URL,
    SCHEMA,
    TOOLS,
    UPSTREAMS,
    Answer,
    mesh,
    path,
    read,
)

CELLS = [
    pytest.param(c, u, p, id=f"{c}-client-{u}-upstream-{p}")
    for c in CLIENTS
    for u in UPSTREAMS
    for p in PIPELINES
]
QUESTION = {"role": "user", "content": "Weather in Paris?"}


async def ask(
    gateway: Any, fake: FakeLLM, cell: tuple[str, str, str], body: dict[str, Any], **llm: Any
) -> Answer:
    """Serve ``fake`` behind a gateway for ``cell``, send ``body``; the client's answer."""
    client, upstream, pipeline = cell
    async with fake.serve():
        gw = await gateway(mesh(fake.url, upstream, pipeline, **llm))
        resp = await gw.post(path(client), json=body)
        raw = await resp.read()
        assert resp.status == 200, raw
    answer = read(client, bool(body.get("stream", client == "ollama")), raw)
    assert answer.error is None, answer.error
    if client == "openai" and body.get("stream"):
        assert len(answer.ids) == 1, f"one completion id per answer, got {answer.ids}"
    return answer


def assert_calls(answer: Answer, client: str, upstream: str) -> None:
    """The client got the upstream's call, in its dialect's shape."""
    assert [name for _, name, _ in answer.calls] == ["get_weather"]
    assert answer.arguments() == [ARGS]
    if client == "ollama":
        assert isinstance(answer.calls[0][2], dict)  # Ollama clients read an object
        assert answer.finish == "stop"  # what Ollama itself says after tool calls
        return
    assert answer.finish == "tool_calls"
    assert answer.calls[0][0]  # an id the follow-up turn can answer
    if upstream == "openai":
        # The upstream's exact text and id, spacing included.
        assert answer.calls[0][2] == CALL["arguments"]
        assert answer.calls[0][0] == CALL["id"]


class TestToolCalls:
    """Tools reach the upstream in its shape; calls come back in the client's."""

    @pytest.mark.parametrize(("client", "upstream", "pipeline"), CELLS)
    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
    async def test_tool_call(self, gateway, client, upstream, pipeline, stream) -> None:
        fake = FakeLLM(tokens=["Let me check."], tool_calls=[CALL], tool_pieces=3)
        body: dict[str, Any] = {"messages": [QUESTION], "tools": TOOLS, "stream": stream}
        if client == "openai":
            body["tool_choice"] = "auto"
        answer = await ask(gateway, fake, (client, upstream, pipeline), body)
        sent = fake.requests[0]
        assert sent["tools"] == TOOLS
        assert sent["stream"] is stream
        assert answer.text == "Let me check."
        assert_calls(answer, client, upstream)
        if stream and client == "openai" and upstream == "openai":
            assert answer.fragments == 4  # the call's head and its three argument pieces
        if client == "ollama" and stream:
            assert answer.fragments == 1  # one record, the call whole

    @pytest.mark.parametrize(("client", "upstream", "pipeline"), CELLS)
    async def test_follow_up_turn(self, gateway, client, upstream, pipeline) -> None:
        fake = FakeLLM(tokens=["It is 18 degrees."])
        if client == "openai":
            turn = [
                QUESTION,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_w1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": CALL["arguments"]},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_w1", "content": '{"temp": 18}'},
            ]
        else:
            turn = [
                QUESTION,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "get_weather", "arguments": ARGS}}],
                },
                {"role": "tool", "tool_name": "get_weather", "content": '{"temp": 18}'},
            ]
        body = {"messages": turn, "tools": TOOLS, "stream": True}
        answer = await ask(gateway, fake, (client, upstream, pipeline), body)
        assert answer.text == "It is 18 degrees."
        sent = fake.requests[0]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
        assert sent[0] == QUESTION
        call = sent[1]["tool_calls"][0]
        assert call["function"]["name"] == "get_weather"
        assert sent[2]["content"] == '{"temp": 18}'
        if upstream == "openai":
            assert call["type"] == "function"
            assert json.loads(call["function"]["arguments"]) == ARGS
            assert sent[2]["tool_call_id"] == call["id"]
            if client == "openai":
                assert call == turn[1]["tool_calls"][0]  # byte for byte
        else:
            assert call["function"]["arguments"] == ARGS
            assert sent[2]["tool_name"] == "get_weather"


class TestImages:
    """An image reaches the upstream as its API carries images."""

    @pytest.mark.parametrize(("client", "upstream", "pipeline"), CELLS)
    async def test_image(self, gateway, client, upstream, pipeline) -> None:
        fake = FakeLLM(tokens=["A", " pixel."])
        if client == "openai":
            content: Any = [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
            ]
            message = {"role": "user", "content": content}
        else:
            message = {"role": "user", "content": "What is this?", "images": [PNG]}
        body = {"messages": [message], "stream": True}
        answer = await ask(gateway, fake, (client, upstream, pipeline), body)
        assert answer.text == "A pixel."
        sent = fake.requests[0]["messages"][0]
        if upstream == "openai":
            assert sent["content"] == [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
            ]
        else:
            assert sent == {"role": "user", "content": "What is this?", "images": [PNG]}


class TestStructuredOutput:
    """A JSON schema reaches the upstream as its API asks for one; the JSON comes back."""

    @pytest.mark.parametrize(("client", "upstream", "pipeline"), CELLS)
    async def test_json_schema(self, gateway, client, upstream, pipeline) -> None:
        fake = FakeLLM(tokens=['{"city": ', '"Paris", ', '"sunny": true}'])
        body: dict[str, Any] = {"messages": [QUESTION], "stream": False}
        if client == "openai":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
            }
        else:
            body["format"] = SCHEMA
        answer = await ask(gateway, fake, (client, upstream, pipeline), body)
        assert json.loads(answer.text) == {"city": "Paris", "sunny": True}
        sent = fake.requests[0]
        if upstream == "openai":
            assert sent["response_format"]["type"] == "json_schema"
            assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
            if client == "openai":
                assert sent["response_format"] == body["response_format"]
        else:
            assert sent["format"] == SCHEMA


class TestReasoning:
    """A reasoning phase longer than the first-token timeout streams, in either dialect."""

    @pytest.mark.parametrize(("client", "upstream", "pipeline"), CELLS)
    async def test_long_reasoning_under_short_timeout(
        self, gateway, client, upstream, pipeline
    ) -> None:
        steps = [f" step{i}" for i in range(8)]
        # The text comes 8 x 0.08 s after the first reasoning piece: past the 0.3 s
        # first-token budget, which the reasoning itself meets.
        fake = FakeLLM(reasoning=steps, tokens=["Blue."], delay=0.08)
        body: dict[str, Any] = {"messages": [QUESTION], "stream": True}
        if client == "openai":
            body["reasoning_effort"] = "high"
        else:
            body["think"] = True
        answer = await ask(gateway, fake, (client, upstream, pipeline), body, timeout=0.3)
        assert answer.reasoning == "".join(steps)
        assert answer.text == "Blue."
        sent = fake.requests[0]
        if upstream == "openai":
            assert sent["reasoning_effort"] == ("high" if client == "openai" else "medium")
        else:
            assert sent["think"] == ("high" if client == "openai" else True)


class TestLogprobs:
    """Asked-for logprobs reach the upstream as asked and come back per token."""

    @pytest.mark.parametrize(("client", "upstream", "pipeline"), CELLS)
    async def test_logprobs(self, gateway, client, upstream, pipeline) -> None:
        tokens = ["The", " sky", " is", " blue."]
        fake = FakeLLM(tokens=tokens)
        body = {"messages": [QUESTION], "stream": True, "logprobs": True, "top_logprobs": 2}
        answer = await ask(gateway, fake, (client, upstream, pipeline), body)
        sent = fake.requests[0]
        assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
        assert [e["token"] for e in answer.logprobs] == tokens
        assert [e["logprob"] for e in answer.logprobs] == [-0.125, -0.25, -0.375, -0.5]
        assert all(len(e["top_logprobs"]) == 2 for e in answer.logprobs)
        assert answer.text == "".join(tokens)
