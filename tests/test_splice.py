"""The gateway's fast path: a one-LLM stream pushed from the upstream's callbacks.

A pipeline that is one remote LLM hands the gateway an ``UpstreamStream``; the gateway
splices it (each chunk encoded and written from the upstream connection's own
callback) instead of pulling it chunk by chunk. These tests prove the fast path is
taken where it should be and nowhere else, that it answers exactly what the pull path
answers, and that a slow caller slows the upstream instead of filling memory.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from meshkit.gateway import dialect
from meshkit.gateway.app import MESH
from meshkit.nodes import llm as llm_module
from meshkit.testing import FakeLLM

from .conftest import until

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
TOKENS = [f" w{i}" for i in range(40)]
GRAPH = """
services:
  llm: {{type: llm, endpoint: "{url}", model: llama3.2:1b}}
  guard: {{type: guardrail, params: {{words: [forbidden]}}}}
pipelines:
  chat: {{edges: ["llm -> guard"]}}
"""


@pytest.fixture
def splices(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the streams the gateway spliced."""
    calls: list[int] = []
    real = llm_module.UpstreamStream.splice

    async def counting(self: Any, emit: Any) -> None:
        calls.append(1)
        await real(self, emit)

    monkeypatch.setattr(llm_module.UpstreamStream, "splice", counting)
    return calls


def force_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the gateway read every stream chunk by chunk (the general path)."""
    monkeypatch.setattr(dialect.Sink, "open", classmethod(lambda cls, *a: None))


def sse_payloads(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


class TestWhenSpliced:
    async def test_one_llm_stream_is_spliced_in_both_dialects(self, gateway, splices) -> None:
        llm = FakeLLM(tokens=TOKENS)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            events = sse_payloads(await resp.read())
            assert events[-1] == "[DONE]"
            resp = await gw.post("/api/chat", json=CHAT)
            lines = [json.loads(x) for x in (await resp.read()).splitlines()]
            assert lines[-1]["done"] is True
        assert len(splices) == 2

    async def test_a_graph_is_pulled_not_spliced(self, gateway, splices, tmp_path) -> None:
        llm = FakeLLM(tokens=TOKENS)
        async with llm.serve():
            gw = await gateway(GRAPH.format(url=llm.url))
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            events = sse_payloads(await resp.read())
        assert events[-1] == "[DONE]"
        text = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]
        )
        assert text == "".join(TOKENS)
        assert splices == []


class TestSameAnswer:
    """Splicing changes how chunks travel, never what the caller receives."""

    async def answers(self, gateway, path: str, body: dict[str, Any]) -> list[Any]:
        llm = FakeLLM(tokens=TOKENS)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post(path, json=body)
            assert resp.status == 200
            raw = await resp.read()
        if path.startswith("/v1"):
            return sse_payloads(raw)
        lines = [json.loads(x) for x in raw.splitlines()]
        for line in lines:  # wall-clock fields differ between any two runs
            for key in ("created_at", "total_duration", "load_duration", "eval_duration"):
                line.pop(key, None)
            line.pop("prompt_eval_duration", None)
        return lines

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/v1/chat/completions", CHAT),
            (
                "/v1/chat/completions",
                {**CHAT, "stream_options": {"include_usage": True}},
            ),
            ("/api/chat", CHAT),
            ("/api/generate", {"prompt": "hi"}),
        ],
    )
    async def test_spliced_equals_pulled(
        self, gateway, monkeypatch, splices, path: str, body: dict[str, Any]
    ) -> None:
        spliced = await self.answers(gateway, path, body)
        assert splices, "the fast path was not taken"
        force_pull(monkeypatch)
        pulled = await self.answers(gateway, path, body)
        if path.startswith("/v1"):
            # the same upstream events (ids are the fake's own and differ per request)
            for e in spliced + pulled:
                if isinstance(e, dict):
                    e.pop("id", None)
        assert spliced == pulled
        assert len(splices) == 1


class TestSlowCaller:
    """A caller that stops reading stops the upstream too; nothing piles up."""

    @pytest.mark.parametrize("graph", [False, True], ids=["spliced", "graph-pulled"])
    async def test_upstream_waits_for_a_caller_that_does_not_read(
        self, gateway, splices, graph: bool
    ) -> None:
        total = 30_000
        token = "x" * 1000
        llm = FakeLLM(tokens=[f"{i:06d}{token}" for i in range(total)])
        async with llm.serve():
            gw = await gateway(GRAPH.format(url=llm.url) if graph else llm)
            host, port = gw.server.host, gw.server.port
            sock = socket.socket()
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, (host, port))
            body = json.dumps({**CHAT, "model": "llama3.2:1b"}).encode()
            await loop.sock_sendall(
                sock,
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body),
            )
            try:
                await until(lambda: len(llm.sent) == 1 and len(llm.sent[0]) > 100)
                # The caller reads nothing: the upstream must come to a stop well
                # before its end (30 MB; the sockets' buffers on the way hold at most
                # about 9 MB here), held back by the gateway's pause.
                seen = -1
                while seen != len(llm.sent[0]):
                    seen = len(llm.sent[0])
                    await asyncio.sleep(0.3)
                assert seen < total // 2
                mesh = gw.server.app[MESH]
                assert mesh.client.connections_in_use == 1
                # Reading again lets everything through, whole and in order.
                raw = await read_until(sock, b"data: [DONE]\n\n", within=60)
            finally:
                sock.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        numbers = [
            int(e["choices"][0]["delta"]["content"][:6])
            for e in sse_payloads(dechunk(body))
            if isinstance(e, dict) and e["choices"] and e["choices"][0]["delta"].get("content")
        ]
        assert len(splices) == (0 if graph else 1)
        assert numbers == list(range(total))


async def read_until(sock: socket.socket, end: bytes, *, within: float) -> bytes:
    """Read from ``sock`` until ``end`` shows up (or the time is up)."""
    loop = asyncio.get_running_loop()
    parts = bytearray()
    async with asyncio.timeout(within):
        while end not in parts[-4096:]:
            data = await loop.sock_recv(sock, 1 << 16)
            if not data:
                break
            parts += data
    return bytes(parts)


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked body (as far as it goes)."""
    out = bytearray()
    at = 0
    while at < len(body):
        eol = body.index(b"\r\n", at)
        size = int(body[at:eol], 16)
        if size == 0:
            break
        out += body[eol + 2 : eol + 2 + size]
        at = eol + 4 + size
    return bytes(out)
