"""The official ``openai`` and ``ollama`` packages, unchanged, against both upstream APIs:
tool round trips, structured output, images and reasoning."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import ollama
import openai
import pydantic
import pytest

from meshkit.testing import FakeLLM

from .surfaces_kit import ARGS, CALL, PNG, PNG_URL, SCHEMA, TOOLS, UPSTREAMS, mesh

MODEL = "llama3.2:1b"
QUESTION = {"role": "user", "content": "Weather in Paris?"}


class Weather(pydantic.BaseModel):
    city: str
    sunny: bool


@asynccontextmanager
async def served(gateway: Any, fake: FakeLLM, upstream: str) -> AsyncIterator[str]:
    """The gateway's base URL, with ``fake`` behind it speaking ``upstream``."""
    async with fake.serve():
        gw = await gateway(mesh(fake.url, upstream, "llm"))
        yield str(gw.make_url("")).rstrip("/")


@asynccontextmanager
async def openai_client(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="k", max_retries=0) as c:
        yield c


@asynccontextmanager
async def ollama_client(base: str) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=base)
    try:
        yield client
    finally:
        await client.close()


class TestOpenAIPackage:
    """``openai.AsyncOpenAI`` as an agent would use it."""

    @pytest.mark.parametrize("upstream", UPSTREAMS)
    async def test_streamed_tool_round_trip(self, gateway, upstream) -> None:
        fake = FakeLLM(tokens=[], tool_calls=[CALL], tool_pieces=4)
        async with served(gateway, fake, upstream) as base, openai_client(base) as client:
            async with client.chat.completions.stream(
                model=MODEL, messages=[QUESTION], tools=TOOLS
            ) as stream:
                first = await stream.get_final_completion()
            choice = first.choices[0]
            assert choice.finish_reason == "tool_calls"
            call = choice.message.tool_calls[0]
            assert call.function.name == "get_weather"
            if upstream == "openai":
                assert (call.id, call.function.arguments) == (CALL["id"], CALL["arguments"])
            assert json.loads(call.function.arguments) == ARGS
            fake.tool_calls, fake.tokens = (), ["It is 18 degrees."]
            follow_up = [
                QUESTION,
                choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18}'},
            ]
            second = await client.chat.completions.create(
                model=MODEL, messages=follow_up, tools=TOOLS
            )
        assert second.choices[0].message.content == "It is 18 degrees."
        sent = fake.requests[1]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
        if upstream == "openai":
            assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == call.id
        else:
            assert sent[1]["tool_calls"][0]["function"]["arguments"] == ARGS
            assert sent[2]["tool_name"] == "get_weather"

    @pytest.mark.parametrize("upstream", UPSTREAMS)
    async def test_parse_with_a_pydantic_model(self, gateway, upstream) -> None:
        fake = FakeLLM(tokens=['{"city": "Paris",', ' "sunny": true}'])
        async with served(gateway, fake, upstream) as base, openai_client(base) as client:
            done = await client.chat.completions.parse(
                model=MODEL, messages=[QUESTION], response_format=Weather
            )
        assert done.choices[0].message.parsed == Weather(city="Paris", sunny=True)
        sent = fake.requests[0]
        schema = Weather.model_json_schema()
        if upstream == "openai":
            assert sent["response_format"]["json_schema"]["name"] == "Weather"
            assert (
                sent["response_format"]["json_schema"]["schema"]["properties"]
                == (schema["properties"])
            )
        else:
            assert sent["format"]["properties"] == schema["properties"]

    @pytest.mark.parametrize("upstream", UPSTREAMS)
    async def test_streamed_reasoning_and_image(self, gateway, upstream) -> None:
        fake = FakeLLM(reasoning=["Look", "ing."], tokens=["A", " pixel."])
        message = {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
            ],
        }
        async with served(gateway, fake, upstream) as base, openai_client(base) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[message], stream=True, reasoning_effort="low"
            )
            text, reasoning = "", ""
            async for event in stream:
                delta = event.choices[0].delta if event.choices else None
                if delta is not None:
                    text += delta.content or ""
                    extra = delta.model_extra or {}
                    reasoning += extra.get("reasoning_content") or ""
        assert (text, reasoning) == ("A pixel.", "Looking.")
        sent = fake.requests[0]
        if upstream == "ollama":
            assert sent["messages"][0]["images"] == [PNG]
            assert sent["think"] == "low"
        else:
            assert sent["messages"][0]["content"] == message["content"]
            assert sent["reasoning_effort"] == "low"


class TestOllamaPackage:
    """``ollama.AsyncClient`` with tools, images, think and format."""

    @pytest.mark.parametrize("upstream", UPSTREAMS)
    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
    async def test_tools(self, gateway, upstream, stream) -> None:
        fake = FakeLLM(tokens=[], tool_calls=[CALL])
        async with served(gateway, fake, upstream) as base, ollama_client(base) as client:
            if stream:
                calls = []
                async for part in await client.chat(
                    model=MODEL, messages=[QUESTION], tools=TOOLS, stream=True
                ):
                    calls += part.message.tool_calls or []
            else:
                answer = await client.chat(model=MODEL, messages=[QUESTION], tools=TOOLS)
                calls = list(answer.message.tool_calls or [])
            assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
                ("get_weather", ARGS)
            ]
            fake.tool_calls, fake.tokens = (), ["18 degrees."]
            follow_up = [
                QUESTION,
                {"role": "assistant", "content": "", "tool_calls": calls},
                {"role": "tool", "tool_name": "get_weather", "content": '{"temp": 18}'},
            ]
            answer = await client.chat(model=MODEL, messages=follow_up, tools=TOOLS)
        assert answer.message.content == "18 degrees."
        sent = fake.requests[1]["messages"]
        if upstream == "openai":
            assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]
            assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == ARGS
        else:
            assert sent[2]["tool_name"] == "get_weather"

    @pytest.mark.parametrize("upstream", UPSTREAMS)
    async def test_images_think_and_format(self, gateway, upstream) -> None:
        fake = FakeLLM(reasoning=["Hm", "m."], tokens=['{"city": "Paris", "sunny": true}'])
        async with served(gateway, fake, upstream) as base, ollama_client(base) as client:
            message = {"role": "user", "content": "Where?", "images": [base64.b64decode(PNG)]}
            answer = await client.chat(model=MODEL, messages=[message], think=True, format=SCHEMA)
        assert answer.message.thinking == "Hmm."
        assert json.loads(answer.message.content) == {"city": "Paris", "sunny": True}
        sent = fake.requests[0]
        if upstream == "openai":
            assert sent["messages"][0]["content"][1] == {
                "type": "image_url",
                "image_url": {"url": PNG_URL},
            }
            assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
            assert sent["reasoning_effort"] == "medium"
        else:
            assert sent["messages"][0]["images"] == [PNG]
            assert (sent["format"], sent["think"]) == (SCHEMA, True)
