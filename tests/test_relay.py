"""The spliced OpenAI route relays an upstream's plain events as they came.

Once an answer's events go out under the upstream's own id, an upstream read that is
one plain text delta is written to the caller without a chunk being made of it. These
tests pace the upstream one event per read (each sent once the caller has the one
before) and check the caller's bytes: the upstream's own, exactly, or meshkit's render
under the answer's id where the upstream's event may not be relayed as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from .conftest import mesh_yaml
from .test_splice import CHAT, paths, post_raw, read_until, sse_payloads, strict_dechunk

TOKENS = [f" <{i}>" for i in range(12)]


def event(rid: str, delta: dict[str, Any], finish: str | None = None, **shape: Any) -> bytes:
    """One ``chat.completion.chunk`` event as an upstream writes it."""
    obj = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "llama3.2:1b",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj, **shape).encode() + b"\n\n"


def answer(ids: list[str], **shape: Any) -> list[bytes]:
    """An upstream's events: the role, one plain delta per token (``ids[i]`` its id),
    then the finish and ``[DONE]``."""
    first = event(ids[0], {"role": "assistant", "content": ""}, **shape)
    deltas = [event(ids[i], {"content": t}, **shape) for i, t in enumerate(TOKENS)]
    return [first, *deltas, event(ids[-1], {}, "stop", **shape) + b"data: [DONE]\n\n"]


@contextlib.asynccontextmanager
async def paced_upstream(pieces: list[bytes]) -> AsyncIterator[tuple[str, asyncio.Queue[None]]]:
    """An upstream answering the chat request with ``pieces``, one HTTP chunk each: the
    head and the first at once, then each next one when the queue it yields gets an
    item (so that each arrives in a read of its own)."""
    go_on: asyncio.Queue[None] = asyncio.Queue()
    tasks: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            for _ in range(100):  # health probes, then the chat request (keep-alive)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                if head.startswith(b"GET "):
                    known = b'{"data": [{"id": "llama3.2:1b"}]}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(known), known)
                    )
                    continue
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                frames = [b"%x\r\n%b\r\n" % (len(p), p) for p in pieces]
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + frames[0]
                )
                for frame in frames[1:]:
                    await asyncio.wait_for(go_on.get(), 30)
                    writer.write(frame)
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", go_on
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(list(tasks), timeout=10)
        await server.wait_closed()


async def relayed(gateway: Any, pieces: list[bytes]) -> bytes:
    """The payload a spliced OpenAI caller receives for ``pieces``, read in step with
    the upstream: each token reaches the caller before the next event is sent."""
    async with paced_upstream(pieces) as (url, go_on):
        gw = await gateway(mesh_yaml(url))
        sock = await post_raw(gw.server.host, gw.server.port, CHAT)
        try:
            raw = b""
            for token in ["", *TOKENS]:
                if token:
                    raw += await read_until(sock, token.strip().encode(), within=30)
                go_on.put_nowait(None)
            raw += await read_until(sock, b"\r\n0\r\n\r\n", within=30)
        finally:
            sock.close()
        assert (await paths(gw))["spliced"] == 1
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    return strict_dechunk(body)


class TestAsTheyCame:
    """Events that go out under the upstream's id reach the caller byte for byte."""

    @pytest.mark.parametrize(
        "shape",
        [{}, {"separators": (",", ":")}, {"ensure_ascii": False}],
        ids=["spaced", "compact", "raw-utf8"],
    )
    async def test_the_callers_bytes_are_the_upstreams(
        self, gateway: Any, shape: dict[str, Any]
    ) -> None:
        pieces = answer(["chatcmpl-up"] * len(TOKENS), **shape)
        assert await relayed(gateway, pieces) == b"".join(pieces)


class TestRendered:
    """An event the answer may not relay as it came is rendered, whatever its bytes."""

    async def test_events_under_another_id_go_out_under_the_answers(self, gateway: Any) -> None:
        """The upstream switches ids halfway: the rest is meshkit's render of it."""
        ids = ["chatcmpl-a"] * 6 + ["chatcmpl-b"] * (len(TOKENS) - 6)
        events = sse_payloads(await relayed(gateway, answer(ids)))
        assert events[-1] == "[DONE]"
        assert {e["id"] for e in events[:-1]} == {"chatcmpl-a"}
        texts = [e["choices"][0]["delta"].get("content", "") for e in events[:-1]]
        assert "".join(texts) == "".join(TOKENS)
