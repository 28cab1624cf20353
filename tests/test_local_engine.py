"""The local engine and node against the real Gemma 3 270M (structure, never words)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator

import attrs
import jsonschema
import pytest
import structlog

from meshkit.errors import BadRequest, NotFound
from meshkit.local import Generation, LlamaEngine, LocalLLM, TokenStream, resolve_model
from meshkit.local.service import fold_for_gemma
from meshkit.local.transcript import STOPS
from meshkit.nodes.base import Context
from meshkit.protocol import ChatRequest, Chunk, Completion, EmbeddingRequest, Message, Part

pytestmark = pytest.mark.slow

QUESTION = (("user", "Why is the sky blue?"),)


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    """One loaded model for the whole module (its worker thread outlives each test loop)."""
    eng = LlamaEngine(resolve_model())
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.close())


@pytest.fixture
async def llm(engine: LlamaEngine) -> LocalLLM:
    node = LocalLLM("llm", engine=engine)
    await node.open()
    return node


def ask(max_tokens: int = 12, text: str = "Why is the sky blue?") -> Generation:
    return Generation(messages=(("user", text),), max_tokens=max_tokens)


def chat(max_tokens: int = 12, *, stream: bool = True, model: str | None = None) -> ChatRequest:
    return ChatRequest(
        messages=(Message("user", "Why is the sky blue?"),),
        model=model,
        stream=stream,
        max_tokens=max_tokens,
    )


def ctx() -> Context:
    return Context(client=None)  # type: ignore[arg-type]  # the local node makes no calls


async def drain(stream: TokenStream) -> list[Chunk]:
    return [chunk async for chunk in stream]


def check_well_formed(chunks: list[Chunk], max_tokens: int) -> None:
    *texts, last = chunks
    assert texts and all(c.text and c.finish_reason is None for c in texts)
    assert last.text == "" and last.finish_reason in ("stop", "length")
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert 1 <= last.usage.completion_tokens <= max_tokens
    if last.finish_reason == "length":
        assert last.usage.completion_tokens == max_tokens


def cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


class TestGeneration:
    """Streaming and whole answers from the engine and the node."""

    async def test_stream_has_chunks_finish_and_usage(self, engine: LlamaEngine) -> None:
        chunks = await drain(engine.generate(ask(16)))
        assert len(chunks) >= 3
        check_well_formed(chunks, 16)
        assert {c.model for c in chunks} == {"gemma-3-270m"}

    async def test_node_streams_when_asked(self, llm: LocalLLM) -> None:
        result = await llm.process(chat(12), ctx())
        assert isinstance(result, TokenStream)
        check_well_formed(await drain(result), 12)

    async def test_node_answers_whole_completion(self, llm: LocalLLM) -> None:
        result = await llm.process(chat(12, stream=False), ctx())
        assert isinstance(result, Completion)
        assert result.text.strip()
        assert result.finish_reason in ("stop", "length")
        assert result.usage is not None and 1 <= result.usage.completion_tokens <= 12
        assert result.model == "gemma-3-270m"

    async def test_three_concurrent_streams_all_complete(self, engine: LlamaEngine) -> None:
        before = engine.stats.completed
        results = await asyncio.gather(*(drain(engine.generate(ask(10))) for _ in range(3)))
        for chunks in results:
            check_well_formed(chunks, 10)
        assert engine.stats.completed == before + 3

    async def test_prompt_longer_than_context_is_a_bad_request(self, llm: LocalLLM) -> None:
        long = ChatRequest(messages=(Message("user", "sky " * 6000),), max_tokens=4)
        with pytest.raises(BadRequest, match="context window"):
            await llm.process(long, ctx())


class TestCancellation:
    """A consumer that leaves frees the model for the next request."""

    async def test_early_close_stops_decode_and_next_request_runs(
        self, engine: LlamaEngine
    ) -> None:
        before = engine.stats.cancelled
        long = engine.generate(ask(400))
        with structlog.testing.capture_logs() as logs:
            seen = [await anext(long) for _ in range(2)]
            await long.aclose()
            async with asyncio.timeout(10):  # 400 tokens would take ~12 s
                check_well_formed(await drain(engine.generate(ask(4))), 4)
        assert all(chunk.text for chunk in seen)
        assert engine.stats.cancelled == before + 1
        events = [e for e in logs if e["event"].startswith("meshkit.local.generation_")]
        assert [e["event"] for e in events] == [
            "meshkit.local.generation_cancelled",
            "meshkit.local.generation_done",
        ]
        assert events[0]["observed_in_decode"] or events[0]["tokens"] < 400

    async def test_cancelled_reader_task_stops_generation(self, engine: LlamaEngine) -> None:
        before = engine.stats.cancelled
        stream = engine.generate(ask(400))
        await stream.started()

        async def read_all() -> list[Chunk]:
            return await drain(stream)

        reader = asyncio.create_task(read_all())
        await asyncio.sleep(0)  # let it block on the next chunk
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        async with asyncio.timeout(10):
            check_well_formed(await drain(engine.generate(ask(4))), 4)
        assert engine.stats.cancelled == before + 1

    async def test_queued_request_whose_consumer_left_never_runs(self, engine: LlamaEngine) -> None:
        dropped = engine.stats.dropped
        running = engine.generate(ask(40))
        await running.started()
        queued = engine.generate(ask(40))
        await queued.aclose()
        check_well_formed(await drain(running), 40)
        async with asyncio.timeout(10):
            check_well_formed(await drain(engine.generate(ask(4))), 4)
        assert engine.stats.dropped == dropped + 1

    async def test_arriving_request_does_not_abort_the_one_in_flight(
        self, engine: LlamaEngine
    ) -> None:
        first = engine.generate(ask(16))
        await first.started()
        second = engine.generate(ask(8))
        check_well_formed(await drain(first), 16)
        check_well_formed(await drain(second), 8)


class TestEmbeddings:
    """Mean-pooled vectors of the model's width."""

    async def test_batch_has_model_width_and_related_texts_are_closer(
        self, llm: LocalLLM, engine: LlamaEngine
    ) -> None:
        texts = (
            "The cat sat on the mat.",
            "A kitten was resting on the rug.",
            "Quarterly tax filings are due in April.",
        )
        result = await llm.embed(EmbeddingRequest(texts), ctx())
        width = await engine.width()
        assert width == 640
        assert len(result.vectors) == 3
        assert all(len(v) == width for v in result.vectors)
        assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-3) for v in result.vectors)
        cat, kitten, tax = result.vectors
        assert cosine(cat, kitten) > cosine(cat, tax)
        assert cosine(cat, kitten) > cosine(kitten, tax)
        assert result.usage is not None and result.usage.prompt_tokens > 0
        assert result.model == "gemma-3-270m"


class TestModelNames:
    """A request for another model is a 404, never a silent substitution."""

    @pytest.mark.parametrize("name", [None, "gemma-3-270m", "gemma-3-270m-q4_k_m"])
    async def test_own_names_are_served(self, llm: LocalLLM, name: str | None) -> None:
        result = await llm.process(chat(2, stream=False, model=name), ctx())
        assert isinstance(result, Completion)

    async def test_unknown_model_is_not_found(self, llm: LocalLLM) -> None:
        with pytest.raises(NotFound, match=re.escape("'llama3.2:1b' not found")) as caught:
            await llm.process(chat(2, model="llama3.2:1b"), ctx())
        assert caught.value.status == 404 and caught.value.param == "model"

    async def test_unknown_model_is_not_found_for_embeddings(self, llm: LocalLLM) -> None:
        with pytest.raises(NotFound):
            await llm.embed(EmbeddingRequest(("x",), model="nomic-embed-text"), ctx())

    async def test_models_lists_its_name(self, llm: LocalLLM) -> None:
        assert await llm.models(None) == ("gemma-3-270m",)  # type: ignore[arg-type]
        assert await llm.ready(None)  # type: ignore[arg-type]


class TestGemmaTurns:
    """Gemma's template has only user and model turns."""

    @pytest.mark.parametrize(
        ("messages", "expected"),
        [
            ([("user", "hi")], [("user", "hi")]),
            ([("system", "Be brief."), ("user", "hi")], [("user", "Be brief.\n\nhi")]),
            (
                [("developer", "A"), ("system", "B"), ("assistant", "x"), ("user", "y")],
                [("user", "A\n\nB"), ("assistant", "x"), ("user", "y")],
            ),
            ([("user", "q"), ("tool", "42")], [("user", "q"), ("user", "42")]),
        ],
    )
    def test_fold(self, messages: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
        assert fold_for_gemma(messages) == expected


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


def structured(fmt: dict[str, object], *, stream: bool = False) -> ChatRequest:
    return ChatRequest(
        messages=(Message("user", "What is the capital of France?"),),
        stream=stream,
        max_tokens=80,
        response_format=fmt,
    )


class TestTranscript:
    """The base model answers the turn instead of echoing it (structure, not words)."""

    async def test_answer_is_the_assistant_turn_only(self, llm: LocalLLM) -> None:
        result = await llm.process(chat(40, stream=False), ctx())
        assert isinstance(result, Completion)
        assert result.text and result.text == result.text.strip()
        assert not result.text.startswith("Why is the sky blue?")
        assert not any(stop.strip() in result.text for stop in STOPS)
        assert "<start_of_turn>" not in result.text


class TestStructuredOutput:
    """A JSON response format is enforced by a grammar: the answer parses and fits."""

    async def test_json_schema_answer_is_valid_for_the_schema(self, llm: LocalLLM) -> None:
        fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
        result = await llm.process(structured(fmt), ctx())
        assert isinstance(result, Completion) and result.finish_reason == "stop"
        jsonschema.validate(json.loads(result.text), CITY)
        assert result.text == result.text.strip()

    async def test_streamed_json_schema_answer_is_valid_too(self, llm: LocalLLM) -> None:
        fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
        stream = await llm.process(structured(fmt, stream=True), ctx())
        assert isinstance(stream, TokenStream)
        chunks = await drain(stream)
        assert chunks[-1].finish_reason == "stop"
        jsonschema.validate(json.loads("".join(c.text for c in chunks)), CITY)

    async def test_json_object_answer_is_an_object(self, llm: LocalLLM) -> None:
        result = await llm.process(structured({"type": "json_object"}), ctx())
        assert isinstance(result, Completion) and result.finish_reason == "stop"
        assert isinstance(json.loads(result.text), dict)

    async def test_schema_llama_cpp_cannot_compile_is_a_bad_request(self, llm: LocalLLM) -> None:
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}
        with pytest.raises(BadRequest) as caught:
            await llm.process(structured(fmt), ctx())
        assert caught.value.param == "response_format.json_schema.schema"


class TestRefused:
    """What the small text model cannot do is a 400 naming the field, never ignored."""

    @pytest.mark.parametrize(
        ("changes", "param"),
        [
            ({"tools": ({"type": "function", "function": {"name": "f"}},)}, "tools"),
            ({"think": True}, "think"),
            ({"logprobs": True}, "logprobs"),
            (
                {
                    "messages": (
                        Message("user", (Part("text", "What is it?"), Part.image("data:,"))),
                    )
                },
                "messages[0].content",
            ),
        ],
    )
    async def test_refused(self, llm: LocalLLM, changes: dict[str, object], param: str) -> None:
        request = attrs.evolve(chat(4, stream=False), **changes)
        with pytest.raises(BadRequest) as caught:
            await llm.process(request, ctx())
        assert caught.value.param == param
