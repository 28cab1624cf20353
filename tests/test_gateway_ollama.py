"""The Ollama dialect through the gateway, driven by the official `ollama` client."""

from __future__ import annotations

import json

import pytest

from meshkit.protocol.ollama import parse_chat
from meshkit.testing import FakeLLM


class TestGenerate:
    """POST /api/generate."""

    async def test_stream_every_token_then_done(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        parts = [
            p
            async for p in await clients.ollama(gw).generate(
                model="llama3.2:1b", prompt="Why is the sky blue?", stream=True
            )
        ]
        assert [p.response for p in parts if not p.done] == list(fake.tokens)
        last = parts[-1]
        assert last.done and last.done_reason == "stop"
        assert last.eval_count == len(fake.tokens)
        assert last.prompt_eval_count == 3
        assert last.total_duration is not None and last.total_duration > 0

    async def test_streams_by_default_as_ndjson(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        resp = await gw.post("/api/generate", json={"prompt": "Why is the sky blue?"})
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in (await resp.text()).splitlines()]
        assert [x["response"] for x in lines[:-1]] == ["The", " sky", " appears", " blue", "."]
        assert lines[-1]["done"] is True
        assert all(x["model"] == "llama3.2:1b" for x in lines)

    async def test_not_streaming(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        result = await clients.ollama(gw).generate(model="llama3.2:1b", prompt="hi", stream=False)
        assert result.response == "".join(fake.tokens)
        assert result.done

    async def test_system_and_options_forwarded(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        await clients.ollama(gw).generate(
            model="llama3.2:1b",
            prompt="hi",
            system="be brief",
            stream=False,
            options={"temperature": 0.1, "num_predict": 5},
        )
        sent = fake.requests[-1]
        assert sent["model"] == "llama3.2:1b"
        assert sent["messages"][0] == {"role": "system", "content": "be brief"}
        assert (sent["temperature"], sent["max_tokens"]) == (0.1, 5)


class TestChat:
    """POST /api/chat and GET /api/tags."""

    async def test_chat_stream(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        parts = [
            p
            async for p in await clients.ollama(gw).chat(
                model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        ]
        assert "".join(p.message.content or "" for p in parts) == "".join(fake.tokens)
        assert [p.message.role for p in parts] == ["assistant"] * len(parts)
        assert parts[-1].done and parts[-1].done_reason == "stop"

    async def test_chat_not_streaming(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        result = await clients.ollama(gw).chat(
            model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], stream=False
        )
        assert result.message.content == "".join(fake.tokens)

    async def test_tags_list_upstream_models(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        listing = await clients.ollama(gw).list()
        assert [m.model for m in listing.models] == ["llama3.2:1b"]


class TestPlainChat:
    """A chat of only model, messages and stream parses as the full reader would."""

    @pytest.mark.parametrize("stream", [True, False, None])
    def test_same_as_with_every_other_field_null(self, stream: bool | None) -> None:
        plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        full = {**plain, "options": {}, "format": None, "keep_alive": None, "tools": None}
        fast = parse_chat(json.dumps(plain).encode())
        assert fast == parse_chat(json.dumps(full).encode())
        assert fast.stream is (stream is not False) and fast.model == "m" and fast.extra == {}
