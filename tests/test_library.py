"""meshkit as a library: nodes and an orchestrator in code, no HTTP server of our own."""

from __future__ import annotations

from typing import Any

import pytest

import meshkit
from meshkit import (
    ChatRequest,
    Completion,
    Context,
    GraphError,
    Message,
    MicroService,
    RemoteLLM,
    ServiceOrchestrator,
)
from meshkit.testing import FakeLLM

from .conftest import free_port


class Shout(MicroService):
    """Upper-cases every chunk of a stream as it passes."""

    async def process(self, data: Any, ctx: Context) -> Any:
        async def run() -> Any:
            async for chunk in data:
                yield chunk.replace_text(chunk.text.upper())

        return run()


def ask(stream: bool) -> ChatRequest:
    return ChatRequest(messages=(Message("user", "hi"),), stream=stream)


class TestPublicApi:
    """What `import meshkit` offers."""

    def test_all_is_sorted_and_importable(self) -> None:
        assert meshkit.__all__ == sorted(meshkit.__all__)
        for name in meshkit.__all__:
            assert hasattr(meshkit, name), name

    def test_version(self) -> None:
        assert meshkit.__version__.count(".") >= 2


class TestOrchestratorInCode:
    """add(), flow_to(), run()."""

    async def test_stream_through_a_chain(self, fake: FakeLLM) -> None:
        mesh = ServiceOrchestrator().add(RemoteLLM("llm", endpoint=fake.url, model="llama3.2:1b"))
        mesh.add(Shout("shout")).flow_to("llm", "shout")
        async with mesh:
            stream = await mesh.run(ask(stream=True))
            texts = [chunk.text async for chunk in stream]
        assert [t for t in texts if t] == [t.upper() for t in fake.tokens]

    async def test_value_when_not_streaming(self, fake: FakeLLM) -> None:
        mesh = ServiceOrchestrator().add(RemoteLLM("llm", endpoint=fake.url, model="llama3.2:1b"))
        async with mesh:
            result = await mesh.run(ask(stream=False))
        assert isinstance(result, Completion)
        assert result.text == "The sky appears blue."
        assert result.usage is not None and result.usage.completion_tokens == 5

    async def test_ollama_native_upstream(self, fake: FakeLLM) -> None:
        llm = RemoteLLM("llm", endpoint=fake.url, api="ollama", model="llama3.2:1b")
        async with ServiceOrchestrator().add(llm) as mesh:
            result = await mesh.run(ask(stream=False))
            assert result.text == "The sky appears blue."
            stream = await mesh.run(ask(stream=True))
            chunks = [c async for c in stream]
        assert "".join(c.text for c in chunks) == "The sky appears blue."
        assert chunks[-1].finish_reason == "stop"

    def test_graph_errors(self) -> None:
        mesh = ServiceOrchestrator()
        llm = RemoteLLM("llm", endpoint=f"http://127.0.0.1:{free_port()}")
        mesh.add(llm)
        with pytest.raises(GraphError, match="exists already"):
            mesh.add(RemoteLLM("llm", endpoint="http://x:1"))
        with pytest.raises(GraphError, match="unknown node"):
            mesh.flow_to("llm", "nowhere")
        mesh.add(Shout("a"))
        mesh.flow_to("llm", "a")
        with pytest.raises(GraphError, match="cycle"):
            mesh.flow_to("a", "llm")

    async def test_upstream_errors_are_mesh_errors(self) -> None:
        dead = RemoteLLM("llm", endpoint=f"http://127.0.0.1:{free_port()}")
        async with ServiceOrchestrator().add(dead) as mesh:
            with pytest.raises(meshkit.UpstreamUnavailable):
                await mesh.run(ask(stream=True))


class TestHealth:
    """/healthz is liveness, /readyz follows the upstream."""

    async def test_ready_while_upstream_answers(self, fake: FakeLLM, gateway) -> None:
        gw = await gateway(fake)
        assert (await gw.get("/healthz")).status == 200
        resp = await gw.get("/readyz")
        assert resp.status == 200
        assert (await resp.json())["services"] == {"llm": True}

    async def test_not_ready_when_upstream_is_gone(self, gateway) -> None:
        dead = FakeLLM()
        dead.url = f"http://127.0.0.1:{free_port()}"
        gw = await gateway(dead)
        assert (await gw.get("/healthz")).status == 200
        resp = await gw.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["services"] == {"llm": False}


class TestOllamaBodyEdges:
    """Ollama NDJSON bodies parse however the bytes are split."""

    async def test_last_record_without_newline(self, aiohttp_server) -> None:
        from aiohttp import web

        async def chat(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            await response.write(b'{"message": {"content": "Hel"}, "done": false}\n{"mess')
            await response.write(b'age": {"content": "lo"}, "done": false}\n')
            await response.write(
                b'{"message": {"content": "!"}, "done": true, "done_reason": "stop", '
                b'"prompt_eval_count": 2, "eval_count": 3}'
            )
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/api/chat", chat)
        server = await aiohttp_server(app)
        llm = RemoteLLM("llm", endpoint=str(server.make_url("")), api="ollama", model="m")
        async with ServiceOrchestrator().add(llm) as mesh:
            chunks = [c async for c in await mesh.run(ask(stream=True))]
        assert "".join(c.text for c in chunks) == "Hello!"
        assert chunks[-1].finish_reason == "stop"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
