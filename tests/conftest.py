"""Shared fixtures: a fake LLM upstream and a gateway in front of it, both real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from meshkit import Mesh, build_app
from meshkit.spec import loads
from meshkit.testing import FakeLLM

SERVER_KWARGS = {"handler_cancellation": True}


def mesh_yaml(endpoint: str, **llm: Any) -> str:
    """A one-LLM services file pointing at ``endpoint``, both dialects mounted."""
    service = {"type": "llm", "endpoint": endpoint, "model": "llama3.2:1b", **llm}
    return yaml.safe_dump({
        "services": {"llm": service},
        "pipelines": {"chat": {"nodes": ["llm"]}},
        "gateway": {"routes": [{"dialect": "openai", "pipeline": "chat"},
                               {"dialect": "ollama", "pipeline": "chat"}]},
    })


GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    """A fake upstream with the seed's tokens, served on a free port; see ``fake.url``."""
    llm = FakeLLM()
    async with llm.serve() as url:
        llm.url = url  # type: ignore[attr-defined]
        yield llm


@pytest.fixture
async def gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> GatewayFactory:
    """Build a gateway from YAML text (or a fake's URL) and return a test client for it."""

    async def make(source: str | FakeLLM, **llm: Any) -> TestClient[Any, Any]:
        text = source if isinstance(source, str) else mesh_yaml(source.url, **llm)  # type: ignore[attr-defined]
        mesh = Mesh(loads(text, env={}))
        server = TestServer(build_app(mesh), **SERVER_KWARGS)
        return await aiohttp_client(server)

    return make
