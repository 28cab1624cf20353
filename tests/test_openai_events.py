"""An OpenAI stream's events in: plain text deltas recognised from their bytes give
exactly the chunks (and raw payloads) that parsing gives; everything else is parsed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from meshkit.errors import UpstreamError
from meshkit.nodes.upstream import LineParser
from meshkit.protocol import openai
from meshkit.protocol.openai_events import Events
from meshkit.protocol.types import Chunk, Usage, relayed_chunk
from meshkit.protocol.wire import END, sse_event

UP = openai.Upstream("llm")
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def line(
    delta: dict[str, Any] | None = None,
    *,
    finish: str | None = None,
    logprobs: Any = None,
    ascii_only: bool = False,
    spaced: bool = False,
    **top: Any,
) -> bytes:
    """One ``data:`` line, written compactly (as most servers do) or with spaces."""
    choice = {"index": 0, "delta": {} if delta is None else delta}
    choice |= {"logprobs": logprobs, "finish_reason": finish}
    obj = {**BASE, "choices": [choice], **top}
    separators = (", ", ": ") if spaced else (",", ":")
    return b"data: " + json.dumps(obj, separators=separators, ensure_ascii=ascii_only).encode()


def text(t: str, **kw: Any) -> bytes:
    return line({"content": t}, **kw)


def parsed(data: bytes) -> list[tuple[Chunk, bytes | None]] | str:
    """What the general parse makes of one line: chunks with their raw payloads, or
    the error it raises."""
    try:
        return [(c, c.raw) for c in UP.line(data)]
    except UpstreamError as err:
        return f"error: {err.message}"


def through(events: Events, data: bytes) -> list[tuple[Chunk, bytes | None]] | str:
    try:
        return [(c, c.raw) for c in events(data)]
    except UpstreamError as err:
        return f"error: {err.message}"


def learned(**kw: Any) -> Events:
    """A stream's parser that has seen two plain deltas."""
    events = Events(UP.line)
    for t in ("Hel", "lo"):
        events(text(t, **kw))
    return events


#: Lines after two plain deltas: the template's own shape, and everything it must
#: not be mistaken for.
LINES = {
    "plain": text(" world"),
    "brackets and braces": text('}]},{"x'.replace('"', "")),
    "raw utf-8": text("héllo 🎉 naïve"),
    "raw separators and non-characters": text("a\u2028b\x7f\ufeff\uffff\U0010ffff"),
    "escaped unicode": text("héllo", ascii_only=True),
    "escaped quote": text('say "hi"'),
    "escaped newline": text("a\nb"),
    "escaped backslash": text("C:\\path"),
    "the tail's bytes in the text": text('"},"logprobs":null'),
    "empty content": text(""),
    "role and content": line({"role": "assistant", "content": "x"}),
    "reasoning": line({"reasoning_content": "think"}),
    "reasoning and content": line({"content": "a", "reasoning_content": "b"}),
    "tool call": line(
        {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}
    ),
    "logprobs": text("x", logprobs={"content": [{"token": "x", "logprob": -0.5}]}),
    "finish": line({}, finish="stop"),
    "content and finish": text("end", finish="length"),
    "usage": line(usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
    "another id": text("x", id="chatcmpl-2"),
    "another model": text("x", model="m2"),
    "spaced": text("x", spaced=True),
    "done": b"data: [DONE]",
    "comment": b": keep-alive",
    "no space after data:": text("x").replace(b"data: ", b"data:"),
    "spaces after the payload": text("x") + b"  ",
    "carriage return": text("x") + b"\r",
}
#: The lines a parser that learned from compact plain deltas recognises by their bytes.
RECOGNISED = {"plain", "brackets and braces", "raw utf-8", "raw separators and non-characters"}
#: Lines the parse refuses; recognising them from their bytes must refuse them too.
BAD = {
    "raw control character": text("x").replace(b'"x"', b'"a\x01b"'),
    "raw newline in a string": text("x").replace(b'"x"', b'"a\tb"'),
    "invalid utf-8": text("x").replace(b'"x"', b'"a\xffb"'),
    "utf-8 surrogate": text("x").replace(b'"x"', b'"a\xed\xa0\x80b"'),
    "truncated": text("x")[:-3],
}


class TestSameChunks:
    """A learned stream parser answers every line exactly as the parse does."""

    @pytest.mark.parametrize("name", sorted(LINES))
    def test_line(self, name: str) -> None:
        data = LINES[name]
        assert through(learned(), data) == parsed(data)

    @pytest.mark.parametrize("name", sorted(LINES))
    def test_line_of_a_spaced_stream(self, name: str) -> None:
        data = LINES[name]
        assert through(learned(spaced=True), data) == parsed(data)

    @pytest.mark.parametrize("name", sorted(BAD))
    def test_bad_line_is_refused(self, name: str) -> None:
        data = BAD[name]
        assert parsed(data) == "error: llm: malformed event in stream"
        assert through(learned(), data) == parsed(data)

    @pytest.mark.parametrize("name", sorted(LINES))
    def test_whole_event(self, name: str) -> None:
        """A read that is one event gives its chunk, or None (then it is parsed)."""
        data = LINES[name]
        chunk = learned().whole(data + b"\n\n")
        assert (chunk is not None) == (name in RECOGNISED)
        if chunk is not None:
            assert [(chunk, chunk.raw)] == parsed(data)

    @pytest.mark.parametrize("name", sorted(BAD))
    def test_whole_bad_event_is_left_to_the_parse(self, name: str) -> None:
        assert learned().whole(BAD[name] + b"\n\n") is None


class TestTemplate:
    """Which events are recognised without parsing."""

    def test_a_plain_delta_is_recognised_once_the_stream_showed_one(self) -> None:
        events = Events(UP.line)
        assert events.whole(text("a") + b"\n\n") is None
        events(text("a"))
        chunk = events.whole(text("b") + b"\n\n")
        assert chunk == Chunk("b", model="m", id="chatcmpl-1")
        assert chunk is not None and chunk.raw == text("b")[6:]

    @pytest.mark.parametrize(
        "data",
        [
            text("a") + b"\n\n" + text("b") + b"\n\n",  # two events
            text("a") + b"\n",  # not yet ended
            text("a") + b"\r\n\r\n",
            text("a\nb") + b"\n\n",
            text("") + b"\n\n",
            text("ab")[:-1] + b"]\n\n",  # not the template's tail
        ],
    )
    def test_only_one_whole_plain_event_is_taken(self, data: bytes) -> None:
        assert learned().whole(data) is None

    def test_the_first_text_with_the_role_is_not_learned_from(self) -> None:
        """A template of the role's event would fit no later event: the next is learned."""
        events = Events(UP.line)
        events(line({"role": "assistant", "content": "Hel"}))
        assert events.whole(line({"role": "assistant", "content": "b"}) + b"\n\n") is None
        assert events.whole(text("b") + b"\n\n") is None
        events(text("lo"))
        chunk = events.whole(text("b") + b"\n\n")
        assert chunk is not None and [(chunk, chunk.raw)] == parsed(text("b"))

    def test_a_stream_sending_the_role_every_time_is_learned_from_its_second(self) -> None:
        events = Events(UP.line)
        for t in ("Hel", "lo"):
            events(line({"role": "assistant", "content": t}))
        data = line({"role": "assistant", "content": "b"})
        chunk = events.whole(data + b"\n\n")
        assert chunk is not None and [(chunk, chunk.raw)] == parsed(data)

    def test_a_stream_of_other_events_learns_nothing(self) -> None:
        events = Events(UP.line)
        for data in (LINES["reasoning"], LINES["tool call"], LINES["finish"]):
            events(data)
        assert events.whole(text("a") + b"\n\n") is None

    def test_the_template_follows_a_stream_that_changes_shape(self) -> None:
        events = learned()
        events(text("a", id="chatcmpl-2"))
        chunk = events.whole(text("b", id="chatcmpl-2") + b"\n\n")
        assert chunk is not None and chunk.id == "chatcmpl-2"

    def test_of_duplicate_content_members_the_last_is_the_text(self) -> None:
        """Parsing keeps the last of two "content" members: the first is no template."""

        def twice(first: str, last: str) -> bytes:
            return text(last).replace(
                b'{"content":', b'{"content":"%s","content":' % first.encode()
            )

        events = Events(UP.line)
        events(twice("K", "K"))
        fake = twice("z", "K")
        assert events.whole(fake + b"\n\n") is None
        assert through(events, fake) == parsed(fake)
        data = twice("z", "y")  # (the parse of the fake taught its own first member)
        chunk = events.whole(data + b"\n\n")
        assert chunk is not None and [(chunk, chunk.raw)] == parsed(data)

    def test_the_content_member_of_the_delta_is_found_past_another(self) -> None:
        """A "content" member elsewhere with the same text is not the delta's."""
        events = Events(UP.line)
        events(text("a", note={"content": "a"}))
        data = text("b", note={"content": "a"})
        chunk = events.whole(data + b"\n\n")
        assert chunk is not None and [(chunk, chunk.raw)] == parsed(data)

    def test_the_text_equal_to_the_model_name(self) -> None:
        events = Events(UP.line)
        events(text("m"))
        data = text("m")
        assert events.whole(data + b"\n\n") is not None
        assert through(events, data) == parsed(data)


class TestVerbatim:
    """An event is taken as it came only where ``whole`` recognises it and relaying its
    chunk writes exactly its bytes."""

    @pytest.mark.parametrize("name", sorted(LINES) + sorted(BAD))
    def test_exactly_the_events_whole_recognises(self, name: str) -> None:
        data = {**LINES, **BAD}[name] + b"\n\n"
        events = learned()
        chunk = events.whole(data)
        ident = events.verbatim(data)
        if chunk is None:
            assert ident is None
        else:
            assert ident == chunk.id == "chatcmpl-1"
            assert chunk.raw is not None and sse_event(chunk.raw) == data

    @pytest.mark.parametrize(
        ("old", "new"),
        [(b"data: ", b"data:"), (b"data: ", b"data:  "), (b"}", b"} ")],
        ids=["no space after data:", "two spaces", "a space after the payload"],
    )
    def test_a_stream_written_otherwise_is_never_taken_as_it_came(
        self, old: bytes, new: bytes
    ) -> None:
        """Its plain deltas are still recognised, but relaying one writes other bytes."""

        def written(t: str) -> bytes:
            data = text(t)
            return data.replace(old, new) if old == b"data: " else data + b" "

        events = Events(UP.line)
        for t in ("Hel", "lo"):
            events(written(t))
        data = written(" world") + b"\n\n"
        chunk = events.whole(data)
        assert chunk is not None and chunk.text == " world"
        assert events.verbatim(data) is None

    def test_nothing_before_the_stream_showed_a_plain_delta(self) -> None:
        events = Events(UP.line)
        events(line({"role": "assistant", "content": ""}))
        assert events.verbatim(text("a") + b"\n\n") is None

    def test_the_id_follows_a_stream_that_changes_shape(self) -> None:
        events = learned()
        events(text("a", id="chatcmpl-2"))
        assert events.verbatim(text("b", id="chatcmpl-2") + b"\n\n") == "chatcmpl-2"
        assert events.verbatim(text("b") + b"\n\n") is None


class TestLineParser:
    """A stream fed in reads of any size gives the chunks of its lines, in order."""

    STREAM = b"".join(
        data + b"\n\n"
        for data in (
            line({"role": "assistant", "content": ""}),
            *(text(f"t{i} ") for i in range(6)),
            LINES["raw utf-8"],
            LINES["escaped quote"],
            LINES["reasoning"],
            *(text(f"u{i}") for i in range(3)),
            LINES["finish"],
            LINES["usage"],
            b"data: [DONE]",
        )
    )

    def expected(self) -> list[tuple[Chunk, bytes | None]]:
        out = []
        for data in self.STREAM.split(b"\n"):
            for chunk in UP.line(data):
                if chunk is END:
                    return out
                out.append((chunk, chunk.raw))
        raise AssertionError("no end")

    @pytest.mark.parametrize("size", [1, 7, 64, 200, 10_000, "events"])
    def test_reads(self, size: int | str) -> None:
        parser = LineParser("llm", UP.line_parser())
        if size == "events":
            reads: Sequence[bytes] = [e + b"\n\n" for e in self.STREAM.split(b"\n\n") if e]
        else:
            assert isinstance(size, int)
            reads = [self.STREAM[i : i + size] for i in range(0, len(self.STREAM), size)]
        got = []
        for data in reads:
            got += [(c, c.raw) for c in parser.feed(data)]
            if parser.done:
                break
        assert parser.done and parser.error is None
        assert got == self.expected()


class TestRelayedText:
    """``relayed_chunk`` of a text delta is the chunk the constructor builds, every field set."""

    @pytest.mark.parametrize(
        ("t", "model", "ident"), [("a", "m", "c1"), ("", None, None), ("é\n", "x", None)]
    )
    def test_equal_to_the_constructor(self, t: str, model: str | None, ident: str | None) -> None:
        fast = relayed_chunk(t, model, ident, b"{}")
        slow = Chunk(t, model=model, id=ident).relaying(b"{}")
        assert attrs.asdict(fast) == attrs.asdict(slow)  # (reads every field)
        assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
        assert fast.raw == slow.raw == b"{}"
        assert fast.replace(usage=Usage(1, 2)).raw is None


class TestRelayedChunk:
    """``relayed_chunk`` is the chunk the constructor builds, every field set."""

    @pytest.mark.parametrize(
        ("t", "finish", "usage", "model", "ident"),
        [
            ("a", None, None, "m", "c1"),
            ("", "stop", None, None, None),
            ("", None, Usage(3, 4), "x", "c2"),
            ("é", "length", Usage(0, 1), "m", None),
        ],
    )
    def test_equal_to_the_constructor(
        self, t: str, finish: str | None, usage: Usage | None, model: str | None, ident: str | None
    ) -> None:
        fast = relayed_chunk(t, model, ident, b"{}", finish, usage)
        slow = Chunk(t, finish, usage, model, id=ident).relaying(b"{}")
        assert attrs.asdict(fast) == attrs.asdict(slow)  # (reads every field)
        assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
        assert fast.raw == slow.raw == b"{}"


class TestEventsWithoutReasoning:
    """A role, a finish or usage alone parse to the chunk the full reading gives."""

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (
                line({"role": "assistant", "content": "Hi"}),
                Chunk("Hi", None, None, "m", id="chatcmpl-1"),
            ),
            (
                line({"role": "assistant", "content": ""}),
                Chunk("", None, None, "m", id="chatcmpl-1"),
            ),
            (line({"role": "assistant"}), Chunk("", None, None, "m", id="chatcmpl-1")),
            (line(finish="stop"), Chunk("", "stop", None, "m", id="chatcmpl-1")),
            (
                line(
                    {"content": "x"},
                    finish="length",
                    usage={"prompt_tokens": 2, "completion_tokens": 5},
                ),
                Chunk("x", "length", Usage(2, 5), "m", id="chatcmpl-1"),
            ),
            (
                b"data: "
                + json.dumps(
                    {**BASE, "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 1}}
                ).encode(),
                Chunk("", None, Usage(8, 1), "m", id="chatcmpl-1"),
            ),
            (
                line({"role": "assistant", "content": "a", "reasoning_content": "r"}),
                Chunk("a", None, None, "m", reasoning="r", id="chatcmpl-1"),
            ),
            (
                line({"content": "a"}, logprobs={"content": []}),
                Chunk("a", None, None, "m", logprobs={"content": []}, id="chatcmpl-1"),
            ),
        ],
    )
    def test_chunk(self, data: bytes, expected: Chunk) -> None:
        (chunk,) = UP.line(data)
        # (every field, and the payload it is relayed as)
        assert attrs.asdict(chunk) == attrs.asdict(expected.relaying(data[6:]))

    def test_a_delta_that_is_not_an_object_is_refused(self) -> None:
        with pytest.raises(UpstreamError, match="malformed event"):
            UP.line(b"data: " + json.dumps({**BASE, "choices": [{"delta": ["x"]}]}).encode())


class TestBlankLines:
    """The line parser is handed no blank line (the blank line after each SSE event)."""

    def test_only_lines_with_bytes_are_parsed(self) -> None:
        seen: list[bytes] = []

        class Recording:
            def __call__(self, data: bytes) -> Sequence[Chunk]:
                seen.append(data)
                return [END] if data == b"data: [DONE]" else [Chunk(data.decode())]

            def whole(self, data: bytes) -> Chunk | None:
                return None

            def verbatim(self, data: bytes) -> str | None:
                return None

        parser = LineParser("llm", Recording())
        got = parser.feed(b"data: a\n\n\ndata: b\r\n\ndata: [DONE]\n\n")
        assert [c.text for c in got] == ["data: a", "data: b\r"]
        assert seen == [b"data: a", b"data: b\r", b"data: [DONE]"]
        assert parser.done
