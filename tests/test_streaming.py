"""Streaming is real: chunks arrive while the upstream still generates, and stop with it."""

from __future__ import annotations

import asyncio
import json

from meshkit import ChatRequest, Message, RemoteLLM, ServiceOrchestrator
from meshkit.gateway import MESH
from meshkit.testing import FakeLLM

from .conftest import until

CHAT = {"messages": [{"role": "user", "content": "Why is the sky blue?"}], "stream": True}


async def next_event(resp) -> dict:
    """Read one SSE event with content from a streaming response."""
    while True:
        line = (await resp.content.readline()).decode()
        assert line, "stream ended early"
        if line.startswith("data: ") and line.strip() != "data: [DONE]":
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                return event


class TestIncremental:
    """The first chunk reaches the client before the upstream has finished."""

    async def test_openai_first_chunk_before_last_token(self, gateway) -> None:
        llm = FakeLLM(hold_last=True)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            first = await next_event(resp)
            assert first["choices"][0]["delta"]["content"] == "The"
            assert not llm.finished, "the upstream had already sent its last token"
            llm.release()
            rest = [line for line in (await resp.text()).split("\n\n") if line]
            assert rest[-1] == "data: [DONE]"
            assert llm.finished

    async def test_ollama_first_line_before_last_token(self, gateway) -> None:
        llm = FakeLLM(hold_last=True)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/api/generate", json={"prompt": "Why is the sky blue?"})
            first = json.loads(await resp.content.readline())
            assert first == {**first, "response": "The", "done": False}
            assert not llm.finished
            llm.release()
            lines = [json.loads(x) for x in (await resp.text()).splitlines()]
            assert [x["response"] for x in lines[:-1]] == [" sky", " appears", " blue", "."]
            assert lines[-1]["done"] is True

    async def test_chunks_are_not_merged(self, gateway) -> None:
        tokens = [f" t{i}" for i in range(50)]
        llm = FakeLLM(tokens=tokens)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            events = [
                json.loads(e[6:])
                for e in (await resp.text()).split("\n\n")
                if e.startswith("data: {")
            ]
            contents = [e["choices"][0]["delta"].get("content") for e in events]
            assert [c for c in contents if c] == tokens

    async def test_native_ollama_upstream_streams_too(self, gateway) -> None:
        llm = FakeLLM(hold_last=True)
        async with llm.serve():
            gw = await gateway(llm, api="ollama")
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            assert (await next_event(resp))["choices"][0]["delta"]["content"] == "The"
            assert not llm.finished
            llm.release()
            events = [e for e in (await resp.text()).split("\n\n") if e]
            assert events[-1] == "data: [DONE]"


class TestDisconnect:
    """A client that leaves cancels the upstream request and frees its connection."""

    async def test_upstream_cancelled_when_client_leaves(self, gateway) -> None:
        llm = FakeLLM(tokens=[f" t{i}" for i in range(1000)], delay=0.02)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            await next_event(resp)
            await next_event(resp)
            resp.close()
            await asyncio.wait_for(llm.cancelled.wait(), 1.0)
            client = gw.server.app[MESH].client
            await until(lambda: client.connections_in_use == 0)
            assert llm.completed == 0

    async def test_ollama_client_leaving_cancels_too(self, gateway) -> None:
        llm = FakeLLM(tokens=[f" t{i}" for i in range(1000)], delay=0.02)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/api/chat", json=CHAT)
            await resp.content.readline()
            resp.close()
            await asyncio.wait_for(llm.cancelled.wait(), 1.0)

    async def test_gateway_keeps_serving_after_disconnects(self, gateway) -> None:
        llm = FakeLLM(tokens=[f" t{i}" for i in range(200)], delay=0.01)
        async with llm.serve():
            gw = await gateway(llm)
            for _ in range(3):
                resp = await gw.post("/v1/chat/completions", json=CHAT)
                await next_event(resp)
                resp.close()
            llm.tokens = ("ok",)
            llm.delay = 0
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": False})
            assert (await resp.json())["choices"][0]["message"]["content"] == "ok"


class TestUnreadStream:
    """A stream closed before anyone read it still releases its upstream connection."""

    async def test_aclose_before_first_read(self) -> None:
        llm = FakeLLM(hold_last=True)
        async with llm.serve():
            node = RemoteLLM("llm", endpoint=llm.url, model="llama3.2:1b")
            async with ServiceOrchestrator().add(node) as mesh:
                request = ChatRequest(messages=(Message("user", "hi"),), stream=True)
                stream = await mesh.run(request)
                assert mesh.client.connections_in_use == 1
                await stream.aclose()
                assert mesh.client.connections_in_use == 0
                await asyncio.wait_for(llm.cancelled.wait(), 1.0)
