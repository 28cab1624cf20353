"""The prompt node keeps the request whole; custom nodes stream tool calls and reasoning."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from meshkit import (
    ChatRequest,
    Chunk,
    Context,
    HttpClient,
    Message,
    MicroService,
    Part,
    ToolCall,
    ToolCallDelta,
)
from meshkit.nodes.ports import Document
from meshkit.nodes.prompt import DEFAULT_SYSTEM, PromptBuilder
from meshkit.testing import FakeLLM

from .conftest import Clients, GatewayFactory

TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
)
CALL = ToolCall("call_1", "weather", '{"city": "Paris"}')
FOLLOW_UP = (
    Message("user", "What is the weather in Paris?"),
    Message("assistant", None, tool_calls=(CALL,)),
    Message("tool", "18 C and sunny", tool_call_id="call_1"),
)


async def build(request: ChatRequest, docs: tuple[Document, ...] = ()) -> ChatRequest:
    node = PromptBuilder("prompt", params={"template": "Q: {question}\n{context}"})
    if not docs:
        out = await node.process(request, Context(client=HttpClient(), request=request))
        assert isinstance(out, ChatRequest)
        return out
    return node.build(request, docs)


class TestPromptBuilder:
    """The question is rewritten in place; everything else of the request stays."""

    async def test_tool_follow_up_keeps_turn_order(self) -> None:
        out = await build(ChatRequest(messages=FOLLOW_UP, tools=TOOLS))
        assert [m.role for m in out.messages] == ["system", "user", "assistant", "tool"]
        assert out.messages[0].text == DEFAULT_SYSTEM
        assert out.messages[1].text == "What is the weather in Paris?"
        assert out.messages[2].tool_calls == (CALL,)
        assert out.messages[3].tool_call_id == "call_1"

    async def test_template_fills_the_last_user_message_where_it_stands(self) -> None:
        request = ChatRequest(messages=(*FOLLOW_UP, Message("user", "And tomorrow?")))
        docs = (Document("Rain is forecast.", source="news.txt"),)
        out = await build(request, docs)
        assert [m.role for m in out.messages] == ["system", *(m.role for m in request.messages)]
        assert out.messages[-1].text == "Q: And tomorrow?\n[1] (news.txt) Rain is forecast."
        assert out.messages[1].text == "What is the weather in Paris?"

    async def test_images_of_the_question_are_kept(self) -> None:
        image = Part.image("data:image/png;base64,iVBORw0KGgo=")
        question = Message("user", (Part("text", "What is this?"), image))
        docs = (Document("A logo.", source="a.txt"),)
        out = await build(ChatRequest(messages=(question,)), docs)
        user = out.messages[-1]
        assert user.text == "Q: What is this?\n[1] (a.txt) A logo."
        assert user.images == (image.image_url,)

    async def test_tools_and_response_format_are_kept(self) -> None:
        fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
        request = ChatRequest(
            messages=FOLLOW_UP[:1], tools=TOOLS, tool_choice="auto", response_format=fmt
        )
        out = await build(request)
        assert (out.tools, out.tool_choice, out.response_format) == (TOOLS, "auto", fmt)


def prompt_mesh(endpoint: str) -> str:
    return yaml.safe_dump(
        {
            "services": {
                "prompt": {"type": "prompt", "params": {"system": "Be brief."}},
                "llm": {"type": "llm", "endpoint": endpoint, "model": "llama3.2:1b"},
            },
            "pipelines": {"chat": {"edges": ["prompt -> llm"]}},
        }
    )


class TestPromptThroughAGraph:
    """A tool follow-up crosses a prompt node and reaches the upstream whole."""

    async def test_follow_up_reaches_the_upstream_in_order(
        self, fake: FakeLLM, gateway: GatewayFactory, clients: Clients
    ) -> None:
        oa = clients.openai(await gateway(prompt_mesh(fake.url)))
        await oa.chat.completions.create(
            model="llama3.2:1b",
            messages=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
            ],
            tools=[dict(t) for t in TOOLS],
        )
        sent = fake.requests[-1]
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool"]
        assert sent["messages"][2]["tool_calls"][0]["id"] == "call_1"
        assert sent["messages"][3]["tool_call_id"] == "call_1"
        assert sent["tools"][0]["function"]["name"] == "weather"


ARGUMENTS = '{"city": "Paris", "unit": "C"}'


class Agent(MicroService):
    """A custom node that thinks, then calls a tool (arguments in two pieces)."""

    async def process(self, data: Any, ctx: Context) -> AsyncIterator[Chunk]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[Chunk]:
        yield Chunk(reasoning="The user wants the weather; ")
        yield Chunk(reasoning="I will call the tool.")
        yield Chunk(tool_calls=(ToolCallDelta(0, id="call_9", name="weather"),))
        yield Chunk(tool_calls=(ToolCallDelta(0, arguments=ARGUMENTS[:12]),))
        yield Chunk(tool_calls=(ToolCallDelta(0, arguments=ARGUMENTS[12:]),))
        yield Chunk(finish_reason="tool_calls")


AGENT_MESH = yaml.safe_dump(
    {
        "services": {
            "agent": {"type": "custom", "class": "tests.test_nodes_prompt:Agent"},
            "guard": {"type": "guardrail", "params": {"words": ["forbidden"]}},
        },
        "pipelines": {"chat": {"edges": ["agent -> guard"]}},
    }
)
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture
async def agent(gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await gateway(AGENT_MESH)


class TestCustomNodeToolCalls:
    """Tool calls and reasoning a custom node yields reach clients of both dialects."""

    async def test_openai_stream(self, agent: TestClient[Any, Any], clients: Clients) -> None:
        oa = clients.openai(agent)
        stream = await oa.chat.completions.create(model="any", messages=QUESTION, stream=True)
        reasoning, args, names, finish = "", "", [], None
        async for chunk in stream:
            for choice in chunk.choices:
                delta = choice.delta
                reasoning += getattr(delta, "reasoning_content", None) or ""
                for call in delta.tool_calls or ():
                    if call.function and call.function.name:
                        names.append((call.id, call.function.name))
                    args += (call.function.arguments or "") if call.function else ""
                finish = choice.finish_reason or finish
        assert reasoning == "The user wants the weather; I will call the tool."
        assert names == [("call_9", "weather")]
        assert json.loads(args) == json.loads(ARGUMENTS) and args == ARGUMENTS
        assert finish == "tool_calls"

    async def test_openai_whole_answer(self, agent: TestClient[Any, Any], clients: Clients) -> None:
        oa = clients.openai(agent)
        done = await oa.chat.completions.create(model="any", messages=QUESTION)
        message = done.choices[0].message
        assert message.tool_calls is not None
        (call,) = message.tool_calls
        assert (call.id, call.function.name, call.function.arguments) == (
            "call_9",
            "weather",
            ARGUMENTS,
        )
        assert done.choices[0].finish_reason == "tool_calls"

    async def test_ollama_chat(self, agent: TestClient[Any, Any], clients: Clients) -> None:
        ol = clients.ollama(agent)
        parts = [part async for part in await ol.chat(model="any", messages=QUESTION, stream=True)]
        thinking = "".join(p.message.thinking or "" for p in parts)
        calls = [c for p in parts for c in (p.message.tool_calls or ())]
        assert thinking == "The user wants the weather; I will call the tool."
        assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
            ("weather", json.loads(ARGUMENTS))
        ]
