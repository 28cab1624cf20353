"""The LiteLLM SDK used as a client of meshkit's OpenAI dialect: text, a streamed tool call
and its follow-up turn, over both upstream APIs."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

# LiteLLM fetches its model price list from the network on import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from meshkit.testing import FakeLLM

from .surfaces_kit import ARGS, CALL, TOOLS, UPSTREAMS, mesh

# LiteLLM's own types trip a pydantic warning when it builds them; not meshkit's concern.
pytestmark = pytest.mark.filterwarnings("ignore:Item.*ReadOnly:UserWarning")

MODEL = "openai/llama3.2:1b"  # LiteLLM's "openai/" prefix: any OpenAI-compatible server
QUESTION = {"role": "user", "content": "Weather in Paris?"}


@asynccontextmanager
async def served(gateway: Any, fake: FakeLLM, upstream: str) -> AsyncIterator[str]:
    """meshkit's OpenAI base URL, with ``fake`` behind it speaking ``upstream``."""
    async with fake.serve():
        gw = await gateway(mesh(fake.url, upstream, "llm"))
        yield str(gw.make_url("/v1"))


def call_kwargs(base: str) -> dict[str, Any]:
    return {"model": MODEL, "api_base": base, "api_key": "k", "num_retries": 0}


class TestLiteLLM:
    """``litellm.acompletion`` against meshkit, as an application would call it."""

    @pytest.mark.parametrize("upstream", UPSTREAMS)
    async def test_text(self, gateway: Any, upstream: str) -> None:
        fake = FakeLLM()
        async with served(gateway, fake, upstream) as base:
            answer = await litellm.acompletion(messages=[QUESTION], **call_kwargs(base))
        assert answer.choices[0].message.content == "".join(fake.tokens)
        assert answer.choices[0].finish_reason == "stop"

    @pytest.mark.parametrize("upstream", UPSTREAMS)
    async def test_streamed_tool_call_and_follow_up(self, gateway: Any, upstream: str) -> None:
        fake = FakeLLM(tokens=[], tool_calls=[CALL], tool_pieces=4)
        async with served(gateway, fake, upstream) as base:
            stream = await litellm.acompletion(
                messages=[QUESTION], tools=TOOLS, stream=True, **call_kwargs(base)
            )
            chunks = [chunk async for chunk in stream]
            message = litellm.stream_chunk_builder(chunks).choices[0].message
            (call,) = message.tool_calls
            assert call.function.name == "get_weather"
            assert json.loads(call.function.arguments) == ARGS
            if upstream == "openai":
                assert (call.id, call.function.arguments) == (CALL["id"], CALL["arguments"])
            fake.tool_calls, fake.tokens = (), ["It is 18 degrees."]
            follow_up = [
                QUESTION,
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18}'},
            ]
            answer = await litellm.acompletion(messages=follow_up, tools=TOOLS, **call_kwargs(base))
        assert answer.choices[0].message.content == "It is 18 degrees."
        sent = fake.requests[-1]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
