"""A fast fake OpenAI-compatible upstream for the benchmark.

A raw :class:`asyncio.Protocol` HTTP/1.1 server (on uvloop when installed) so that the
upstream is never the bottleneck. It answers:

- ``POST .../chat/completions``: a ``chat.completion`` JSON, or with ``"stream": true``
  an SSE stream of ``chat.completion.chunk`` events ending with ``data: [DONE]``;
- ``GET /v1/models``: a model list;
- ``GET /health``: ``ok``.

The answer is ``chunks`` tokens. Token ``i`` is the word followed by ``i`` in five
digits and a bar (``s00017| ``), so a client can prove a stream arrived complete and in
order. Chunk 0 is written at once with the response head; chunk ``i`` at ``i * gap``
after it (absolute schedule, so gaps do not drift). Each request may choose its shape;
the first source that names a setting wins:

1. query string: ``?chunks=64&gap_ms=5&word=s``;
2. headers: ``x-bench-chunks``, ``x-bench-gap-ms``, ``x-bench-word``;
3. the last message's text: ``chunks=64 gap_ms=5 word=s`` anywhere in it (this is the
   channel that crosses every gateway, since they all forward the messages);
4. the command-line defaults.

Run: ``python benchmarks/upstream.py --port 9000 [--chunks 16] [--gap-ms 0] [--cpu 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import signal
import time
from typing import Any, cast
from urllib.parse import parse_qsl

try:  # orjson is much faster at parsing request bodies; plain json works too.
    import orjson

    _loads: Any = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

MAX_CHUNKS = 100_000
_DIRECTIVE = re.compile(r"\b(chunks|gap_ms|word)=([\w.]+)")
_CREATED = int(time.time())
_DONE = b"data: [DONE]\n\n"


class Shape:
    """What one answer looks like: token count, gap and word."""

    __slots__ = ("chunks", "gap", "word")

    def __init__(self, chunks: int, gap_ms: float, word: str) -> None:
        self.chunks = max(1, min(int(chunks), MAX_CHUNKS))
        self.gap = max(0.0, float(gap_ms)) / 1000.0
        self.word = word if word.isalnum() else "s"


def token(word: str, seq: int) -> str:
    """Text of token ``seq``: ``s00017| ``."""
    return f"{word}{seq:05d}| "


def _head(status: str, ctype: bytes, length: int | None, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}".encode(), b"Content-Type: " + ctype]
    if length is None:
        lines.append(b"Transfer-Encoding: chunked")
        lines.append(b"Cache-Control: no-cache")
    else:
        lines.append(b"Content-Length: " + str(length).encode())
    lines.append(b"Connection: close" if close else b"Connection: keep-alive")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


@functools.lru_cache(maxsize=256)
def completion_body(model: str, chunks: int, word: str) -> bytes:
    """The whole non-streaming ``chat.completion`` body (cached per shape)."""
    text = "".join(token(word, i) for i in range(chunks))
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": _CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": chunks + 8},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


@functools.lru_cache(maxsize=256)
def stream_frames(model: str, chunks: int, word: str, usage: bool) -> tuple[bytes, ...]:
    """HTTP chunks of a stream: one per token, the last one also carrying the tail."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": _CREATED}
    base["model"] = model
    frames = []
    for i in range(chunks):
        delta = (
            {"role": "assistant", "content": token(word, i)}
            if i == 0
            else {"content": token(word, i)}
        )
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        frames.append(_event({**base, "choices": [choice]}))
    tail = _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        counts = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": chunks + 8}
        tail += _event({**base, "choices": [], "usage": counts})
    frames[-1] += tail + _DONE
    out = [_http_chunk(f) for f in frames]
    out[-1] += b"0\r\n\r\n"
    return tuple(out)


@functools.lru_cache(maxsize=4)
def models_body(model: str) -> bytes:
    """Body of ``GET /v1/models``."""
    data = {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": _CREATED, "owned_by": "bench"}],
    }
    return json.dumps(data).encode()


class Request:
    """One parsed HTTP request."""

    __slots__ = ("body", "close", "headers", "method", "path", "query")

    def __init__(
        self, method: str, target: str, headers: dict[str, str], body: bytes, close: bool
    ) -> None:
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.headers = headers
        self.body = body
        self.close = close


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests in order, answer each one."""

    def __init__(self, defaults: Shape, model: str) -> None:
        self._defaults = defaults
        self._model = model
        self._buf = bytearray()
        self._busy = False  # a stream is being written; later requests wait
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence the cast
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._drain()

    def _drain(self) -> None:
        while self._transport is not None and not self._busy:
            req = self._parse()
            if req is None:
                return
            self._answer(req)

    def _parse(self) -> Request | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        method, target, version = [*head[0].split(" "), "", "", ""][:3]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        pos = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, pos = self._dechunk(pos)
            if body is None:
                return None
        else:
            length = int(headers.get("content-length", "0") or 0)
            if len(buf) - pos < length:
                return None
            body = bytes(buf[pos : pos + length])
            pos += length
        del buf[:pos]
        conn = headers.get("connection", "").lower()
        close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        return Request(method, target, headers, body, close)

    def _dechunk(self, pos: int) -> tuple[bytes | None, int]:
        buf, parts = self._buf, []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None, pos
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            start = eol + 2
            if len(buf) < start + size + 2:
                return None, pos
            if size == 0:  # no trailers are expected from the clients in this benchmark
                return b"".join(parts), start + 2
            parts.append(bytes(buf[start : start + size]))
            pos = start + size + 2

    def _answer(self, req: Request) -> None:
        path = req.path
        if req.method == "POST" and path.endswith("/chat/completions"):
            self._chat(req)
        elif req.method == "GET" and path.endswith("/models"):
            self._send(req, "200 OK", b"application/json", models_body(self._model))
        elif req.method == "GET" and path in ("/health", "/healthz", "/"):
            self._send(req, "200 OK", b"text/plain", b"ok")
        else:
            self._send(req, "404 Not Found", b"application/json", b'{"error":"not found"}')

    def _send(self, req: Request, status: str, ctype: bytes, body: bytes) -> None:
        assert self._transport is not None
        self._transport.write(_head(status, ctype, len(body), req.close) + body)
        if req.close:
            self._transport.close()

    def _shape(self, req: Request, payload: dict[str, Any]) -> Shape:
        found: dict[str, str] = {}
        for key, value in parse_qsl(req.query):
            found.setdefault(key, value)
        for key in ("chunks", "gap_ms", "word"):
            value = req.headers.get("x-bench-" + key.replace("_", "-"))
            if value is not None:
                found.setdefault(key, value)
        messages = payload.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            text = messages[-1].get("content")
            if isinstance(text, str) and "=" in text:
                for key, value in _DIRECTIVE.findall(text):
                    found.setdefault(key, value)
        d = self._defaults
        try:
            return Shape(
                int(found.get("chunks", d.chunks)),
                float(found.get("gap_ms", d.gap * 1000.0)),
                found.get("word", d.word),
            )
        except ValueError:
            return d

    def _chat(self, req: Request) -> None:
        try:
            payload = _loads(req.body) if req.body else {}
            if not isinstance(payload, dict):
                raise ValueError("body is not an object")
        except ValueError:
            self._send(req, "400 Bad Request", b"application/json", b'{"error":"bad json"}')
            return
        shape = self._shape(req, payload)
        model = payload.get("model")
        model = model if isinstance(model, str) and model else self._model
        if not payload.get("stream"):
            body = completion_body(model, shape.chunks, shape.word)
            self._send(req, "200 OK", b"application/json", body)
            return
        opts = payload.get("stream_options")
        usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        frames = stream_frames(model, shape.chunks, shape.word, usage)
        assert self._transport is not None
        self._transport.write(_head("200 OK", b"text/event-stream", None, req.close) + frames[0])
        if len(frames) == 1:
            self._finish(req)
            return
        self._busy = True
        start = self._loop.time()
        self._loop.call_at(start + shape.gap, self._step, req, frames, 1, start, shape.gap)

    def _step(
        self, req: Request, frames: tuple[bytes, ...], i: int, start: float, gap: float
    ) -> None:
        if self._transport is None:  # the client went away: stop the stream
            return
        self._transport.write(frames[i])
        if i + 1 < len(frames):
            self._loop.call_at(start + (i + 1) * gap, self._step, req, frames, i + 1, start, gap)
        else:
            self._finish(req)

    def _finish(self, req: Request) -> None:
        self._busy = False
        if req.close and self._transport is not None:
            self._transport.close()
            return
        if self._buf:
            self._loop.call_soon(self._drain)


async def serve(host: str, port: int, defaults: Shape, model: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(defaults, model), host, port, backlog=4096, reuse_address=True
    )
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    print(f"upstream listening on http://{host}:{port}", flush=True)
    async with server:
        await stop


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunks", type=int, default=16, help="default token count")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="default gap between chunks")
    parser.add_argument("--word", default="s", help="default token word (alphanumeric)")
    parser.add_argument("--model", default="bench", help="model name when a request has none")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    run: Any = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    run(serve(args.host, args.port, Shape(args.chunks, args.gap_ms, args.word), args.model))


if __name__ == "__main__":
    main()
