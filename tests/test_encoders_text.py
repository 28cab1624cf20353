"""The encoders' plain text pieces, joined from bytes made once per answer, are exactly
the bytes a dictionary through JSON gives; every other chunk keeps its own rendering."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from meshkit.protocol import ollama_ndjson, openai_sse
from meshkit.protocol.types import ChatRequest, Chunk, Message, ToolCallDelta, Usage

REQUEST = ChatRequest(messages=(Message("user", "hi"),), model="m", stream=True)
LOGPROBS = {"content": [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}]}
CALL = ToolCallDelta(0, "c1", "f", "")
ARGS = ToolCallDelta(0, None, None, '{"a": "é"}')

#: name: (chunk, the delta, finish reason and logprobs of its OpenAI event, or None
#: when it has no choice event of its own).
CHUNKS: dict[str, tuple[Chunk, tuple[dict[str, Any], str | None, Any] | None]] = {
    "text": (Chunk("hello"), ({"content": "hello"}, None, None)),
    "text with a model": (Chunk("hi", model="up"), ({"content": "hi"}, None, None)),
    "raw utf-8": (Chunk("héllo 🎉"), ({"content": "héllo 🎉"}, None, None)),
    "escapes": (Chunk('q"\\\n\t\x01/'), ({"content": 'q"\\\n\t\x01/'}, None, None)),
    "astral plane": (Chunk("\U0010ffff"), ({"content": "\U0010ffff"}, None, None)),
    "empty": (Chunk(""), None),
    "reasoning": (Chunk(reasoning="hm"), ({"reasoning_content": "hm"}, None, None)),
    "text and reasoning": (
        Chunk("a", reasoning="b"),
        ({"content": "a", "reasoning_content": "b"}, None, None),
    ),
    "tool call head": (
        Chunk(tool_calls=(CALL,)),
        (
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "type": "function",
                        "id": "c1",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            },
            None,
            None,
        ),
    ),
    "tool call arguments": (
        Chunk(tool_calls=(ARGS,)),
        ({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": "é"}'}}]}, None, None),
    ),
    "logprobs": (Chunk("x", logprobs=LOGPROBS), ({"content": "x"}, None, LOGPROBS)),
    "empty logprobs": (Chunk("x", logprobs={}), ({"content": "x"}, None, {})),
    "finish": (Chunk("", "stop"), ({}, "stop", None)),
    "text and finish": (Chunk("end", "length"), ({"content": "end"}, "length", None)),
    "empty finish reason": (Chunk("x", ""), ({"content": "x"}, "", None)),
    "usage": (Chunk("", None, Usage(1, 2)), None),
    "text and usage": (Chunk("x", None, Usage(1, 2)), ({"content": "x"}, None, None)),
    "meta": (Chunk("x", meta={"k": 1}), ({"content": "x"}, None, None)),
}


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class TestOpenAIEvents:
    """A chunk after the first gives the event its dictionary gives."""

    @pytest.mark.parametrize("name", sorted(CHUNKS))
    def test_event(self, name: str) -> None:
        chunk, choice = CHUNKS[name]
        encoder = openai_sse.ChatEncoder(REQUEST)
        encoder.chunk(Chunk("first"))
        head = {"id": encoder.id, "object": "chat.completion.chunk", "created": encoder.created}
        head["model"] = "m"
        expected = b""
        if chunk.meta:
            expected += sse({**head, "choices": [], "meshkit": dict(chunk.meta)})
        if choice is not None:
            delta, finish, logprobs = choice
            body = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            expected += sse({**head, "choices": [body]})
        assert encoder.chunk(chunk) == (expected or None)

    def test_the_model_an_answer_takes_on_is_in_later_text_events(self) -> None:
        """A request that names no model takes the upstream's, once a chunk names it."""
        encoder = openai_sse.ChatEncoder(ChatRequest(messages=REQUEST.messages, stream=True))
        encoder.chunk(Chunk("a"))
        encoder.chunk(Chunk("b"))
        head = {"id": encoder.id, "object": "chat.completion.chunk", "created": encoder.created}
        body = {"index": 0, "delta": {"content": "c"}, "logprobs": None, "finish_reason": None}
        assert encoder.chunk(Chunk("c", model="up")) == sse(
            {**head, "model": "up", "choices": [body]}
        )

    def test_the_upstream_id_an_answer_takes_on_is_in_later_text_events(self) -> None:
        encoder = openai_sse.ChatEncoder(REQUEST)
        encoder.chunk(Chunk("a", id="chatcmpl-up").relaying(b"{}"))
        out = encoder.chunk(Chunk("b", id="other"))
        head = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": encoder.created}
        body = {"index": 0, "delta": {"content": "b"}, "logprobs": None, "finish_reason": None}
        assert out == sse({**head, "model": "m", "choices": [body]})

    def test_the_first_event_carries_the_role(self) -> None:
        encoder = openai_sse.ChatEncoder(REQUEST)
        out = encoder.chunk(Chunk("a"))
        assert out is not None and b'"delta":{"role":"assistant","content":"a"}' in out


STAMP = re.compile(rb'"created_at":"([^"]+)"')


def records(out: bytes | None) -> list[tuple[dict[str, Any], bytes]]:
    """Each NDJSON record of ``out`` with its bytes, its time stamp checked and fixed."""
    assert out is not None and out.endswith(b"\n")
    result = []
    for line in out[:-1].split(b"\n"):
        match = STAMP.search(line)
        assert match is not None
        datetime.fromisoformat(match.group(1).decode().replace("Z", "+00:00"))
        result.append((orjson.loads(line), line.replace(match.group(1), b"T")))
    return result


class TestOllamaRecords:
    """A text piece gives the record its dictionary gives, in both endpoints."""

    @pytest.mark.parametrize("name", [n for n, (c, _) in CHUNKS.items() if c.text])
    @pytest.mark.parametrize("endpoint", ["chat", "generate"])
    def test_text_record(self, name: str, endpoint: str) -> None:
        chunk = CHUNKS[name][0]
        encoder = (
            ollama_ndjson.ChatEncoder(REQUEST)
            if endpoint == "chat"
            else ollama_ndjson.GenerateEncoder(REQUEST)
        )
        out = records(encoder.chunk(chunk))
        obj, line = out[0]
        if endpoint == "chat":
            message = {"role": "assistant", "content": chunk.text}
            if chunk.reasoning:
                message["thinking"] = chunk.reasoning
            fields: dict[str, Any] = {"message": message}
        else:
            fields = {"response": chunk.text}
            if chunk.reasoning:
                fields["thinking"] = chunk.reasoning
        if chunk.logprobs:
            fields["logprobs"] = chunk.logprobs["content"]
        expected = {"model": "m", "created_at": "T", **fields, "done": False}
        assert line == orjson.dumps(expected)
        assert len(out) == 1 and obj["message" if endpoint == "chat" else "response"]

    def test_pieces_are_counted_and_the_first_timed(self) -> None:
        """The done record counts the text records (no usage) as eval_count."""
        encoder = ollama_ndjson.ChatEncoder(REQUEST)
        for t in ("a", "b", "c"):
            encoder.chunk(Chunk(t))
        final = orjson.loads(encoder.end())
        assert final["eval_count"] == 3 and final["done"] is True
        assert final["prompt_eval_duration"] >= 0 and final["eval_duration"] >= 0


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TestClock:
    """``created_at`` reads as ``datetime.isoformat`` in UTC writes it."""

    @pytest.mark.parametrize(
        "ns",
        [
            0,
            1_796_000_000_000_000_000,  # a whole second: no fraction
            1_796_000_000_000_001_000,
            1_796_000_000_999_999_999,  # nanoseconds are cut, as datetime.now cuts them
            1_796_000_001_500_000_000,
            4_102_444_799_123_456_000,
        ],
    )
    def test_stamp(self, ns: int) -> None:
        expected = (EPOCH + timedelta(microseconds=ns // 1000)).isoformat()
        assert ollama_ndjson.Clock().stamp(ns) == expected.replace("+00:00", "Z")

    def test_one_clock_across_seconds(self) -> None:
        clock = ollama_ndjson.Clock()
        base = 1_796_000_000_000_000_000
        for ns in (base + 5_000, base + 999_999_000, base + 1_000_000_000, base + 7_000):
            expected = (EPOCH + timedelta(microseconds=ns // 1000)).isoformat()
            assert clock.stamp(ns) == expected.replace("+00:00", "Z")

    def test_now(self) -> None:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", ollama_ndjson.timestamp())
