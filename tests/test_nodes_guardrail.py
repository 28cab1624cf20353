"""The streaming guardrail and the tee: patterns split across chunks, bounded buffers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshkit import ChatRequest, Chunk, Completion, Context, HttpClient, Message
from meshkit.nodes.guardrail import Blocked, Guardrail, Scanner
from meshkit.streams import Tee

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

    @pytest.mark.parametrize(("exact", "held"), [(True, "12"), (False, "umber is 12")])
    def test_holds_back_only_a_possible_match(self, exact: bool, held: str) -> None:
        scanner = Scanner(SSN, max_match=12, exact=exact)
        safe, found = scanner.feed("my number is 12")
        assert not found
        assert scanner.pending == held and safe + held == "my number is 12"

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
