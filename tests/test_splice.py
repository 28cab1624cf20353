"""The gateway's fast path: a one-LLM stream pushed from the upstream's callbacks.

A pipeline that is one remote LLM answers with a ``PushStream``; the gateway splices
it into the response's sink (each chunk encoded and written from the upstream
connection's own callback) instead of pulling it chunk by chunk. Which way an answer
went is read from ``meshkit_streams_total``, and ``gateway: {splice: false}`` pulls
every stream. These tests prove the fast path is taken where it should be and nowhere
else, that it answers exactly what the pull path answers, byte for byte in a strict
HTTP/1.1 framing, and that a slow caller slows the upstream instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from meshkit.gateway.app import MESH, build_app
from meshkit.graph.mesh import Mesh
from meshkit.nodes.llm import RemoteLLM
from meshkit.spec import loads
from meshkit.testing import FakeLLM
from meshkit.testing_wire import Script

from .conftest import mesh_yaml, until
from .test_metrics import scrape, value

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
TOKENS = [f" w{i}" for i in range(40)]
GRAPH = """
services:
  llm: {{type: llm, endpoint: "{url}", model: llama3.2:1b}}
  guard: {{type: guardrail, params: {{words: [forbidden]}}}}
pipelines:
  chat: {{edges: ["llm -> guard"]}}
"""


def one_llm(url: str, *, splice: bool = True, **llm: Any) -> str:
    """A one-LLM services file, its streams spliced or (``splice: false``) pulled."""
    spec = yaml.safe_load(mesh_yaml(url, **llm))
    if not splice:
        spec["gateway"]["splice"] = False
    return yaml.safe_dump(spec)


async def paths(gw: Any) -> dict[str, float]:
    """The streamed answers counted per path, once no request is in flight."""
    async with asyncio.timeout(10):
        for _ in range(2000):
            samples = await scrape(gw)
            if value(samples, "meshkit_requests_in_flight", pipeline="chat") == 0:
                break
    return {p: value(samples, "meshkit_streams_total", path=p) for p in ("spliced", "pulled")}


def sse_payloads(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


class TestWhichPath:
    """The fast path is taken for one remote LLM, and only there (or nowhere if off)."""

    async def test_one_llm_stream_is_spliced_in_both_dialects(self, gateway) -> None:
        llm = FakeLLM(tokens=TOKENS)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            events = sse_payloads(await resp.read())
            assert events[-1] == "[DONE]"
            resp = await gw.post("/api/chat", json=CHAT)
            lines = [json.loads(x) for x in (await resp.read()).splitlines()]
            assert lines[-1]["done"] is True
            assert await paths(gw) == {"spliced": 2, "pulled": 0}

    async def test_a_graph_is_pulled_not_spliced(self, gateway) -> None:
        llm = FakeLLM(tokens=TOKENS)
        async with llm.serve():
            gw = await gateway(GRAPH.format(url=llm.url))
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            events = sse_payloads(await resp.read())
            assert await paths(gw) == {"spliced": 0, "pulled": 1}
        assert events[-1] == "[DONE]"
        text = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]
        )
        assert text == "".join(TOKENS)

    async def test_splice_false_pulls_a_one_llm_stream(self, gateway) -> None:
        llm = FakeLLM(tokens=TOKENS)
        async with llm.serve():
            gw = await gateway(one_llm(llm.url, splice=False))
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            assert sse_payloads(await resp.read())[-1] == "[DONE]"
            assert await paths(gw) == {"spliced": 0, "pulled": 1}

    async def test_a_whole_answer_is_not_a_stream(self, gateway) -> None:
        llm = FakeLLM(tokens=TOKENS)
        async with llm.serve():
            gw = await gateway(llm)
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": False})
            assert (await resp.json())["choices"][0]["message"]["content"] == "".join(TOKENS)
            assert await paths(gw) == {"spliced": 0, "pulled": 0}


class TestIdleBound:
    """A stream whose upstream falls silent past its head ends with an error, either way."""

    @pytest.mark.parametrize("splice", [True, False], ids=["spliced", "pulled"])
    async def test_a_stall_after_the_head_ends_the_stream(self, gateway, splice: bool) -> None:
        llm = FakeLLM(tokens=TOKENS, stall_after=3)
        async with llm.serve():
            gw = await gateway(one_llm(llm.url, splice=splice, idle_timeout=0.2))
            async with asyncio.timeout(10):
                resp = await gw.post("/v1/chat/completions", json=CHAT)
                events = sse_payloads(await resp.read())
            assert resp.status == 200
            assert "stalled" in events[-1]["error"]["message"]
            texts = [e["choices"][0]["delta"].get("content") for e in events[:-1]]
            assert texts[-3:] == TOKENS[:3]
            await until(llm.cancelled.is_set, within=10)
            counted = await paths(gw)
            assert counted == {"spliced": int(splice), "pulled": int(not splice)}
            llm.release()


class TestSameAnswer:
    """Splicing changes how chunks travel, never what the caller receives."""

    async def answers(self, gateway, path: str, body: dict[str, Any], *, splice: bool) -> list[Any]:
        llm = FakeLLM(tokens=TOKENS)
        async with llm.serve():
            gw = await gateway(one_llm(llm.url, splice=splice))
            resp = await gw.post(path, json=body)
            assert resp.status == 200
            raw = await resp.read()
            counted = await paths(gw)
        assert counted == ({"spliced": 1, "pulled": 0} if splice else {"spliced": 0, "pulled": 1})
        if path.startswith("/v1"):
            return sse_payloads(raw)
        lines = [json.loads(x) for x in raw.splitlines()]
        for line in lines:  # wall-clock fields differ between any two runs
            for key in ("created_at", "total_duration", "load_duration", "eval_duration"):
                line.pop(key, None)
            line.pop("prompt_eval_duration", None)
        return lines

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/v1/chat/completions", CHAT),
            (
                "/v1/chat/completions",
                {**CHAT, "stream_options": {"include_usage": True}},
            ),
            ("/api/chat", CHAT),
            ("/api/generate", {"prompt": "hi"}),
        ],
    )
    async def test_spliced_equals_pulled(self, gateway, path: str, body: dict[str, Any]) -> None:
        spliced = await self.answers(gateway, path, body, splice=True)
        pulled = await self.answers(gateway, path, body, splice=False)
        if path.startswith("/v1"):
            # the same upstream events (ids are the fake's own and differ per request)
            for e in spliced + pulled:
                if isinstance(e, dict):
                    e.pop("id", None)
        assert spliced == pulled


class TestOneWriter:
    """Every byte of a streamed response leaves through its sink, in strict HTTP/1.1.

    The head must be on the wire before the first event: aiohttp may hold a head
    back to send it with the body, so the sink sends it explicitly. Should aiohttp
    change how (or whether) ``send_headers`` sends it, these responses break here.
    """

    @pytest.mark.parametrize("splice", [True, False], ids=["spliced", "pulled"])
    @pytest.mark.parametrize("fault", [None, "error_after"], ids=["whole", "broken"])
    async def test_the_wire_is_one_head_then_chunks_then_the_end(
        self, gateway, splice: bool, fault: str | None
    ) -> None:
        llm = FakeLLM(tokens=TOKENS, **({fault: 5} if fault else {}))
        async with llm.serve():
            gw = await gateway(one_llm(llm.url, splice=splice))
            sock = await post_raw(gw.server.host, gw.server.port, CHAT)
            try:
                raw = await read_until(sock, b"\r\n0\r\n\r\n", within=30)
                # Nothing follows the end of the body (the connection is kept alive).
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
            finally:
                sock.close()
            counted = await paths(gw)
        assert counted["spliced" if splice else "pulled"] == 1
        head, sep, body = raw.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert b"HTTP/1.1" not in body
        payload = strict_dechunk(body)
        events = sse_payloads(payload)
        if fault is None:
            assert events[-1] == "[DONE]"
            text = "".join(
                e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]
            )
            assert text == "".join(TOKENS)
        else:
            assert "error" in events[-1]  # the error event is the last one, in the framing
            assert "[DONE]" not in events


class TestSlowCaller:
    """A caller that stops reading stops the upstream too; nothing piles up."""

    @pytest.mark.parametrize(
        ("graph", "splice"),
        [(False, True), (True, True), (False, False)],
        ids=["spliced", "graph-pulled", "one-llm-pulled"],
    )
    async def test_upstream_waits_for_a_caller_that_does_not_read(
        self, gateway, graph: bool, splice: bool
    ) -> None:
        total = 30_000
        token = "x" * 1000
        llm = FakeLLM(tokens=[f"{i:06d}{token}" for i in range(total)])
        async with llm.serve():
            gw = await gateway(
                GRAPH.format(url=llm.url) if graph else one_llm(llm.url, splice=splice)
            )
            sock = await post_raw(gw.server.host, gw.server.port, {**CHAT, "model": "llama3.2:1b"})
            try:
                await held_back(llm, total)
                mesh = gw.server.app[MESH]
                assert mesh.client.connections_in_use == 1
                # Reading again lets everything through, whole and in order.
                raw = await read_until(sock, b"data: [DONE]\n\n", within=60)
            finally:
                sock.close()
            counted = await paths(gw)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        numbers = [
            int(e["choices"][0]["delta"]["content"][:6])
            for e in sse_payloads(dechunk(body))
            if isinstance(e, dict) and e["choices"] and e["choices"][0]["delta"].get("content")
        ]
        spliced = splice and not graph
        assert counted == {"spliced": int(spliced), "pulled": int(not spliced)}
        assert numbers == list(range(total))

    @pytest.mark.parametrize("cancels", [True, False], ids=["cancelled", "not-cancelled"])
    @pytest.mark.parametrize("splice", [True, False], ids=["spliced", "pulled"])
    async def test_a_caller_that_resets_while_held_back_frees_the_upstream(
        self, splice: bool, cancels: bool
    ) -> None:
        """With or without aiohttp cancelling the handler of a caller that left (an
        app mounting meshkit's handlers may not ask for it), the stream ends as gone."""
        total = 30_000
        llm = FakeLLM(tokens=[f"{i:06d}" + "x" * 1000 for i in range(total)])
        async with llm.serve():
            app = build_app(Mesh(loads(one_llm(llm.url, splice=splice), env={})))
            runner = web.AppRunner(app, handler_cancellation=cancels)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                async with aiohttp.ClientSession(f"http://{host}:{port}") as gw:
                    with capture_logs() as logs:
                        sock = await post_raw(host, port, CHAT)
                        try:
                            await held_back(llm, total)
                        finally:
                            # A reset (not a clean close) while the gateway waits.
                            linger = struct.pack("ii", 1, 0)
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                            sock.close()
                        await until(llm.cancelled.is_set, within=30)
                        mesh = app[MESH]
                        await until(lambda: mesh.client.connections_in_use == 0, within=10)
                        counted = await paths(gw)
                    samples = await scrape(gw)
            finally:
                await runner.cleanup()
        assert value(samples, "meshkit_client_disconnects_total", pipeline="chat") == 1
        assert counted["spliced" if splice else "pulled"] == 1
        events = [e["event"] for e in logs]
        if not cancels:
            assert "meshkit.client.gone" in events
        assert "meshkit.stream.crashed" not in events  # a caller leaving is no crash
        (llm_node,) = (s for s in mesh.services.values() if isinstance(s, RemoteLLM))
        (replica,) = llm_node.replicas
        assert replica.failures == 0  # the caller's doing, not the upstream's


class TestEventsOfOneRead:
    """Several upstream events in one read reach the caller whole and in order, then the end."""

    @pytest.mark.parametrize("fault", [None, "error"], ids=["whole", "broken"])
    @pytest.mark.parametrize("split", [False, True], ids=["one-read", "head-first"])
    @pytest.mark.parametrize("api", ["openai", "ollama"])
    async def test_a_reads_events_arrive_intact_and_in_order(
        self, gateway, api: str, split: bool, fault: str | None
    ) -> None:
        """one-read: the whole answer, end or error event included, in the read that
        carries the head (the splice returns without waiting); head-first: every event
        after the first, and the end, in one later read."""
        tokens = [f" t{i}" for i in range(8)]
        script = Script(body={}, model="llama3.2:1b", tokens=tokens)
        if api == "openai":
            steps = script.openai_steps("chatcmpl-1")
            end = b'data: {"error": {"message": "boom"}}\n\n' if fault else script.openai_end("x")
            kind, path = "text/event-stream", "/v1/chat/completions"
        else:
            steps = script.ollama_steps()
            end = b'{"error": "boom"}\n' if fault else script.ollama_end()
            kind, path = "application/x-ndjson", "/api/chat"
        async with one_segment_upstream(kind, [*steps, end], split) as (url, go_on):
            gw = await gateway(mesh_yaml(url, api=api))
            sock = await post_raw(gw.server.host, gw.server.port, CHAT, path)
            try:
                raw = b""
                if split:  # the rest follows once the first event has reached the caller
                    raw = await read_until(sock, b"t0", within=30)
                    go_on.set()
                raw += await read_until(sock, b"\r\n0\r\n\r\n", within=30)
            finally:
                sock.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        payload = strict_dechunk(body)
        if api == "openai":
            events = sse_payloads(payload)
            last = events[-1]
            texts = [
                e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]
            ]
        else:
            events = [json.loads(x) for x in payload.splitlines()]
            last = events[-1]
            texts = [e["message"]["content"] for e in events[:-1] if "message" in e]
        assert "".join(texts) == "".join(tokens)  # every event, in order
        if fault:
            assert "error" in last and "boom" in json.dumps(last)
        elif api == "openai":
            assert last == "[DONE]"
        else:
            assert last["done"] is True


@contextlib.asynccontextmanager
async def one_segment_upstream(
    kind: str, pieces: list[bytes], split: bool
) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An upstream that answers every request with ``pieces`` (one HTTP chunk each) in
    ONE send: head and all (or, ``split``, the head and first piece, then the rest in
    one send once the event it yields is set)."""
    go_on = asyncio.Event()
    open_: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        open_[task] = writer
        try:
            for _ in range(100):  # health probes, then the chat request (keep-alive)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                if head.startswith(b"GET "):  # a health probe: the model list
                    known = (
                        b'{"data": [{"id": "llama3.2:1b"}], "models": [{"name": "llama3.2:1b"}]}'
                    )
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(known), known)
                    )
                    continue
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                frames = [b"%x\r\n%b\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
                start = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n" % kind.encode()
                start += b"Transfer-Encoding: chunked\r\n\r\n"
                if split:
                    writer.write(start + frames[0])
                    await asyncio.wait_for(go_on.wait(), 30)
                    writer.write(b"".join(frames[1:]))
                else:
                    writer.write(start + b"".join(frames))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            open_.pop(task, None)

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", go_on
    finally:
        server.close()
        for writer in list(open_.values()):
            writer.close()
        if open_:
            await asyncio.wait(list(open_), timeout=10)
        await server.wait_closed()


async def held_back(llm: FakeLLM, total: int) -> None:
    """Wait until the upstream has come to a stop well before its end (30 MB; the
    sockets' buffers on the way hold at most about 9 MB here)."""
    await until(lambda: len(llm.sent) == 1 and len(llm.sent[0]) > 100, within=30)
    seen = -1
    for _ in range(200):
        if seen == len(llm.sent[0]):
            break
        seen = len(llm.sent[0])
        await asyncio.sleep(0.3)
    assert seen == len(llm.sent[0]), "the upstream never stopped"
    assert seen < total // 2


async def post_raw(
    host: str, port: int, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> socket.socket:
    """Send a chat request on a raw socket (nothing read yet)."""
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    data = json.dumps(body).encode()
    await loop.sock_sendall(
        sock,
        b"POST %s HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(data), data),
    )
    return sock


async def read_until(sock: socket.socket, end: bytes, *, within: float) -> bytes:
    """Read from ``sock`` until ``end`` shows up (or the time is up)."""
    loop = asyncio.get_running_loop()
    parts = bytearray()
    async with asyncio.timeout(within):
        while end not in parts[-4096:]:
            data = await loop.sock_recv(sock, 1 << 16)
            if not data:
                break
            parts += data
    return bytes(parts)


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked body (as far as it goes)."""
    out = bytearray()
    at = 0
    while at < len(body):
        eol = body.index(b"\r\n", at)
        size = int(body[at:eol], 16)
        if size == 0:
            break
        out += body[eol + 2 : eol + 2 + size]
        at = eol + 4 + size
    return bytes(out)


def strict_dechunk(body: bytes) -> bytes:
    """The payload of a whole chunked body; fails on any framing fault or trailing byte."""
    out = bytearray()
    at = 0
    while True:
        eol = body.index(b"\r\n", at)
        size_text = body[at:eol]
        assert size_text and all(c in b"0123456789abcdef" for c in size_text), size_text
        size = int(size_text, 16)
        if size == 0:
            assert body[eol:] == b"\r\n\r\n", body[eol:]
            return bytes(out)
        end = eol + 2 + size
        assert body[end : end + 2] == b"\r\n", "a chunk is not followed by CRLF"
        out += body[eol + 2 : end]
        at = end + 2
