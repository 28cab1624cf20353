"""The streaming guardrail and the tee: patterns split across chunks, bounded buffers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from meshkit import (
    ChatRequest,
    Chunk,
    Completion,
    Context,
    HttpClient,
    Message,
    ToolCall,
    ToolCallDelta,
)
from meshkit.nodes.guardrail import Blocked, Guardrail, Scanner
from meshkit.protocol.streams import Tee

SSN = r"\b\d{3}-\d{2}-\d{4}\b"
TEXT = "Call me, my SSN is 123-45-6789 and that is all."


async def chunks(texts: list[str]) -> AsyncIterator[Chunk]:
    for t in texts:
        yield Chunk(t)
    yield Chunk("", "stop")


async def guarded(params: dict[str, Any], texts: list[str]) -> tuple[list[Chunk], Context]:
    ctx = Context(client=HttpClient())
    guard = Guardrail("guard", params=params)
    stream = await guard.process(chunks(texts), ctx)
    return [c async for c in stream], ctx


def splits(text: str) -> list[list[str]]:
    """Every way to cut ``text`` in two, plus one chunk per character."""
    return [[text[:i], text[i:]] for i in range(1, len(text))] + [list(text)]


class TestStreamingGuardrail:
    """Redacts or blocks however the pattern is split, releasing safe text early."""

    @pytest.mark.parametrize("pieces", splits(TEXT), ids=lambda p: "|".join(p)[:40])
    async def test_redacts_a_split_pattern(self, pieces: list[str]) -> None:
        out, ctx = await guarded({"patterns": [SSN]}, pieces)
        assert "".join(c.text for c in out) == TEXT.replace("123-45-6789", "[REDACTED]")
        assert ctx.meta["guardrail"]["matches"] == 1
        assert out[-1].finish_reason == "stop"

    @pytest.mark.parametrize("pieces", splits("the word PassWord123 is out"))
    async def test_blocks_a_split_word(self, pieces: list[str]) -> None:
        out, ctx = await guarded(
            {
                "words": ["password123"],
                "action": "block",
                "ignore_case": True,
                "message": "[stopped]",
            },
            pieces,
        )
        assert "".join(c.text for c in out) == "the word [stopped]"
        assert out[-1].finish_reason == "content_filter"
        assert ctx.meta["guardrail"]["action"] == "blocked"

    async def test_releases_safe_text_before_the_stream_ends(self) -> None:
        release = asyncio.Event()
        got: list[str] = []

        async def upstream() -> AsyncIterator[Chunk]:
            yield Chunk("Hello there, my number is 12")
            await release.wait()
            yield Chunk("3-45-6789.")
            yield Chunk("", "stop")

        guard = Guardrail("guard", params={"patterns": [SSN]})
        stream = await guard.process(upstream(), Context(client=HttpClient()))
        first = await anext(stream)
        got.append(first.text)
        # Only the possible start of a match ("12") is held back.
        assert first.text == "Hello there, my number is "
        release.set()
        got.extend([c.text async for c in stream])
        assert "".join(got) == "Hello there, my number is [REDACTED]."

    def test_holds_back_only_a_possible_match(self) -> None:
        scanner = Scanner(SSN)
        safe, found = scanner.feed("my number is 12")
        assert not found
        assert scanner.pending == "12" and safe == "my number is "

    async def test_short_safe_answer_is_released_at_once(self) -> None:
        release = asyncio.Event()

        async def upstream() -> AsyncIterator[Chunk]:
            yield Chunk("Hi there.")
            await release.wait()
            yield Chunk("", "stop")

        guard = Guardrail("guard", params={"patterns": [SSN]})
        stream = await guard.process(upstream(), Context(client=HttpClient()))
        # Nothing in "Hi there." can start a match, so none of it waits for the end.
        assert (await anext(stream)).text == "Hi there."
        release.set()
        assert [c.finish_reason async for c in stream] == ["stop"]

    async def test_guards_completions_and_requests(self) -> None:
        ctx = Context(client=HttpClient())
        guard = Guardrail("g", params={"patterns": [SSN]})
        done = await guard.process(Completion("id 123-45-6789"), ctx)
        assert done.text == "id [REDACTED]"
        request = ChatRequest(messages=(Message("user", "mine is 123-45-6789"),))
        assert (await guard.process(request, ctx)).prompt == "mine is [REDACTED]"
        blocker = Guardrail("b", params={"patterns": [SSN], "action": "block"})
        with pytest.raises(Blocked):
            await blocker.process(request, ctx)

    async def test_closing_the_guard_closes_its_upstream(self) -> None:
        closed = asyncio.Event()

        async def upstream() -> AsyncIterator[Chunk]:
            try:
                yield Chunk("a")
                yield Chunk("b")
            finally:
                closed.set()

        stream = await Guardrail("g", params={"words": ["zz"]}).process(
            upstream(), Context(client=HttpClient())
        )
        await anext(stream)
        await stream.aclose()
        assert closed.is_set()


def calls_of(out: list[Chunk]) -> dict[int, str]:
    """Each tool call's arguments as a client accumulates them, by index."""
    args: dict[int, str] = {}
    for chunk in out:
        for delta in chunk.tool_calls:
            args[delta.index] = args.get(delta.index, "") + delta.arguments
    return args


def tokens(text: str) -> list[dict[str, Any]]:
    """OpenAI-style logprob entries, one per character of ``text``."""
    return [{"token": ch, "logprob": -0.5, "top_logprobs": []} for ch in text]


async def stream_of(chunks_in: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks_in:
        yield chunk


async def guard_all(params: dict[str, Any], chunks_in: list[Chunk]) -> tuple[list[Chunk], Context]:
    ctx = Context(client=HttpClient())
    stream = await Guardrail("guard", params=params).process(stream_of(chunks_in), ctx)
    return [c async for c in stream], ctx


class TestChannels:
    """Reasoning and tool-call arguments are scanned like content, each on its own."""

    @pytest.mark.parametrize("pieces", splits(TEXT), ids=lambda p: "|".join(p)[:40])
    async def test_redacts_split_reasoning(self, pieces: list[str]) -> None:
        chunks_in = [Chunk(reasoning=p) for p in pieces] + [Chunk("ok", "stop")]
        out, ctx = await guard_all({"patterns": [SSN]}, chunks_in)
        assert "".join(c.reasoning for c in out) == TEXT.replace("123-45-6789", "[REDACTED]")
        assert "".join(c.text for c in out) == "ok"
        assert ctx.meta["guardrail"]["matches"] == 1

    @pytest.mark.parametrize("cut", range(1, 30))
    async def test_redacts_tool_arguments_split_across_fragments(self, cut: int) -> None:
        args = '{"ssn": "123-45-6789", "n": 1}'
        chunks_in = [
            Chunk(tool_calls=(ToolCallDelta(0, id="call_1", name="lookup"),)),
            Chunk(tool_calls=(ToolCallDelta(0, arguments=args[:cut]),)),
            Chunk(tool_calls=(ToolCallDelta(0, arguments=args[cut:]),)),
            Chunk(finish_reason="tool_calls"),
        ]
        out, _ = await guard_all({"patterns": [SSN]}, chunks_in)
        assert calls_of(out) == {0: '{"ssn": "[REDACTED]", "n": 1}'}
        first = out[0].tool_calls[0]
        assert (first.id, first.name) == ("call_1", "lookup")
        assert out[-1].finish_reason == "tool_calls"

    async def test_each_tool_call_has_its_own_scanner(self) -> None:
        # "123-45-" ends call 0 and "6789" starts call 1: no match across two calls.
        chunks_in = [
            Chunk(tool_calls=(ToolCallDelta(0, id="a", name="f", arguments="123-45-"),)),
            Chunk(tool_calls=(ToolCallDelta(1, id="b", name="f", arguments="6789"),)),
            Chunk(finish_reason="tool_calls"),
        ]
        out, ctx = await guard_all({"patterns": [r"\d{3}-\d{2}-\d{4}"]}, chunks_in)
        assert calls_of(out) == {0: "123-45-", 1: "6789"}
        assert "guardrail" not in ctx.meta

    async def test_earlier_call_is_released_when_the_next_one_starts(self) -> None:
        release = asyncio.Event()

        async def upstream() -> AsyncIterator[Chunk]:
            yield Chunk(tool_calls=(ToolCallDelta(0, id="a", name="f", arguments="id 123"),))
            yield Chunk(tool_calls=(ToolCallDelta(1, id="b", name="g", arguments="{}"),))
            await release.wait()
            yield Chunk(finish_reason="tool_calls")

        guard = Guardrail("guard", params={"patterns": [SSN]})
        stream = await guard.process(upstream(), Context(client=HttpClient()))
        first = await anext(stream)
        assert first.tool_calls == (ToolCallDelta(0, id="a", name="f", arguments="id "),)
        second = await anext(stream)
        # Call 0's held "123" is whole once call 1 begins.
        assert second.tool_calls == (
            ToolCallDelta(0, arguments="123"),
            ToolCallDelta(1, id="b", name="g", arguments="{}"),
        )
        release.set()
        assert [c.finish_reason async for c in stream] == ["tool_calls"]

    async def test_reasoning_hold_back_releases_safe_text_early(self) -> None:
        release = asyncio.Event()

        async def upstream() -> AsyncIterator[Chunk]:
            yield Chunk(reasoning="Thinking about 12")
            await release.wait()
            yield Chunk(reasoning="3-45-6789 now")
            yield Chunk("done", "stop")

        guard = Guardrail("guard", params={"patterns": [SSN]})
        stream = await guard.process(upstream(), Context(client=HttpClient()))
        assert (await anext(stream)).reasoning == "Thinking about "
        release.set()
        rest = [c async for c in stream]
        assert "".join(c.reasoning for c in rest) == "[REDACTED] now"

    async def test_blocks_on_tool_arguments(self) -> None:
        chunks_in = [
            Chunk("Calling.", tool_calls=(ToolCallDelta(0, id="a", name="f", arguments='{"p": '),)),
            Chunk(tool_calls=(ToolCallDelta(0, arguments='"password123"}'),)),
            Chunk(finish_reason="tool_calls"),
        ]
        out, ctx = await guard_all(
            {"words": ["password123"], "action": "block", "message": "[stopped]"}, chunks_in
        )
        assert "".join(c.text for c in out) == "Calling.[stopped]"
        assert "password123" not in calls_of(out).get(0, "")
        assert out[-1].finish_reason == "content_filter"
        assert ctx.meta["guardrail"]["action"] == "blocked"

    async def test_untouched_chunk_keeps_its_raw_payload(self) -> None:
        chunk = Chunk("fine", reasoning="calm").relaying(b'{"x": 1}')
        out, _ = await guard_all({"patterns": [SSN]}, [chunk, Chunk("", "stop")])
        assert out[0].raw == b'{"x": 1}'

    async def test_a_changed_chunk_never_keeps_the_raw_payload(self) -> None:
        """However a node copies a chunk, the copy cannot relay the original's bytes."""
        chunk = Chunk("my id 123-45-6789", id="c1").relaying(b'{"x": 1}')
        assert chunk.raw == b'{"x": 1}'
        assert attrs.evolve(chunk, text="my id").raw is None
        assert chunk.replace(text="my id").raw is None
        assert chunk.replace_text("my id").raw is None
        out, _ = await guard_all({"patterns": [SSN]}, [chunk, Chunk("", "stop")])
        assert "".join(c.text for c in out) == "my id [REDACTED]"
        assert all(c.raw is None for c in out)

    async def test_logprobs_travel_with_their_held_text(self) -> None:
        pieces = ["Call 12", "3 now", " please"]
        chunks_in = [Chunk(p, logprobs={"content": tokens(p)}) for p in pieces]
        out, _ = await guard_all({"patterns": [SSN]}, [*chunks_in, Chunk("", "stop")])
        # "12" waits for the next chunk, and its logprobs wait with it.
        assert [c.text for c in out][:2] == ["Call ", "123 now"]
        assert out[0].logprobs is None
        assert out[1].logprobs == {"content": tokens("Call 123 now")}
        spelled = "".join(e["token"] for c in out if c.logprobs for e in c.logprobs["content"])
        assert spelled == "".join(pieces) == "".join(c.text for c in out)

    async def test_logprobs_of_redacted_text_are_dropped(self) -> None:
        pieces = ["my id ", "123-45-6789", " ok"]
        chunks_in = [Chunk(p, logprobs={"content": tokens(p)}) for p in pieces]
        out, _ = await guard_all({"patterns": [SSN]}, [*chunks_in, Chunk("", "stop")])
        assert "".join(c.text for c in out) == "my id [REDACTED] ok"
        spelled = "".join(e["token"] for c in out if c.logprobs for e in c.logprobs["content"])
        assert spelled == "my id "

    async def test_completion_reasoning_and_tool_calls(self) -> None:
        ctx = Context(client=HttpClient())
        guard = Guardrail("g", params={"patterns": [SSN]})
        done = Completion(
            "ok",
            logprobs={"content": tokens("ok")},
            reasoning="user 123-45-6789",
            tool_calls=(ToolCall("a", "f", '{"ssn": "123-45-6789"}'),),
            finish_reason="tool_calls",
        )
        out = await guard.process(done, ctx)
        assert out.logprobs == {"content": tokens("ok")}  # the text itself was clean
        assert out.reasoning == "user [REDACTED]"
        assert out.tool_calls == (ToolCall("a", "f", '{"ssn": "[REDACTED]"}'),)
        assert ctx.meta["guardrail"]["matches"] == 2
        redacted = await guard.process(
            Completion("id 123-45-6789", logprobs={"content": tokens("id 123-45-6789")}), ctx
        )
        assert redacted.text == "id [REDACTED]" and redacted.logprobs is None
        blocker = Guardrail("b", params={"patterns": [SSN], "action": "block"})
        blocked = await blocker.process(done, ctx)
        assert blocked.finish_reason == "content_filter" and blocked.tool_calls == ()
        assert "123-45-6789" not in blocked.reasoning


class TestTee:
    """One stream, several readers, bounded memory."""

    async def test_slow_branch_holds_back_the_fast_one(self) -> None:
        pulled = 0

        async def source() -> AsyncIterator[int]:
            nonlocal pulled
            for i in range(100):
                pulled += 1
                yield i

        tee = Tee(source(), 2, buffer=5)
        fast, slow = tee.branches
        got: list[int] = []

        async def read_fast() -> None:
            async for item in fast:
                got.append(item)

        task = asyncio.create_task(read_fast())
        for _ in range(50):
            await asyncio.sleep(0)
        assert got == [0, 1, 2, 3, 4] and pulled == 5  # blocked by the slow branch
        assert [await anext(slow) for _ in range(3)] == [0, 1, 2]
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(got) == 8
        await slow.aclose()  # a closed branch no longer holds the others back
        await task
        assert got == list(range(100)) and tee.high_water == 5

    async def test_error_reaches_every_branch_and_closing_all_closes_source(self) -> None:
        async def broken() -> AsyncIterator[int]:
            yield 1
            raise ValueError("boom")

        tee = Tee(broken(), 2)
        for branch in tee.branches:
            assert await anext(branch) == 1
            with pytest.raises(ValueError, match="boom"):
                await anext(branch)

        closed = asyncio.Event()

        async def endless() -> AsyncIterator[int]:
            try:
                while True:
                    yield 0
            finally:
                closed.set()

        tee = Tee(endless(), 2)
        for branch in tee.branches:
            await anext(branch)
        await tee.branches[0].aclose()
        assert not closed.is_set()
        await tee.branches[1].aclose()
        assert closed.is_set()
