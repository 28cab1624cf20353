"""The RAG example against the real local model (Gemma 3 270M): embeddings and answers.

The model's words are not reproducible, so these tests assert what is: the retrieved
sources are the documents about the question, and the answer streams to the end.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from meshkit import Mesh, build_app
from meshkit.graph.embedded import LocalServer
from meshkit.spec import loads

from .test_rag import rag_yaml, sse_events

pytestmark = pytest.mark.slow


async def test_rag_with_the_local_model(aiohttp_client: Any) -> None:
    async with LocalServer(port=0, startup_timeout=600) as server:
        text = rag_yaml(server.url, server.url).replace("model: llama3.2:1b", "model: null")
        client = await aiohttp_client(TestServer(build_app(Mesh(loads(text, env={})))))
        for question, source in [
            ("Why is the sky blue? Explain Rayleigh scattering of sunlight.", "sky.md"),
            ("How do honey bees make honey from nectar?", "bees.md"),
        ]:
            resp = await client.post(
                "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": question}],
                    "stream": True,
                    "max_tokens": 24,
                },
            )
            assert resp.status == 200
            events = sse_events(await resp.text())
            assert any(e.get("choices") and e["choices"][0].get("finish_reason") for e in events)
            (report,) = [e["meshkit"] for e in events if "meshkit" in e]
            assert report["sources"][0]["source"] == source, json.dumps(report)
        resp = await client.post(
            "/api/chat",
            json={
                "messages": [
                    {"role": "user", "content": "Brewing green tea: what water temperature?"}
                ],
                "options": {"num_predict": 16},
            },
        )
        final = json.loads((await resp.text()).splitlines()[-1])
        assert final["done"] and final["meshkit"]["sources"][0]["source"] == "tea.md"
