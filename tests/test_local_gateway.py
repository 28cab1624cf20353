"""End to end: `meshkit serve services.yaml` with no LLM_ENDPOINT streams from the real
embedded model (Gemma 3 270M on llama.cpp). The model's words are not reproducible, so
these tests assert structure: chunk counts, finish reasons, token counts, shapes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jsonschema
import ollama
import openai
import pydantic
import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
PROMPT = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """The shipped services.yaml served with the environment unset, as a user runs it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "MESHKIT_"))}
    env.update(MESHKIT_PORT=str(port), MESHKIT_HOST="127.0.0.1", MESHKIT_LOG_LEVEL="warning")
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshkit", "serve", "services.yaml"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, f"meshkit serve exited: {proc.stderr.read()}"  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the gateway never became ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.fixture
async def oa(served: str) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def ol(served: str) -> ollama.AsyncClient:
    client = ollama.AsyncClient(host=served)
    yield client
    await client.close()


class TestOpenAI:
    """The official openai client against the embedded model."""

    async def test_models_list_the_local_model(self, oa: openai.AsyncOpenAI) -> None:
        assert [m.id for m in (await oa.models.list()).data] == ["gemma-3-270m"]

    async def test_stream(self, oa: openai.AsyncOpenAI) -> None:
        stream = await oa.chat.completions.create(
            model="gemma-3-270m",
            messages=PROMPT,
            stream=True,
            max_tokens=12,
            stream_options={"include_usage": True},
        )
        texts, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.choices:
                texts.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        assert sum(1 for t in texts if t) >= 3
        assert "".join(texts).strip()
        assert finish in ("stop", "length")
        assert usage is not None and 0 < usage.completion_tokens <= 13

    async def test_stream_ends_with_done(self, served: str) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                served + "/v1/chat/completions",
                json={"messages": PROMPT, "stream": True, "max_tokens": 6},
            ) as resp:
                events = [e for e in (await resp.text()).split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[0][6:])["model"] == "gemma-3-270m"

    async def test_not_streaming(self, oa: openai.AsyncOpenAI) -> None:
        result = await oa.chat.completions.create(
            model="gemma-3-270m", messages=PROMPT, max_tokens=8
        )
        assert result.choices[0].message.content
        assert result.choices[0].finish_reason in ("stop", "length")
        assert result.usage is not None and result.usage.prompt_tokens > 0

    async def test_unknown_model_is_404(self, oa: openai.AsyncOpenAI) -> None:
        with pytest.raises(openai.NotFoundError) as info:
            await oa.chat.completions.create(model="llama3.2:1b", messages=PROMPT)
        assert "llama3.2:1b" in str(info.value)

    async def test_three_concurrent_streams(self, oa: openai.AsyncOpenAI) -> None:
        async def one() -> tuple[int, str | None]:
            stream = await oa.chat.completions.create(
                model="gemma-3-270m", messages=PROMPT, stream=True, max_tokens=8
            )
            count, finish = 0, None
            async for chunk in stream:
                if chunk.choices:
                    count += bool(chunk.choices[0].delta.content)
                    finish = chunk.choices[0].finish_reason or finish
            return count, finish

        results = await asyncio.gather(one(), one(), one())
        assert all(count >= 1 and finish in ("stop", "length") for count, finish in results)

    async def test_disconnect_frees_the_model(self, served: str, oa: openai.AsyncOpenAI) -> None:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                served + "/v1/chat/completions",
                json={"messages": PROMPT, "stream": True, "max_tokens": 400},
            )
            seen = 0
            async for line in resp.content:
                seen += line.startswith(b"data: {")
                if seen >= 3:
                    break
            resp.close()
        # Were the long generation still running, this would queue behind ~400 tokens
        # (over ten seconds here); freed, it starts at once.
        started = time.monotonic()
        stream = await oa.chat.completions.create(
            model="gemma-3-270m", messages=PROMPT, stream=True, max_tokens=4
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        assert time.monotonic() - started < 8
        await stream.close()


class TestEmbeddings:
    """/v1/embeddings answered by the same embedded model."""

    async def test_batch_has_the_model_width(self, oa: openai.AsyncOpenAI) -> None:
        texts = [
            "The sky is blue because of Rayleigh scattering.",
            "Sunlight scatters off air molecules, more so for blue light.",
            "My grandmother's lasagna recipe uses three cheeses.",
        ]
        result = await oa.embeddings.create(model="gemma-3-270m", input=texts)
        vectors = [d.embedding for d in result.data]
        assert [d.index for d in result.data] == [0, 1, 2]
        assert {len(v) for v in vectors} == {640}

        def cosine(a: list[float], b: list[float]) -> float:
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])

    async def test_default_model(self, served: str) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(served + "/v1/embeddings", json={"input": "hi"}) as resp:
                body = await resp.json()
        assert resp.status == 200, body
        assert body["model"] == "gemma-3-270m"
        assert len(body["data"][0]["embedding"]) == 640


class TestOllama:
    """The official ollama client against the embedded model."""

    async def test_generate_stream(self, ol: ollama.AsyncClient) -> None:
        parts = [
            p
            async for p in await ol.generate(
                model="gemma-3-270m",
                prompt="Why is the sky blue?",
                stream=True,
                options={"num_predict": 10},
            )
        ]
        assert sum(1 for p in parts if p.response) >= 3
        last = parts[-1]
        assert last.done and last.done_reason in ("stop", "length")
        assert last.eval_count and last.prompt_eval_count

    async def test_chat_stream(self, ol: ollama.AsyncClient) -> None:
        parts = [
            p
            async for p in await ol.chat(
                model="gemma-3-270m", messages=PROMPT, stream=True, options={"num_predict": 10}
            )
        ]
        assert "".join(p.message.content or "" for p in parts).strip()
        assert parts[-1].done

    async def test_tags(self, ol: ollama.AsyncClient) -> None:
        assert [m.model for m in (await ol.list()).models] == ["gemma-3-270m"]

    async def test_unknown_model_is_404(self, ol: ollama.AsyncClient) -> None:
        with pytest.raises(ollama.ResponseError) as info:
            await ol.generate(model="llama3.2:1b", prompt="hi", stream=False)
        assert info.value.status_code == 404


CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class Capital(pydantic.BaseModel):
    city: str
    country: str


class TestStructuredOutput:
    """`meshkit serve` with no endpoint answers a JSON schema with JSON valid for it."""

    async def test_openai_parse_with_a_pydantic_model(self, oa: openai.AsyncOpenAI) -> None:
        result = await oa.chat.completions.parse(
            model="gemma-3-270m",
            messages=CAPITAL_QUESTION,
            response_format=Capital,
            max_tokens=60,
        )
        assert result.choices[0].finish_reason == "stop"
        assert isinstance(result.choices[0].message.parsed, Capital)

    async def test_ollama_format_schema(self, ol: ollama.AsyncClient) -> None:
        schema = Capital.model_json_schema()
        answer = await ol.chat(
            model="gemma-3-270m",
            messages=CAPITAL_QUESTION,
            format=schema,
            stream=False,
            options={"num_predict": 60},
        )
        assert answer.done_reason == "stop"
        jsonschema.validate(json.loads(answer.message.content or ""), schema)
