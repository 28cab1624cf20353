"""The OpenAI dialect through the gateway, driven by the official `openai` client."""

from __future__ import annotations

import json

import openai
import pytest

from meshkit.protocol.openai import parse_request
from meshkit.testing import FakeLLM


class TestChatCompletions:
    """POST /v1/chat/completions, streaming and not."""

    async def test_stream_delivers_every_token_in_order(
        self, fake: FakeLLM, gateway, clients
    ) -> None:
        gw = await gateway(fake)
        stream = await clients.openai(gw).chat.completions.create(
            model="llama3.2:1b",
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
            stream=True,
        )
        pieces, finishes = [], []
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content)
                finishes.append(chunk.choices[0].finish_reason)
        assert [p for p in pieces if p] == list(fake.tokens)
        assert finishes[-1] == "stop"

    async def test_stream_ends_with_done(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        resp = await gw.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        )
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        body = await resp.text()
        events = [e for e in body.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert all(e.startswith("data: ") for e in events)

    async def test_usage_only_when_asked(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        stream = await clients.openai(gw).chat.completions.create(
            model="llama3.2:1b",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        usages = [c.usage async for c in stream if c.usage is not None]
        assert len(usages) == 1
        assert usages[0].completion_tokens == len(fake.tokens)
        resp = await gw.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        )
        assert '"usage"' not in await resp.text()

    async def test_non_streaming_has_message_and_usage(
        self, fake: FakeLLM, gateway, clients
    ) -> None:
        gw = await gateway(fake)
        result = await clients.openai(gw).chat.completions.create(
            model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}]
        )
        assert result.object == "chat.completion"
        assert result.choices[0].message.content == "".join(fake.tokens)
        assert result.choices[0].finish_reason == "stop"
        assert result.usage is not None and result.usage.total_tokens == 3 + len(fake.tokens)

    async def test_default_model_filled_in(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        resp = await gw.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert resp.status == 200
        assert fake.requests[-1]["model"] == "llama3.2:1b"

    async def test_sampling_options_forwarded(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        await clients.openai(gw).chat.completions.create(
            model="llama3.2:1b",
            messages=[{"role": "user", "content": "hi"}],
            temperature=0.2,
            max_tokens=7,
            stop=["\n"],
            seed=3,
        )
        sent = fake.requests[-1]
        assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["seed"]) == (
            0.2,
            7,
            ["\n"],
            3,
        )


class TestModels:
    """GET /v1/models lists what the upstream lists; embeddings need a service."""

    async def test_models_come_from_upstream(self, gateway, clients) -> None:
        llm = FakeLLM(model_names=("llama3.2:1b", "qwen2:0.5b"))
        async with llm.serve():
            gw = await gateway(llm)
            page = await clients.openai(gw).models.list()
            assert [m.id for m in page.data] == ["llama3.2:1b", "qwen2:0.5b"]

    async def test_embeddings_without_service_is_404(self, fake: FakeLLM, gateway, clients) -> None:
        gw = await gateway(fake)
        with pytest.raises(openai.NotFoundError) as info:
            await clients.openai(gw).embeddings.create(model="x", input=["a"])
        assert "embedding" in json.dumps(info.value.body)


class TestPlainRequest:
    """A chat of only model, messages and stream parses as the full reader would."""

    @pytest.mark.parametrize("stream", [True, False, None])
    def test_same_as_with_every_other_field_null(self, stream: bool | None) -> None:
        plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        full = {**plain, "temperature": None, "stop": None, "n": 1, "stream_options": None}
        fast = parse_request(json.dumps(plain).encode())
        assert fast == parse_request(json.dumps(full).encode())
        assert fast.stream is bool(stream) and fast.model == "m" and fast.extra == {}
