"""The examples run: the seed's ExampleService as a process, and its YAML twin."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import aiohttp

from meshkit import build_app
from meshkit.graph.mesh import Mesh
from meshkit.spec import load
from meshkit.testing import FakeLLM

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_healthy(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert proc.returncode is None, "the example exited"
            try:
                async with session.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the example never became healthy")


class TestExampleService:
    """examples/example_service.py, the seed's service."""

    async def test_runs_as_a_process_and_streams(self, fake: FakeLLM) -> None:
        port = free_port()
        env = {
            **os.environ,
            "LLM_ENDPOINT": fake.url,
            "EXAMPLE_PORT": str(port),
            "EXAMPLE_HOST": "127.0.0.1",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "examples" / "example_service.py"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(url, proc)
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    url + "/api/generate", json={"prompt": "Why is the sky blue?"}
                ) as resp:
                    lines = [json.loads(x) async for x in resp.content if x.strip()]
                async with session.post(
                    url + "/v1/example-service",
                    json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
                ) as resp:
                    events = (await resp.text()).split("\n\n")
            assert [x["response"] for x in lines[:-1]] == ["The", " sky", " appears", " blue", "."]
            assert lines[-1]["done"] is True
            assert "data: [DONE]" in events
            assert fake.requests[0]["model"] == "llama3.2:1b"
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)

    async def test_in_process(self, fake: FakeLLM, aiohttp_client) -> None:
        sys.path.insert(0, str(ROOT))
        try:
            from examples.example_service import example_service
        finally:
            sys.path.remove(str(ROOT))
        client = await aiohttp_client(example_service(llm_endpoint=fake.url).application())
        resp = await client.post(
            "/v1/example-service", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        body = await resp.json()
        assert body["choices"][0]["message"]["content"] == "The sky appears blue."


class TestYamlTwin:
    """examples/example_service.yaml declares the same chain."""

    async def test_chain_from_yaml(self, fake: FakeLLM, aiohttp_client, monkeypatch) -> None:
        monkeypatch.syspath_prepend(str(ROOT))
        mesh = Mesh(
            load(ROOT / "examples" / "example_service.yaml", env={"LLM_ENDPOINT": fake.url})
        )
        client = await aiohttp_client(build_app(mesh))
        resp = await client.post(
            "/api/chat", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        lines = [json.loads(x) for x in (await resp.text()).splitlines()]
        assert "".join(x["message"]["content"] for x in lines) == "The sky appears blue."
        sent = fake.requests[-1]["messages"]
        assert sent[0] == {"role": "system", "content": "You are a concise assistant."}

    def test_chat_example_is_valid(self) -> None:
        Mesh(load(ROOT / "examples" / "chat" / "services.yaml", env={}))
