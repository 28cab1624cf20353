"""LangChain, unchanged, through meshkit: ``bind_tools`` round trips with ``langchain-openai``
against the OpenAI dialect and ``langchain-ollama`` against the Ollama dialect, each over
both upstream APIs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from meshkit.testing import FakeLLM

from .surfaces_kit import ARGS, CALL, UPSTREAMS, mesh

MODEL = "llama3.2:1b"


@tool
def get_weather(city: str, unit: str = "c") -> str:
    """The weather in a city."""
    return json.dumps({"city": city, "temp": 18, "unit": unit})


@asynccontextmanager
async def served(gateway: Any, fake: FakeLLM, upstream: str) -> AsyncIterator[str]:
    """The gateway's base URL, with ``fake`` behind it speaking ``upstream``."""
    async with fake.serve():
        gw = await gateway(mesh(fake.url, upstream, "llm"))
        yield str(gw.make_url("")).rstrip("/")


@asynccontextmanager
async def openai_model(base: str) -> AsyncIterator[BaseChatModel]:
    # LangChain would otherwise keep a process-wide HTTP client open past the test.
    async with httpx.AsyncClient() as http:
        yield ChatOpenAI(
            model=MODEL, base_url=base + "/v1", api_key="k", max_retries=0, http_async_client=http
        )


@asynccontextmanager
async def ollama_model(base: str) -> AsyncIterator[BaseChatModel]:
    # ChatOllama never closes the client it builds; its connections live in this transport.
    async with httpx.AsyncHTTPTransport() as transport:
        yield ChatOllama(model=MODEL, base_url=base, async_client_kwargs={"transport": transport})


Models = Callable[[str], Any]
CLIENTS: dict[str, Models] = {"langchain-openai": openai_model, "langchain-ollama": ollama_model}


async def ask(model: Any, messages: list[BaseMessage], stream: bool) -> AIMessage:
    if not stream:
        answer = await model.ainvoke(messages)
        assert isinstance(answer, AIMessage)
        return answer
    merged: AIMessageChunk | None = None
    async for chunk in model.astream(messages):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None
    return merged


# langchain-ollama sends a tool result with neither ``tool_name`` nor an id, answering a
# call without an id: meshkit pairs it with the open call by position, so an OpenAI
# upstream still gets its ``tool_call_id``.
CASES = [
    pytest.param(client, upstream, id=f"{client}-{upstream}")
    for client in sorted(CLIENTS)
    for upstream in UPSTREAMS
]


class TestBindTools:
    """A tool call reaches LangChain whole, and its result goes back to the upstream."""

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
    @pytest.mark.parametrize(("client", "upstream"), CASES)
    async def test_round_trip(self, gateway: Any, client: str, upstream: str, stream: bool) -> None:
        fake = FakeLLM(tokens=[], tool_calls=[CALL], tool_pieces=4)
        question = HumanMessage("Weather in Paris?")
        async with served(gateway, fake, upstream) as base, CLIENTS[client](base) as model:
            bound = model.bind_tools([get_weather])
            first = await ask(bound, [question], stream)
            (call,) = first.tool_calls
            assert (call["name"], call["args"]) == ("get_weather", ARGS)
            sent = fake.requests[-1]
            names = [t["function"]["name"] for t in sent["tools"]]
            assert names == ["get_weather"]
            result = await get_weather.ainvoke(call)
            fake.tool_calls, fake.tokens = (), ["It is 18 degrees."]
            final = await ask(bound, [question, first, result], stream)
        assert final.content == "It is 18 degrees."
        follow_up = fake.requests[-1]["messages"]
        assert [m["role"] for m in follow_up] == ["user", "assistant", "tool"]
        assistant_call = follow_up[1]["tool_calls"][0]["function"]
        assert assistant_call["name"] == "get_weather"
        arguments = assistant_call["arguments"]
        assert (json.loads(arguments) if isinstance(arguments, str) else arguments) == ARGS
        assert json.loads(follow_up[2]["content"]) == {"city": "Paris", "temp": 18, "unit": "c"}
        if upstream == "openai":
            # An OpenAI upstream refuses a tool message that names no call.
            assert follow_up[2]["tool_call_id"] == follow_up[1]["tool_calls"][0]["id"]
        if upstream == "openai" and client == "langchain-openai":
            assert call["id"] == CALL["id"]
