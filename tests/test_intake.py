"""The lean intake: the chat endpoints read by meshkit's own protocol, answered exactly as
aiohttp answers them.

Every equivalence test sends the same bytes to one services file served twice —
``gateway.intake: lean`` and ``gateway.intake: aiohttp`` — on raw sockets or with the
real ``openai`` and ``ollama`` clients, and compares what comes back: status, headers
(all but ``Date``), and the body (JSON compared without the ids and clocks that differ
per answer). The intake's ``answered`` and ``handed_off`` counts show which side served.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httptools
import ollama
import openai
import pytest
import yaml
from structlog.testing import capture_logs

from meshkit import App, Mesh, build_app
from meshkit.gateway.exchange import Streaming
from meshkit.gateway.intake import Intake
from meshkit.gateway.intake_call import Call, HeadReader
from meshkit.gateway.intake_serve import IntakeRunner
from meshkit.nodes.base import Context, MicroService
from meshkit.nodes.llm import RemoteLLM
from meshkit.protocol.types import Completion
from meshkit.spec import loads
from meshkit.testing import FakeLLM

from .conftest import until
from .test_metrics import parse, value
from .test_splice import dechunk, held_back, post_raw, read_until, sse_payloads

INTAKES = ("lean", "aiohttp")
RID = "req-intake-1"
CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
#: Fields that differ between two answers to the same request (ids and clocks).
VOLATILE = frozenset(
    {
        "id",
        "created",
        "created_at",
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    }
)


def spec(url: str, intake: str, **gateway: Any) -> str:
    """A one-LLM services file at ``url``, both dialects mounted, read by ``intake``."""
    return yaml.safe_dump(
        {
            "services": {"llm": {"type": "llm", "endpoint": url, "model": "llama3.2:1b"}},
            "pipelines": {"chat": {"nodes": ["llm"]}},
            "gateway": {
                "intake": intake,
                "routes": [
                    {"dialect": "openai", "pipeline": "chat"},
                    {"dialect": "ollama", "pipeline": "chat"},
                ],
                **gateway,
            },
        }
    )


@attrs.define
class Served:
    """A gateway being served: its URL and the lean intake in front (None: aiohttp's)."""

    url: str
    intake: Intake | None
    runner: IntakeRunner


@contextlib.asynccontextmanager
async def serve(text: str, **runner: Any) -> AsyncIterator[Served]:
    """Serve the services file ``text`` as ``meshkit serve`` does, until the block ends."""
    app = build_app(Mesh(loads(text, env={})))
    server = IntakeRunner(app, handler_cancellation=True, **runner)
    await server.setup()
    try:
        site = server.site("127.0.0.1", 0)
        await site.start()
        port = server.addresses[0][1]
        yield Served(f"http://127.0.0.1:{port}", server.intake, server)
    finally:
        await server.cleanup()


@attrs.define
class Reply:
    """One HTTP answer as read off the wire."""

    status_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ")[1])

    def header(self, name: str) -> str | None:
        for key, val in self.headers:
            if key.lower() == name.lower():
                return val
        return None

    def stable(self) -> tuple[str, list[tuple[str, str]], Any]:
        """What must be equal across intakes: all but ``Date``, ids and clocks (and
        the length, which the clocks' digits change; the reader framed the body by it)."""
        headers = [(k, v) for k, v in self.headers if k.lower() not in ("date", "content-length")]
        return self.status_line, sorted(headers), stable_body(self.body)


def strip(obj: Any) -> Any:
    """``obj`` without the fields that differ per answer."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def stable_body(body: bytes) -> Any:
    """A JSON, SSE or NDJSON body parsed and stripped; other bodies as they are."""
    text = body.decode("utf-8", "replace")
    try:
        return strip(json.loads(text))
    except ValueError:
        pass
    if text.startswith("data: "):
        events = [b[6:] for b in text.split("\n\n") if b.startswith("data: ")]
        return [e if e == "[DONE]" else strip(json.loads(e)) for e in events]
    lines = [line for line in text.split("\n") if line]
    try:
        return [strip(json.loads(line)) for line in lines]
    except ValueError:
        return text


class Conn:
    """A raw client connection: bytes out, framed answers in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Conn:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self) -> tuple[str, list[tuple[str, str]]]:
        async with asyncio.timeout(10):
            raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
        return lines[0], headers  # type: ignore[return-value]

    async def answer(self) -> Reply:
        """The next answer (a ``100 Continue`` before it is returned as its own reply)."""
        status, headers = await self.head()
        reply = Reply(status, headers, b"")
        async with asyncio.timeout(10):
            if reply.status == 100:
                return reply
            if "chunked" in (reply.header("Transfer-Encoding") or ""):
                parts = []
                for _ in range(100_000):
                    size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                    data = await self.reader.readexactly(size + 2)
                    if not size:
                        break
                    parts.append(data[:-2])
                reply.body = b"".join(parts)
            elif reply.header("Content-Length") is not None:
                reply.body = await self.reader.readexactly(int(reply.header("Content-Length") or 0))
            else:
                reply.body = await self.reader.read()  # ends with the connection
        return reply

    async def closed(self) -> bool:
        """Whether the server closes the connection (nothing more arrives, then EOF)."""
        async with asyncio.timeout(10):
            return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.close()


def post(path: str, body: bytes, *, version: str = "1.1", extra: str = "") -> bytes:
    """A ``POST`` with a ``Content-Length`` body and the test's request id."""
    return (
        f"POST {path} HTTP/{version}\r\nHost: t\r\nX-Request-ID: {RID}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def chat(stream: bool = False, **fields: Any) -> bytes:
    return json.dumps({**CHAT, "stream": stream, **fields}).encode()


async def both(
    fake: FakeLLM, data: bytes, answers: int = 1, **gateway: Any
) -> dict[str, list[Reply]]:
    """``data`` sent on one connection to each intake; the ``answers`` read back."""
    out: dict[str, list[Reply]] = {}
    for intake in INTAKES:
        async with serve(spec(fake.url, intake, **gateway)) as gw:
            conn = await Conn.open(gw.url)
            try:
                await conn.send(data)
                out[intake] = [await conn.answer() for _ in range(answers)]
            finally:
                conn.close()
            if intake == "lean":
                assert gw.intake is not None and gw.intake.answered >= 1
                assert gw.intake.handed_off == 0
            else:
                assert gw.intake is None  # gateway.intake: aiohttp
    return out


def same(replies: dict[str, list[Reply]]) -> list[Reply]:
    """The lean intake's replies, checked equal to aiohttp's."""
    lean, aio = replies["lean"], replies["aiohttp"]
    assert [r.stable() for r in lean] == [r.stable() for r in aio]
    return lean


OPENAI = "/v1/chat/completions"


class TestSameAnswers:
    """The same request gets the same answer from both intakes."""

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            (OPENAI, chat()),
            (OPENAI, chat(stream=True)),
            ("/api/chat", chat()),
            ("/api/chat", chat(stream=True)),
            ("/api/generate", json.dumps({"model": "llama3.2:1b", "prompt": "hi"}).encode()),
        ],
        ids=["openai", "openai-stream", "ollama", "ollama-stream", "generate-stream"],
    )
    async def test_answers(self, fake: FakeLLM, path: str, body: bytes) -> None:
        """Whole and streamed answers in both dialects: same head, same events."""
        (reply,) = same(await both(fake, post(path, body)))
        assert reply.status == 200
        assert reply.header("X-Request-ID") == RID
        assert stable_body(reply.body)

    @pytest.mark.parametrize(
        ("path", "body", "status", "needle"),
        [
            (OPENAI, b"{not json", 400, "not valid JSON"),
            (OPENAI, b"", 400, ""),
            (OPENAI, json.dumps({"model": "x"}).encode(), 400, "messages"),
            (OPENAI, chat(temperature="hot"), 400, "temperature"),
            ("/api/chat", b"[1]", 400, ""),
            ("/api/chat", json.dumps({"messages": 3}).encode(), 400, "messages"),
        ],
        ids=["bad-json", "empty", "no-messages", "bad-field", "ollama-array", "ollama-bad"],
    )
    async def test_refusals(
        self, fake: FakeLLM, path: str, body: bytes, status: int, needle: str
    ) -> None:
        """A bad body is refused in the route's dialect, with the same body."""
        (reply,) = same(await both(fake, post(path, body)))
        assert reply.status == status
        assert needle in reply.body.decode()

    async def test_wrong_key(self, fake: FakeLLM) -> None:
        """A missing key: 401 with ``WWW-Authenticate``, in each dialect."""
        for path in (OPENAI, "/api/chat"):
            (reply,) = same(await both(fake, post(path, chat()), api_keys=["sesame"]))
            assert reply.status == 401
            assert reply.header("WWW-Authenticate") == 'Bearer realm="meshkit"'
        (ok,) = same(
            await both(
                fake,
                post(OPENAI, chat(), extra="Authorization: Bearer sesame\r\n"),
                api_keys=["sesame"],
            )
        )
        assert ok.status == 200

    async def test_body_too_large(self, fake: FakeLLM) -> None:
        """A body at the limit: the same 413 and message as aiohttp's."""
        body = chat(pad="x" * 2000)
        (reply,) = same(await both(fake, post(OPENAI, body), max_body=1024))
        assert reply.status == 413
        assert "limit of 1 KiB (1024 bytes)" in reply.body.decode()
        (fits,) = same(await both(fake, post(OPENAI, chat()), max_body=1024))
        assert fits.status == 200

    async def test_chunked_body(self, fake: FakeLLM) -> None:
        """A chunked request body (with an extension and a trailer) is read whole, and
        to its end."""
        body = chat()
        framed = b"%x;ext=1\r\n%b\r\n%x\r\n%b\r\n0\r\nX-Trailer: 1\r\n\r\n" % (
            10,
            body[:10],
            len(body) - 10,
            body[10:],
        )
        head = (
            f"POST {OPENAI} HTTP/1.1\r\nHost: t\r\nX-Request-ID: {RID}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        # A second request right behind it: the body's end was found exactly.
        replies = same(await both(fake, head + framed + post("/api/chat", chat()), answers=2))
        assert [r.status for r in replies] == [200, 200]
        assert fake.requests[-2]["messages"][0]["content"] == "hi"

    async def test_chunked_body_in_pieces(self, fake: FakeLLM) -> None:
        """A chunked body sent a few bytes per write (its end split between reads),
        with a request pipelined behind it: both read whole, in order."""
        body = chat()
        framed = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        head = (
            f"POST {OPENAI} HTTP/1.1\r\nHost: t\r\nX-Request-ID: {RID}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        data = head + framed + post("/api/chat", chat())
        out: dict[str, list[Reply]] = {}
        for intake in INTAKES:
            async with serve(spec(fake.url, intake)) as gw:
                conn = await Conn.open(gw.url)
                for at in range(0, len(data), 3):
                    await conn.send(data[at : at + 3])
                out[intake] = [await conn.answer(), await conn.answer()]
                conn.close()
        replies = same(out)
        assert [r.status for r in replies] == [200, 200]
        assert fake.requests[-2]["messages"][0]["content"] == "hi"

    async def test_malformed_chunked_body(self, fake: FakeLLM) -> None:
        """A chunk size that is no number: 400 from both, and the connection closes."""
        head = (
            f"POST {OPENAI} HTTP/1.1\r\nHost: t\r\nX-Request-ID: {RID}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        for intake in INTAKES:
            async with serve(spec(fake.url, intake)) as gw:
                conn = await Conn.open(gw.url)
                await conn.send(head + b"zz\r\n{}\r\n0\r\n\r\n")
                reply = await conn.answer()
                assert reply.status == 400, intake
                assert await conn.closed()
                conn.close()

    async def test_expect_continue(self, fake: FakeLLM) -> None:
        """``Expect: 100-continue``: a 100 before the answer, from both."""
        replies = same(
            await both(fake, post(OPENAI, chat(), extra="Expect: 100-continue\r\n"), answers=2)
        )
        assert [r.status for r in replies] == [100, 200]

    async def test_http_10(self, fake: FakeLLM) -> None:
        """HTTP/1.0: whole answers with a length, streams ending with the connection."""
        (whole,) = same(await both(fake, post(OPENAI, chat(), version="1.0")))
        assert whole.status_line.startswith("HTTP/1.0 200")
        (streamed,) = same(await both(fake, post(OPENAI, chat(stream=True), version="1.0")))
        assert streamed.header("Transfer-Encoding") is None
        assert stable_body(streamed.body)[-1] == "[DONE]"
        (kept,) = same(
            await both(
                fake, post(OPENAI, chat(), version="1.0", extra="Connection: keep-alive\r\n")
            )
        )
        assert kept.header("Connection") == "keep-alive"

    async def test_connection_close(self, fake: FakeLLM) -> None:
        """``Connection: close``: the answer says so and the connection closes."""
        for intake in INTAKES:
            async with serve(spec(fake.url, intake)) as gw:
                conn = await Conn.open(gw.url)
                await conn.send(post(OPENAI, chat(), extra="Connection: close\r\n"))
                reply = await conn.answer()
                assert reply.header("Connection") == "close"
                assert await conn.closed()
                conn.close()

    async def test_pipelined(self, fake: FakeLLM) -> None:
        """Two requests in one write: two answers, in order."""
        first = post(OPENAI, chat(stream=True))
        second = post("/api/chat", chat())
        replies = same(await both(fake, first + second, answers=2))
        assert stable_body(replies[0].body)[-1] == "[DONE]"
        assert stable_body(replies[1].body)["done"] is True

    async def test_over_the_limit(self, fake: FakeLLM) -> None:
        """Past ``max_inflight``: 429 with ``Retry-After``, in the route's dialect."""
        held = FakeLLM(stall_after=1)
        async with held.serve():
            out: dict[str, Reply] = {}
            for intake in INTAKES:
                async with serve(spec(held.url, intake, max_inflight=1)) as gw:
                    busy = await Conn.open(gw.url)
                    await busy.send(post(OPENAI, chat(stream=True)))
                    await busy.head()  # the first request is in flight
                    conn = await Conn.open(gw.url)
                    await conn.send(post("/api/chat", chat()))
                    out[intake] = await conn.answer()
                    conn.close()
                    busy.close()
            held.release()
        assert out["lean"].stable() == out["aiohttp"].stable()
        assert out["lean"].status == 429
        assert out["lean"].header("Retry-After") == "1"
        assert "error" in json.loads(out["lean"].body)


@attrs.frozen
class Settings:
    """What a call needs of its intake (``intake_call.Shared``)."""

    max_body: int = 1 << 20
    streaming: Streaming = attrs.field(factory=Streaming)

    def date(self) -> bytes:
        return b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"


class TestChunkedBody:
    """A chunked body ends exactly where its framing says, however the bytes arrive."""

    def test_every_split(self) -> None:
        """Split anywhere (the end's CRLF CRLF too), the body is whole and the request
        pipelined behind it is left in the buffer, to the byte."""
        head = b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        framed = b"4;x=1\r\nab\r\n\r\n2\r\n\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n"
        behind = b"POST /api/chat HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        data = framed + behind
        for cut in range(len(data) + 1):
            reader = HeadReader()
            parser = httptools.HttpRequestParser(reader)
            parser.feed_data(head)
            call = Call(None, Settings(), None, {}, True, True, False, 0, (parser, reader))  # type: ignore[arg-type]
            buf = bytearray(data[:cut])
            done = call.read(buf)
            buf += data[cut:]
            if not done:
                done = call.read(buf)
            assert done is True, cut
            assert bytes(buf) == behind, cut
            assert asyncio.run(call.body()) == b"ab\r\n\r\n", cut

    def test_malformed(self) -> None:
        """A chunk size that is no number: the body does not parse."""
        reader = HeadReader()
        parser = httptools.HttpRequestParser(reader)
        parser.feed_data(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        call = Call(None, Settings(), None, {}, True, True, False, 0, (parser, reader))  # type: ignore[arg-type]
        assert call.read(bytearray(b"zz\r\n{}\r\n0\r\n\r\n")) is None


class TestClients:
    """The official clients, through the lean intake."""

    async def test_openai_and_ollama(self, fake: FakeLLM) -> None:
        """Whole and streamed answers read by ``openai`` and ``ollama``."""
        async with serve(spec(fake.url, "lean")) as gw:
            oa = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
            ol = ollama.AsyncClient(host=gw.url)
            try:
                messages: Any = CHAT["messages"]
                whole = await oa.chat.completions.create(model="llama3.2:1b", messages=messages)
                assert whole.choices[0].message.content == "The sky appears blue."
                stream = await oa.chat.completions.create(
                    model="llama3.2:1b", messages=messages, stream=True
                )
                pieces = [c.choices[0].delta.content async for c in stream if c.choices]
                assert "".join(p for p in pieces if p) == "The sky appears blue."
                answer = await ol.chat(model="llama3.2:1b", messages=messages)
                assert answer.message.content == "The sky appears blue."
                text = ""
                async for part in await ol.chat(
                    model="llama3.2:1b", messages=messages, stream=True
                ):
                    text += part.message.content or ""
                assert text == "The sky appears blue."
                models = await oa.models.list()
                assert [m.id for m in models.data] == ["llama3.2:1b"]
            finally:
                await oa.close()
                await ol.close()
            assert gw.intake is not None and gw.intake.answered == 4


class TestApp:
    """``App`` (pipelines built in code) is served by the lean intake too."""

    async def test_chat_path_and_mounts(self, fake: FakeLLM) -> None:
        """A mount's chat endpoints and its extra ``chat_path`` answer on the lean path."""
        llm = RemoteLLM("llm", endpoint=fake.url, model="llama3.2:1b")
        app = App().mount(llm, chat_path="/v1/example-service").mount(llm, dialect="ollama")
        runner = IntakeRunner(app.application(), handler_cancellation=True)
        await runner.setup()
        try:
            await runner.site("127.0.0.1", 0).start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            conn = await Conn.open(url)
            await conn.send(post("/v1/example-service", chat()))
            whole = await conn.answer()
            await conn.send(post("/api/generate", b'{"prompt": "hi", "stream": false}'))
            generated = await conn.answer()
            conn.close()
            assert runner.intake is not None and runner.intake.answered == 2
        finally:
            await runner.cleanup()
        assert json.loads(whole.body)["choices"][0]["message"]["content"] == "The sky appears blue."
        assert json.loads(generated.body)["response"] == "The sky appears blue."

    async def test_refusals_on_an_ollama_chat_path(self, fake: FakeLLM) -> None:
        """An Ollama mount's ``chat_path`` outside ``/api/``: the handler's refusal in
        Ollama's shape, a refusal before the handler (a body over the limit) in
        OpenAI's, the same from both intakes."""
        replies: dict[str, list[Reply]] = {}
        for intake in INTAKES:
            llm = RemoteLLM("llm", endpoint=fake.url, model="llama3.2:1b")
            app = App(intake=intake, max_body=1024).mount(
                llm, dialect="ollama", chat_path="/ollama-chat"
            )
            runner = IntakeRunner(app.application(), handler_cancellation=True)
            await runner.setup()
            try:
                await runner.site("127.0.0.1", 0).start()
                conn = await Conn.open(f"http://127.0.0.1:{runner.addresses[0][1]}")
                await conn.send(post("/ollama-chat", b"{not json"))
                refused = await conn.answer()
                await conn.send(post("/ollama-chat", chat(pad="x" * 2000)))
                replies[intake] = [refused, await conn.answer()]
                conn.close()
                answered = 0 if runner.intake is None else runner.intake.answered
                assert answered == (2 if intake == "lean" else 0)
            finally:
                await runner.cleanup()
        bad_json, too_large = same(replies)
        assert bad_json.status == 400
        assert isinstance(json.loads(bad_json.body)["error"], str)  # Ollama's shape
        assert too_large.status == 413
        assert json.loads(too_large.body)["error"]["code"] == "payload_too_large"  # OpenAI's


class Broken(MicroService):
    """A custom node whose answer cannot be written (a bug in it, not a refusal)."""

    async def process(self, data: Any, ctx: Context) -> Completion:
        return Completion(text=object())  # type: ignore[arg-type]


class TestCrash:
    """A crash in the gateway's own code is a 500 in the caller's dialect on both."""

    async def test_unwritable_answer(self) -> None:
        """The same 500 body, logged as a crash, from both intakes."""
        replies: dict[str, Reply] = {}
        for intake in INTAKES:
            app = App(intake=intake).mount(Broken("broken")).mount(Broken("b2"), dialect="ollama")
            runner = IntakeRunner(app.application(), handler_cancellation=True)
            await runner.setup()
            try:
                await runner.site("127.0.0.1", 0).start()
                conn = await Conn.open(f"http://127.0.0.1:{runner.addresses[0][1]}")
                with capture_logs() as logs:
                    await conn.send(post("/api/chat", chat()))
                    replies[intake] = await conn.answer()
                conn.close()
            finally:
                await runner.cleanup()
            assert "meshkit.gateway.crashed" in [e["event"] for e in logs]
        assert replies["lean"].stable() == replies["aiohttp"].stable()
        assert replies["lean"].status == 500
        assert json.loads(replies["lean"].body) == {"error": "internal error in the gateway"}


class TestHandoff:
    """Everything but the chat endpoints goes to aiohttp, on the same connection."""

    async def test_one_keep_alive_connection(self, fake: FakeLLM) -> None:
        """Models, chat, metrics, health on one connection: all answered in turn."""
        for first in ("GET /v1/models", "POST"):
            async with serve(spec(fake.url, "lean")) as gw:
                conn = await Conn.open(gw.url)
                requests = [
                    b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n",
                    post(OPENAI, chat()),
                    b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
                ]
                if first == "POST":
                    requests.insert(0, requests.pop(1))
                bodies = []
                for request in requests:
                    await conn.send(request)
                    reply = await conn.answer()
                    assert reply.status == 200, reply
                    bodies.append(reply.body)
                conn.close()
                assert gw.intake is not None and gw.intake.handed_off == 1
                # A chat first is the lean intake's; after the hand-off, aiohttp's.
                assert gw.intake.answered == (1 if first == "POST" else 0)
                chat_body = bodies[[r.startswith(b"POST") for r in requests].index(True)]
                assert json.loads(chat_body)["choices"][0]["message"]["content"]
                assert b"meshkit_requests_total" in bodies[-2]
                assert json.loads(bodies[-1]) == {"status": "ok"}

    async def test_pipelined_behind_a_chat(self, fake: FakeLLM) -> None:
        """A chat and a models request in one write: the chat here, the rest aiohttp's."""
        async with serve(spec(fake.url, "lean")) as gw:
            conn = await Conn.open(gw.url)
            await conn.send(post(OPENAI, chat()) + b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
            replies = [await conn.answer(), await conn.answer()]
            conn.close()
            assert gw.intake is not None
            assert (gw.intake.answered, gw.intake.handed_off) == (1, 1)
        assert json.loads(replies[0].body)["object"] == "chat.completion"
        assert json.loads(replies[1].body)["object"] == "list"

    async def test_unsure_goes_to_aiohttp(self, fake: FakeLLM) -> None:
        """A malformed head, an unknown ``Expect``, an ``Upgrade``: aiohttp's answers."""
        cases = [
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
            post(OPENAI, chat(), extra="Expect: teapot\r\n"),
            b"NOT A REQUEST\r\n\r\n",
            post(OPENAI, chat(), extra="Content-Length: 3\r\n"),
            post(OPENAI, chat(), extra=f"X-Long: {'a' * 9000}\r\n"),
        ]
        for data in cases:
            replies = await both_raw(fake, data)
            assert replies["lean"][0] == replies["aiohttp"][0], data
            assert replies["lean"][0] >= 400, data


async def both_raw(fake: FakeLLM, data: bytes) -> dict[str, tuple[int, bool]]:
    """The status and whether the connection closed, for ``data`` sent to each intake."""
    out: dict[str, tuple[int, bool]] = {}
    for intake in INTAKES:
        async with serve(spec(fake.url, intake)) as gw:
            conn = await Conn.open(gw.url)
            await conn.send(data)
            reply = await conn.answer()
            out[intake] = (reply.status, reply.header("Connection") == "close")
            conn.close()
    return out


class TestRecord:
    """The request's record: metrics and the access line, as on aiohttp."""

    async def test_metrics_and_access_line(self, fake: FakeLLM) -> None:
        """Counts by status, streams by path, the in-flight gauge, the caller's trace."""
        lines: dict[str, list[dict[str, Any]]] = {}
        counts: dict[str, tuple[float, ...]] = {}
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        for intake in INTAKES:
            async with serve(spec(fake.url, intake)) as gw:
                conn = await Conn.open(gw.url)
                with capture_logs() as logs:
                    await conn.send(post(OPENAI, chat(), extra=f"traceparent: {trace}\r\n"))
                    await conn.answer()
                    await conn.send(post("/api/chat", chat(stream=True)))
                    await conn.answer()
                    await conn.send(post(OPENAI, b"{"))
                    await conn.answer()
                    await conn.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                    samples = parse((await conn.answer()).body.decode())
                conn.close()
            lines[intake] = [
                {k: v for k, v in e.items() if k not in ("duration_ms", "ttft_ms")}
                for e in logs
                if e["event"] == "meshkit.request"
            ]
            counts[intake] = (
                value(samples, "meshkit_requests_total", code="200"),
                value(samples, "meshkit_requests_total", code="400"),
                value(samples, "meshkit_streams_total", path="spliced"),
                value(samples, "meshkit_requests_in_flight"),
            )
        assert lines["lean"] == lines["aiohttp"]
        assert counts["lean"] == counts["aiohttp"] == (2, 1, 1, 0)
        assert lines["lean"][0]["trace_id"] == trace.split("-")[1]
        assert lines["lean"][2]["error"] == "invalid_request"

    @pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
    async def test_no_cycle_left(self, fake: FakeLLM, stream: bool) -> None:
        """A request's record (its nodes, attempts, kept chunks) and its upstream
        response are freed when it ends: nothing left for the cyclic collector."""
        async with serve(spec(fake.url, "lean")) as gw:
            conn = await Conn.open(gw.url)
            await conn.send(post(OPENAI, chat(stream=stream)))  # warm: pools, caches
            await conn.answer()
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                with capture_logs() as logs:
                    for _ in range(5):
                        await conn.send(post(OPENAI, chat(stream=stream)))
                        assert (await conn.answer()).status == 200
                    await until(lambda: len(logs) >= 5)  # every record has finished
                gc.collect()
                left = {type(o).__name__ for o in gc.garbage} & {"Record", "Response"}
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            conn.close()
        assert left == set()


class TestCallerLeaves:
    """A caller that leaves cancels the upstream call, as aiohttp's cancellation does."""

    @pytest.mark.parametrize("intake", INTAKES)
    async def test_before_the_answer(self, intake: str) -> None:
        """Gone before the first byte: the handler is cancelled, logged as 499."""
        slow = FakeLLM(first_delay=30)
        async with slow.serve():
            async with serve(spec(slow.url, intake)) as gw:
                with capture_logs() as logs:
                    conn = await Conn.open(gw.url)
                    await conn.send(post(OPENAI, chat()))
                    await until(lambda: bool(slow.requests))
                    conn.close()
                    await until(lambda: any(e["event"] == "meshkit.request" for e in logs))
        (line,) = [e for e in logs if e["event"] == "meshkit.request"]
        assert line["status"] == 499
        assert line["disconnected"] is True

    @pytest.mark.parametrize("intake", INTAKES)
    async def test_mid_stream(self, intake: str) -> None:
        """Gone mid-stream: the upstream stream is cancelled, the line says disconnected."""
        slow = FakeLLM(stall_after=2)
        async with slow.serve():
            async with serve(spec(slow.url, intake)) as gw:
                with capture_logs() as logs:
                    conn = await Conn.open(gw.url)
                    await conn.send(post(OPENAI, chat(stream=True)))
                    await conn.head()
                    conn.close()
                    async with asyncio.timeout(10):
                        await slow.cancelled.wait()
                    await until(lambda: any(e["event"] == "meshkit.request" for e in logs))
            slow.release()
        (line,) = [e for e in logs if e["event"] == "meshkit.request"]
        assert line["status"] == 200
        assert line["disconnected"] is True


class TestSlowCaller:
    """A lean caller that stops reading stops the upstream; reading again lets it all through."""

    @pytest.mark.parametrize("splice", [True, False], ids=["spliced", "pulled"])
    async def test_backpressure(self, splice: bool) -> None:
        """30 MB held back at the caller's pace, then delivered whole and in order."""
        total = 30_000
        llm = FakeLLM(tokens=[f"{i:06d}" + "x" * 1000 for i in range(total)])
        async with llm.serve():
            async with serve(spec(llm.url, "lean", splice=splice)) as gw:
                host, port = gw.url.split("//")[1].split(":")
                sock = await post_raw(host, int(port), {**CHAT, "stream": True})
                try:
                    await held_back(llm, total)
                    raw = await read_until(sock, b"data: [DONE]\n\n", within=60)
                finally:
                    sock.close()
                assert gw.intake is not None and gw.intake.answered == 1
        numbers = [
            int(e["choices"][0]["delta"]["content"][:6])
            for e in sse_payloads(dechunk(raw.partition(b"\r\n\r\n")[2]))
            if isinstance(e, dict) and e["choices"] and e["choices"][0]["delta"].get("content")
        ]
        assert numbers == list(range(total))


class TestShutdown:
    """Shutdown ends what is open through the app's drain, on either intake."""

    @pytest.mark.parametrize("intake", INTAKES)
    async def test_open_stream_and_idle_connection(self, intake: str) -> None:
        """An open stream ends with a final error event; an idle connection is closed."""
        slow = FakeLLM(tokens=[f" w{i}" for i in range(100)], delay=0.1)
        async with slow.serve():
            text = spec(slow.url, intake, shutdown_grace=1.0)
            app = build_app(Mesh(loads(text, env={})))
            runner = IntakeRunner(app, handler_cancellation=True, shutdown_timeout=5)
            await runner.setup()
            site = runner.site("127.0.0.1", 0)
            await site.start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            idle = await Conn.open(url)
            await idle.send(post("/api/chat", chat()))
            assert (await idle.answer()).status == 200
            conn = await Conn.open(url)
            await conn.send(post(OPENAI, chat(stream=True)))
            reading = asyncio.ensure_future(conn.answer())
            await until(lambda: bool(slow.sent) and len(slow.sent[-1]) >= 2)
            stopping = asyncio.ensure_future(runner.cleanup())
            # The lean intake closes idle connections at once, while the open stream runs
            # on through the grace (aiohttp closes its idle ones later, but closes them).
            assert await idle.closed()
            assert intake == "aiohttp" or not reading.done()
            reply = await reading
            await stopping
        events = stable_body(reply.body)
        assert "error" in events[-1], events
        idle.close()
        conn.close()


class TestIdle:
    """An idle keep-alive connection is closed after the keep-alive timeout."""

    async def test_keepalive_timeout(self, fake: FakeLLM) -> None:
        """After its answer, a silent connection is closed by the server."""
        async with serve(spec(fake.url, "lean"), keepalive_timeout=0.2) as gw:
            conn = await Conn.open(gw.url)
            await conn.send(post(OPENAI, chat()))
            assert (await conn.answer()).status == 200
            assert await conn.closed()
            conn.close()

    async def test_each_after_its_own_wait(self, fake: FakeLLM) -> None:
        """Connections idle since different times close in turn (one timer for them all):
        the later one stays open and answers after the first was closed."""
        async with serve(spec(fake.url, "lean"), keepalive_timeout=0.5) as gw:
            first = await Conn.open(gw.url)  # idle from its connect
            await asyncio.sleep(0.25)  # spacing only: the verdicts wait on the sockets
            later = await Conn.open(gw.url)
            await later.send(post(OPENAI, chat()))
            assert (await later.answer()).status == 200  # idle again from here
            assert await first.closed()
            await later.send(post(OPENAI, chat()))
            assert (await later.answer()).status == 200
            assert await later.closed()
            first.close()
            later.close()
