"""Bad input and upstream failures reach the caller in its own dialect's error shape."""

from __future__ import annotations

import json
import socket

import openai
import pytest

from meshkit.gateway import MESH
from meshkit.testing import FakeLLM

from .conftest import until

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def openai_error(body: dict) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestBadInput:
    """Malformed or ill-typed requests get a 400 naming the field."""

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            (b"{not json", "JSON"),
            (b"[1, 2]", "JSON object"),
            (b"", "body is empty"),
            (b" \n\t", "body is empty"),
            (json.dumps({"messages": "hi"}).encode(), "messages"),
            (json.dumps({}).encode(), "messages"),
            (json.dumps({**CHAT, "temperature": "hot"}).encode(), "temperature"),
            (json.dumps({**CHAT, "stream": "yes"}).encode(), "stream"),
            (json.dumps({**CHAT, "max_tokens": 1.5}).encode(), "max_tokens"),
            (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), "role"),
            (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "content"),
            (json.dumps({**CHAT, "model": 7}).encode(), "model"),
            (json.dumps({**CHAT, "options": [1]}).encode(), "'options'"),
        ],
    )
    async def test_openai_400(self, fake: FakeLLM, gateway, body: bytes, field: str) -> None:
        gw = await gateway(fake)
        resp = await gw.post("/v1/chat/completions", data=body)
        assert resp.status == 400
        error = openai_error(await resp.json())
        assert field in error["message"]
        assert error["type"] == "invalid_request_error"
        assert fake.requests == []

    async def test_openai_null_options_are_absent(self, fake: FakeLLM, gateway) -> None:
        gw = await gateway(fake)
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "options": None})
        assert resp.status == 200, await resp.text()
        assert "options" not in fake.requests[0]

    @pytest.mark.parametrize(
        ("path", "body", "field"),
        [
            ("/api/generate", b"{", "JSON"),
            ("/api/generate", json.dumps({"model": "m"}).encode(), "prompt"),
            ("/api/generate", json.dumps({"prompt": ["x"]}).encode(), "prompt"),
            (
                "/api/generate",
                json.dumps({"prompt": "x", "options": {"temperature": "hot"}}).encode(),
                "options.temperature",
            ),
            ("/api/chat", json.dumps({"messages": {"role": "user"}}).encode(), "messages"),
            ("/api/chat", json.dumps({"messages": [], "stream": False}).encode(), "messages"),
        ],
    )
    async def test_ollama_400(
        self, fake: FakeLLM, gateway, path: str, body: bytes, field: str
    ) -> None:
        gw = await gateway(fake)
        resp = await gw.post(path, data=body)
        assert resp.status == 400
        payload = await resp.json()
        assert set(payload) == {"error"} and isinstance(payload["error"], str)
        assert field in payload["error"]

    async def test_unknown_route_404_and_wrong_method_405(self, fake: FakeLLM, gateway) -> None:
        gw = await gateway(fake)
        resp = await gw.get("/v1/nothing")
        assert resp.status == 404
        openai_error(await resp.json())
        resp = await gw.get("/v1/chat/completions")
        assert resp.status == 405
        assert openai_error(await resp.json())["code"] == "method_not_allowed"
        resp = await gw.get("/api/generate")
        assert resp.status == 405
        assert isinstance((await resp.json())["error"], str)


class TestUpstreamFailsBeforeStreaming:
    """Failures before the first token become a status, never an empty 200."""

    async def test_refused_is_502(self, gateway) -> None:
        dead = FakeLLM()
        dead.url = f"http://127.0.0.1:{free_port()}"
        gw = await gateway(dead)
        for stream in (True, False):
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            assert resp.status == 502
            assert "cannot connect" in openai_error(await resp.json())["message"]
        resp = await gw.post("/api/generate", json={"prompt": "hi"})
        assert resp.status == 502
        assert "cannot connect" in (await resp.json())["error"]

    @pytest.mark.parametrize("status", [500, 502, 503])
    async def test_5xx_is_502(self, gateway, status: int) -> None:
        llm = FakeLLM(status=status)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True})
            assert resp.status == 502
            assert str(status) in openai_error(await resp.json())["message"]
            resp = await gw.post("/api/chat", json=CHAT)
            assert resp.status == 502

    async def test_upstream_404_passes_through(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        with pytest.raises(openai.NotFoundError) as info:
            await clients.openai(gw).chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
        assert "no-such-model" in str(info.value)
        resp = await gw.post("/api/generate", json={"model": "no-such-model", "prompt": "x"})
        assert resp.status == 404
        assert "no-such-model" in (await resp.json())["error"]

    @pytest.mark.parametrize("stream", [True, False])
    async def test_too_slow_is_504_and_upstream_cancelled(self, gateway, stream: bool) -> None:
        llm = FakeLLM(first_delay=30)
        async with llm.serve():
            gw = await gateway(llm, timeout=0.3)
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            assert resp.status == 504
            assert openai_error(await resp.json())["code"] == "upstream_timeout"
            mesh = gw.server.app[MESH]
            await until(lambda: mesh.client.connections_in_use == 0, 5)


class TestUpstreamFailsMidStream:
    """After the first byte the status is sent; the stream ends with an error event."""

    @pytest.mark.parametrize("fault", [{"drop_after": 2}, {"error_after": 2}])
    async def test_openai_final_error_event(self, gateway, fault: dict) -> None:
        llm = FakeLLM(**fault)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True})
            assert resp.status == 200
            events = [e for e in (await resp.text()).split("\n\n") if e]
            assert "data: [DONE]" not in events
            last = json.loads(events[-1].removeprefix("data: "))
            assert openai_error(last)["type"] == "upstream_error"
            texts = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
            assert [t for t in texts if t] == list(llm.tokens[:2])

    async def test_openai_client_raises(self, gateway, clients) -> None:
        llm = FakeLLM(drop_after=2)
        async with llm.serve():
            gw = await gateway(llm)
            stream = await clients.openai(gw).chat.completions.create(
                model="llama3.2:1b", messages=CHAT["messages"], stream=True
            )
            with pytest.raises(openai.APIError):
                async for _ in stream:
                    pass

    async def test_ollama_final_error_line(self, gateway) -> None:
        llm = FakeLLM(drop_after=3)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/api/generate", json={"prompt": "hi"})
            assert resp.status == 200
            lines = [json.loads(x) for x in (await resp.text()).splitlines()]
            assert [x["response"] for x in lines[:-1]] == list(llm.tokens[:3])
            assert set(lines[-1]) == {"error"}
