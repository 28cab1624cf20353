"""`App`: pipelines built in code, served on a port that the app owns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshkit import App, Context, MicroService, RemoteLLM, ServiceOrchestrator
from meshkit.cli import BACKLOG, backlog_capped
from meshkit.testing import FakeLLM


class Shout(MicroService):
    """A custom node that upper-cases the caller's text and records its lifecycle."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.events: list[str] = []

    async def open(self, client: Any) -> None:
        self.events.append("open")

    async def close(self) -> None:
        self.events.append("close")

    async def process(self, data: Any, ctx: Context) -> str:
        return data.prompt.upper()


class TestApp:
    """Mounting, serving and the lifecycle the app owns."""

    async def test_lone_node_in_both_dialects(self, aiohttp_client: Any) -> None:
        node = Shout("shout")
        app = App().mount(node).mount(node, dialect="ollama", prefix="/o")
        client = await aiohttp_client(app.application())
        assert node.events == ["open", "open"]  # each mount is its own one-node pipeline
        resp = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert (await resp.json())["choices"][0]["message"]["content"] == "HI"
        resp = await client.post("/o/api/generate", json={"prompt": "yo", "stream": False})
        assert (await resp.json())["response"] == "YO"
        await client.close()
        assert node.events[-2:] == ["close", "close"]

    async def test_pipeline_with_a_chat_path_streams(
        self, fake: FakeLLM, aiohttp_client: Any
    ) -> None:
        llm = RemoteLLM("llm", endpoint=fake.url, model="llama3.2:1b")
        pipeline = ServiceOrchestrator("chat").add(llm)
        app = App().mount(pipeline, chat_path="/v1/mine").mount(pipeline, dialect="ollama")
        client = await aiohttp_client(app.application())
        resp = await client.post(
            "/v1/mine", json={"messages": [{"role": "user", "content": "hi"}], "stream": True}
        )
        events = [e for e in (await resp.text()).split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        resp = await client.post("/api/generate", json={"prompt": "hi"})
        lines = [json.loads(x) for x in (await resp.text()).splitlines()]
        assert "".join(x["response"] for x in lines) == "The sky appears blue."
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["services"] == {"llm": True}

    def test_unknown_dialect_is_refused(self) -> None:
        with pytest.raises(ValueError, match="grpc"):
            App().mount(Shout("x"), dialect="grpc")


class TestBacklog:
    """``meshkit serve`` tells when the kernel caps its listen backlog (issue 16)."""

    def test_a_cap_below_the_backlog_is_reported(self, tmp_path: Path) -> None:
        somaxconn = tmp_path / "somaxconn"
        somaxconn.write_text("128\n")
        assert backlog_capped(BACKLOG, str(somaxconn)) == 128

    def test_a_cap_at_or_above_the_backlog_is_not(self, tmp_path: Path) -> None:
        somaxconn = tmp_path / "somaxconn"
        for value in (str(BACKLOG), "65535"):
            somaxconn.write_text(value)
            assert backlog_capped(BACKLOG, str(somaxconn)) is None

    def test_no_setting_to_read_is_not_a_cap(self, tmp_path: Path) -> None:
        assert backlog_capped(BACKLOG, str(tmp_path / "absent")) is None
        (tmp_path / "garbled").write_text("many")
        assert backlog_capped(BACKLOG, str(tmp_path / "garbled")) is None
