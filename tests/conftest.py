"""Shared fixtures: a fake LLM upstream and a gateway in front of it, both real servers."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import ollama
import openai
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from meshkit import Mesh, build_app
from meshkit.gateway.intake_serve import IntakeRunner
from meshkit.spec import loads
from meshkit.testing import FakeLLM

SERVER_KWARGS = {"handler_cancellation": True}
#: Which intake the ``gateway`` fixture serves through: ``lean`` (as ``meshkit serve``
#: does) unless ``MESHKIT_TEST_INTAKE=aiohttp`` (aiohttp's own test server).
INTAKE = os.environ.get("MESHKIT_TEST_INTAKE", "lean")


class LeanTestServer(TestServer):
    """aiohttp's test server, listening through meshkit's :class:`IntakeRunner` (the lean
    intake in front of the chat endpoints, as under ``meshkit serve``)."""

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.runner:
            return
        runner = self.runner = IntakeRunner(self.app, **{**SERVER_KWARGS, **kwargs})
        await runner.setup()
        await runner.site(self.host, self.port or 0).start()
        self.port = runner.addresses[0][1]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")


def mesh_yaml(endpoint: str, **llm: Any) -> str:
    """A one-LLM services file pointing at ``endpoint``, both dialects mounted."""
    service = {"type": "llm", "endpoint": endpoint, "model": "llama3.2:1b", **llm}
    return yaml.safe_dump(
        {
            "services": {"llm": service},
            "pipelines": {"chat": {"nodes": ["llm"]}},
            "gateway": {
                "routes": [
                    {"dialect": "openai", "pipeline": "chat"},
                    {"dialect": "ollama", "pipeline": "chat"},
                ]
            },
        }
    )


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpServer:
    """A raw TCP server on 127.0.0.1 (its ``url`` set once entered) that runs
    :meth:`_serve` as a task for each connection; leaving it cancels those left."""

    def __init__(self) -> None:
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (the subclass's part)."""
        raise NotImplementedError


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (polled: counters have no event to await).

    ``within`` only bounds a hang; it is generous so that a loaded CI machine never
    turns a slow clean-up into a failure.
    """
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    """A fake upstream with the seed's tokens, served on a free port; see ``fake.url``."""
    llm = FakeLLM()
    async with llm.serve():
        yield llm


@pytest.fixture
async def gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> GatewayFactory:
    """Build a gateway from YAML text (or a fake's URL) and return a test client for it."""

    async def make(source: str | FakeLLM, **llm: Any) -> TestClient[Any, Any]:
        text = source if isinstance(source, str) else mesh_yaml(source.url, **llm)
        mesh = Mesh(loads(text, env={}))
        serving = LeanTestServer if INTAKE == "lean" else TestServer
        server = serving(build_app(mesh), **SERVER_KWARGS)
        return await aiohttp_client(server)

    return make


class Clients:
    """Official client libraries pointed at a test gateway; closed after the test."""

    def __init__(self) -> None:
        self._open: list[Any] = []

    def openai(self, gw: TestClient[Any, Any], **kwargs: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=str(gw.make_url("/v1")),
            api_key=kwargs.pop("api_key", "unused"),
            max_retries=0,
            **kwargs,
        )
        self._open.append(client)
        return client

    def ollama(self, gw: TestClient[Any, Any], **kwargs: Any) -> ollama.AsyncClient:
        client = ollama.AsyncClient(host=str(gw.make_url("")), **kwargs)
        self._open.append(client)
        return client

    async def close(self) -> None:
        for client in self._open:
            await client.close()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Factory for `openai` / `ollama` clients talking to a gateway."""
    made = Clients()
    yield made
    await made.close()
