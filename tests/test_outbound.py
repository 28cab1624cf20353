"""The outbound path under real-world conditions, end to end through the gateway.

Stale keep-alive sockets, callers that stop reading, limits on connections and answer
sizes, redirects, addresses that do not answer (Happy Eyeballs) and a model server that
comes up after the gateway. Every upstream is a real server on 127.0.0.1 (or ``::1``).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from meshkit.client import ReplicaSet, dial
from meshkit.client.http import ConnectionsBusy, HttpClient, Limits, Timeouts
from meshkit.client.pool import Pool
from meshkit.errors import SpecError, UpstreamConnectError, UpstreamError, UpstreamTimeout
from meshkit.gateway.app import ADMISSION
from meshkit.spec import loads
from meshkit.testing import FakeLLM, serve_app

from .conftest import TcpServer, free_port, until
from .test_resilience import CHAT, llm_of, mesh_text, ndjson, settled, sse_events, start

PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat"}


# -- an upstream whose idle connections go stale ------------------------------------------


class StaleRelay(TcpServer):
    """A TCP relay in front of ``target`` that drops every reused connection.

    Each connection carries one request: once the upstream has answered anything on
    it, a further request arriving on it is read and the connection closed unanswered
    — what a server with a short keep-alive does when its idle timer fires just as the
    next request is written. ``dropped`` counts those requests.
    """

    def __init__(self, target: str) -> None:
        super().__init__()
        self.host, port = target.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.dropped = 0
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        answered = asyncio.Event()

        async def down() -> None:
            while data := await up_reader.read(65536):
                answered.set()
                writer.write(data)
                await writer.drain()
            writer.close()

        relay_down = asyncio.ensure_future(down())
        try:
            while data := await reader.read(65536):
                if answered.is_set():
                    self.dropped += 1  # a second request on this connection
                    break
                up_writer.write(data)
                await up_writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            relay_down.cancel()
            await asyncio.gather(relay_down, return_exceptions=True)
            up_writer.close()
            writer.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    llm = FakeLLM()
    async with llm.serve():
        yield llm


class TestStaleSockets:
    """A pooled socket the upstream closed costs nothing: no error, no replica failure."""

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
    async def test_zero_errors_when_every_reused_socket_is_stale(
        self, fake: FakeLLM, aiohttp_client: Any, stream: bool
    ) -> None:
        async with StaleRelay(fake.url) as relay:
            gw = await start(aiohttp_client, mesh_text(relay.url, retries=0))
            for _ in range(12):
                resp = await gw.post(PATHS["openai"], json={**CHAT, "stream": stream})
                raw = await resp.read()
                assert resp.status == 200, raw
                if stream:
                    assert sse_events(raw)[-1] == "[DONE]"
                else:
                    assert json.loads(raw)["choices"][0]["message"]["content"]
                await settled(gw)  # its connection is back in the pool, idle
            # Every request after the first met a stale socket and went out again on a
            # new connection: unseen by the caller, the retry budget (0) and the replica.
            assert relay.dropped == 11 and relay.connections == 12
            assert len(fake.requests) == 12
            (replica,) = llm_of(gw).replicas
            assert replica.failures == 0 and replica.state(0.0) == "closed"


# -- a caller that stops reading --------------------------------------------------------------

ONE_LLM = """
services:
  llm: {{type: llm, endpoint: "{url}", model: llama3.2:1b, health_interval: 0}}
pipelines:
  chat: {{nodes: [llm]}}
gateway: {{send_timeout: {send_timeout}}}
"""
GRAPH = """
services:
  llm: {{type: llm, endpoint: "{url}", model: llama3.2:1b, health_interval: 0}}
  guard: {{type: guardrail, params: {{words: [forbidden]}}}}
pipelines:
  chat: {{edges: ["llm -> guard"]}}
gateway: {{send_timeout: {send_timeout}}}
"""
BIG_TOKENS = [f"{i:06d}" + "x" * 4000 for i in range(3000)]  # 12 MB: past every buffer


async def raw_stream_request(host: str, port: int, path: str) -> socket.socket:
    """Send a streaming chat request on a raw socket with a small receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    body = json.dumps({**CHAT, "stream": True}).encode()
    await loop.sock_sendall(
        sock,
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body),
    )
    return sock


async def read_to_end(sock: socket.socket, *, within: float) -> tuple[bytes, bool]:
    """Everything left on ``sock`` and whether the gateway reset it."""
    loop = asyncio.get_running_loop()
    parts = bytearray()
    async with asyncio.timeout(within):
        while True:
            try:
                data = await loop.sock_recv(sock, 1 << 16)
            except ConnectionResetError:
                return bytes(parts), True
            if not data:
                return bytes(parts), False
            parts += data


class TestStalledCaller:
    """A caller that reads nothing for ``send_timeout`` is cut off, and so is its upstream."""

    @pytest.mark.parametrize("graph", [False, True], ids=["spliced", "graph-pulled"])
    @pytest.mark.parametrize("dialect", ["openai", "ollama"])
    async def test_stream_ends_after_send_timeout(
        self, gateway: Any, graph: bool, dialect: str
    ) -> None:
        llm = FakeLLM(tokens=BIG_TOKENS)
        async with llm.serve():
            text = (GRAPH if graph else ONE_LLM).format(url=llm.url, send_timeout=0.3)
            gw = await gateway(text)
            with capture_logs() as logs:
                sock = await raw_stream_request(gw.server.host, gw.server.port, PATHS[dialect])
                try:
                    # Not one byte is read: the gateway must give up on its own.
                    await until(llm.cancelled.is_set, within=30)
                    await settled(gw)
                    # What the kernel still held arrives, then the end: never the
                    # answer's proper end (the caller must not take it as whole).
                    raw, _ = await read_to_end(sock, within=30)
                finally:
                    sock.close()
        assert raw.startswith(b"HTTP/1.1 200")
        assert not raw.endswith(b"\r\n0\r\n\r\n")
        assert b"[DONE]" not in raw and b'"done":true' not in raw.replace(b" ", b"")
        assert len(llm.sent[0]) < len(BIG_TOKENS)
        assert any(e["event"] == "meshkit.stream.stalled" for e in logs)
        (replica,) = llm_of(gw).replicas
        assert replica.failures == 0  # the caller's fault, not the upstream's

    async def test_a_caller_that_keeps_reading_is_never_cut(self, gateway: Any) -> None:
        llm = FakeLLM(tokens=BIG_TOKENS[:600])
        async with llm.serve():
            gw = await gateway(ONE_LLM.format(url=llm.url, send_timeout=0.3))
            sock = await raw_stream_request(gw.server.host, gw.server.port, PATHS["openai"])
            try:
                raw, reset = await read_to_end_of_stream(sock)
            finally:
                sock.close()
        assert not reset and raw.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")

    async def test_send_timeout_zero_waits_for_ever(self, gateway: Any) -> None:
        """``send_timeout: 0`` turns the bound off (the spec accepts it)."""
        llm = FakeLLM()
        async with llm.serve():
            gw = await gateway(ONE_LLM.format(url=llm.url, send_timeout=0))
            resp = await gw.post(PATHS["openai"], json={**CHAT, "stream": True})
            assert sse_events(await resp.read())[-1] == "[DONE]"


async def read_to_end_of_stream(sock: socket.socket) -> tuple[bytes, bool]:
    loop = asyncio.get_running_loop()
    parts = bytearray()
    async with asyncio.timeout(60):
        while not parts.endswith(b"\r\n0\r\n\r\n"):
            try:
                data = await loop.sock_recv(sock, 1 << 16)
            except ConnectionResetError:
                return bytes(parts), True
            if not data:
                break
            parts += data
    return bytes(parts), False


# -- limits -------------------------------------------------------------------------------------


class TestMaxConnections:
    """At most ``max_connections`` requests per service in flight; more wait their turn."""

    async def test_requests_past_the_limit_wait_then_go(self, aiohttp_client: Any) -> None:
        llm = FakeLLM(hold_last=True)
        async with llm.serve():
            gw = await start(aiohttp_client, mesh_text(llm.url, max_connections=2))
            calls = [
                asyncio.ensure_future(gw.post(PATHS["openai"], json={**CHAT, "stream": True}))
                for _ in range(3)
            ]
            admission = gw.server.app[ADMISSION]
            await until(lambda: llm.in_flight == 2 and admission.in_flight == 3)
            assert len(llm.requests) == 2  # the third waits in the gateway
            llm.release()
            for call in calls:
                resp = await call
                assert sse_events(await resp.read())[-1] == "[DONE]"
            assert len(llm.requests) == 3
            await settled(gw)

    @pytest.mark.parametrize("dialect", ["openai", "ollama"])
    async def test_a_wait_past_the_budget_is_504(self, aiohttp_client: Any, dialect: str) -> None:
        llm = FakeLLM(hold_last=True)
        async with llm.serve():
            text = mesh_text(llm.url, max_connections=1, timeout=0.3, idle_timeout=30)
            gw = await start(aiohttp_client, text)
            first = asyncio.ensure_future(gw.post(PATHS[dialect], json={**CHAT, "stream": True}))
            await until(lambda: llm.in_flight == 1)
            resp = await gw.post(PATHS[dialect], json={**CHAT, "stream": True})
            body = await resp.json()
            assert resp.status == 504
            message = body["error"] if dialect == "ollama" else body["error"]["message"]
            assert "max_connections" in message and "all 1 connections" in message
            if dialect == "openai":
                assert body["error"]["code"] == ConnectionsBusy.code
            llm.release()
            assert (await first).status == 200
            assert len(llm.requests) == 1
            (replica,) = llm_of(gw).replicas
            assert replica.failures == 0  # the gateway's own bound, not the replica's fault
            await settled(gw)


class TestAnswerSize:
    """An answer read whole is bounded by ``max_response_body``; a stream is not."""

    @pytest.mark.parametrize("dialect", ["openai", "ollama"])
    async def test_an_answer_over_the_limit_is_502(self, aiohttp_client: Any, dialect: str) -> None:
        llm = FakeLLM(tokens=["y" * 3000])
        async with llm.serve():
            gw = await start(aiohttp_client, mesh_text(llm.url, max_response_body="2KiB"))
            resp = await gw.post(PATHS[dialect], json={**CHAT, "stream": False})
            body = await resp.json()
            assert resp.status == 502
            message = body["error"] if dialect == "ollama" else body["error"]["message"]
            assert message == (
                "llm: the upstream's answer is over the limit of 2 KiB (max_response_body)"
            )
            assert len(llm.requests) == 1  # not retried
            # The same answer streamed is not bounded.
            resp = await gw.post(PATHS[dialect], json={**CHAT, "stream": True})
            raw = await resp.read()
            assert resp.status == 200
            if dialect == "openai":
                assert sse_events(raw)[-1] == "[DONE]"
            else:
                assert ndjson(raw)[-1]["done"] is True
            await settled(gw)

    async def test_fetch_is_bounded_by_the_client_limits(self) -> None:
        async def big(request: web.Request) -> web.Response:
            return web.Response(body=b"z" * 5000)

        app = web.Application()
        app.router.add_get("/big", big)
        async with serve_app(app) as url, HttpClient(limits=Limits(max_body=4096)) as client:
            with pytest.raises(UpstreamError, match="over the limit of 4 KiB"):
                await client.fetch("GET", url + "/big", service="svc", timeouts=Timeouts())
            client.set_limits("roomy", Limits(max_body=8192))
            body = await client.fetch("GET", url + "/big", service="roomy", timeouts=Timeouts())
            assert len(body) == 5000
            assert client.connections_in_use == 0 and client.live_responses == 0


# -- redirects ----------------------------------------------------------------------------------


class TestRedirects:
    """An upstream that redirects is a 502 that says where it pointed; never followed."""

    @pytest.mark.parametrize("dialect", ["openai", "ollama"])
    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
    async def test_redirect_is_a_502(self, aiohttp_client: Any, dialect: str, stream: bool) -> None:
        followed: list[str] = []

        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect("http://elsewhere.invalid/v1/chat/completions")

        async def elsewhere(request: web.Request) -> web.Response:
            followed.append(request.path)
            return web.Response(text="no")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", moved)
        app.router.add_post("/api/chat", moved)
        app.router.add_route("*", "/{tail:.*}", elsewhere)
        async with serve_app(app) as url:
            gw = await start(aiohttp_client, mesh_text(url))
            resp = await gw.post(PATHS[dialect], json={**CHAT, "stream": stream})
            body = await resp.json()
        assert resp.status == 502
        message = body["error"] if dialect == "ollama" else body["error"]["message"]
        assert "redirected (307) to http://elsewhere.invalid/v1/chat/completions" in message
        assert followed == []


# -- connecting: every address, raced ----------------------------------------------------------


@pytest.fixture
def ipv6_black_hole() -> Iterator[Callable[[int], None]]:
    """Make ``[::1]:port`` a black hole: a listener whose backlog is full, so a new
    connect waits for ever (its SYN is dropped), as to a host whose route is dead."""
    held: list[socket.socket] = []

    def make(port: int) -> None:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", port))
        listener.listen(0)
        held.append(listener)
        for _ in range(3):
            filler = socket.socket(socket.AF_INET6)
            filler.setblocking(False)
            try:
                filler.connect(("::1", port))
            except BlockingIOError:
                pass
            held.append(filler)

    yield make
    for sock in held:
        sock.close()


async def hello_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"hello over IPv4")

    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


class TestHappyEyeballs:
    """A name whose first address does not answer still connects at once."""

    def test_families_interleave(self) -> None:
        v6 = [(socket.AF_INET6, (f"::{i}", 1, 0, 0)) for i in (1, 2, 3)]
        v4 = [(socket.AF_INET, (f"127.0.0.{i}", 1)) for i in (1, 2)]
        order = [a[1][0] for a in dial.interleave([*v6, *v4])]
        assert order == ["::1", "127.0.0.1", "::2", "127.0.0.2", "::3"]

    async def test_a_dead_first_address_is_raced_past(self, ipv6_black_hole: Any) -> None:
        async with serve_app(await hello_app()) as url:
            port = int(url.rsplit(":", 1)[1])
            ipv6_black_hole(port)
            addresses = [
                (socket.AF_INET6, ("::1", port, 0, 0)),
                (socket.AF_INET, ("127.0.0.1", port)),
            ]
            # Alone, the first address never answers ...
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await dial.happy_eyeballs(addresses[:1])
            # ... raced, the second one wins.
            async with asyncio.timeout(3.0):
                sock = await dial.happy_eyeballs(addresses)
            with sock:
                assert sock.getpeername()[:2] == ("127.0.0.1", port)

    async def test_a_name_resolving_to_v6_first(self, ipv6_black_hole: Any) -> None:
        """``model.test`` resolves to ``::1`` then ``127.0.0.1``; the server is on IPv4
        only and ``::1`` is a black hole: the call succeeds within a 2 s connect timeout."""
        async with serve_app(await hello_app()) as url:
            port = int(url.rsplit(":", 1)[1])
            ipv6_black_hole(port)
            asked: list[str] = []

            async def resolver(host: str, port: int) -> list[dial.Address]:
                asked.append(host)
                return [
                    (socket.AF_INET6, ("::1", port, 0, 0)),
                    (socket.AF_INET, ("127.0.0.1", port)),
                ]

            async with HttpClient(resolver=resolver) as client:
                body = await client.fetch(
                    "GET",
                    f"http://model.test:{port}/hello",
                    service="llm",
                    timeouts=Timeouts(connect=2.0, first_byte=5.0),
                )
            assert body == b"hello over IPv4" and asked == ["model.test"]

    async def test_every_address_refused_is_a_connect_error(self) -> None:
        port = free_port()

        async def resolver(host: str, port: int) -> list[dial.Address]:
            return [(socket.AF_INET6, ("::1", port, 0, 0)), (socket.AF_INET, ("127.0.0.1", port))]

        async with HttpClient(resolver=resolver) as client:
            with pytest.raises(UpstreamConnectError, match=f"cannot connect to model.test:{port}"):
                await client.fetch(
                    "GET", f"http://model.test:{port}/", service="llm", timeouts=Timeouts()
                )
            assert client.connections_in_use == 0


class TestDialStorm:
    """Many new connections to one upstream at once (issue 16): one lookup, one step each."""

    URL = "http://model.test:{port}/hello"

    @staticmethod
    def gated_resolver(
        asked: list[str], release: asyncio.Event, fail: bool = False
    ) -> dial.Resolver:
        async def resolver(host: str, port: int) -> list[dial.Address]:
            asked.append(host)
            await release.wait()
            if fail:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [(socket.AF_INET, ("127.0.0.1", port))]

        return resolver

    def fetches(self, client: HttpClient, port: int, count: int) -> list[asyncio.Future[bytes]]:
        """``count`` GETs of the test name started at once, each needing a new connection."""
        url = self.URL.format(port=port)
        return [
            asyncio.ensure_future(client.fetch("GET", url, service="llm", timeouts=Timeouts()))
            for _ in range(count)
        ]

    async def test_concurrent_dials_share_one_lookup(self) -> None:
        """20 calls opening new connections to one name at once ask the resolver once;
        nothing is kept after it answered (a later dial asks again)."""
        async with serve_app(await hello_app()) as url:
            port = int(url.rsplit(":", 1)[1])
            asked: list[str] = []
            release = asyncio.Event()
            async with HttpClient(resolver=self.gated_resolver(asked, release)) as client:
                calls = self.fetches(client, port, 20)
                # Every call reached the lookup in the loop pass before the one that ran
                # the resolver: once it has been asked, all 20 are waiting on it.
                await until(lambda: len(asked) >= 1)
                release.set()
                bodies = await asyncio.gather(*calls)
                assert bodies == [b"hello over IPv4"] * 20
                assert asked == ["model.test"]
                assert (
                    await client.probe(self.URL.format(port=port), within=5.0, headers={}) is None
                )
            assert asked == ["model.test", "model.test"]

    async def test_a_failed_lookup_fails_every_dial_that_shared_it(self) -> None:
        port = free_port()
        asked: list[str] = []
        release = asyncio.Event()
        async with HttpClient(resolver=self.gated_resolver(asked, release, fail=True)) as client:
            calls = self.fetches(client, port, 5)
            await until(lambda: len(asked) >= 1)
            release.set()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert asked == ["model.test"]
            for result in results:
                assert isinstance(result, UpstreamConnectError)
                assert f"cannot connect to model.test:{port}" in str(result)
            assert client.connections_in_use == 0

    async def test_a_dial_given_up_leaves_the_others_lookup_running(self) -> None:
        async with serve_app(await hello_app()) as url:
            port = int(url.rsplit(":", 1)[1])
            asked: list[str] = []
            release = asyncio.Event()
            async with HttpClient(resolver=self.gated_resolver(asked, release)) as client:
                calls = self.fetches(client, port, 3)
                await until(lambda: len(asked) >= 1)
                calls[0].cancel()  # the dial that started the lookup leaves
                release.set()
                with pytest.raises(asyncio.CancelledError):
                    await calls[0]
                assert await asyncio.gather(*calls[1:]) == [b"hello over IPv4"] * 2
                assert asked == ["model.test"]

    async def test_an_ipv6_literal_upstream(self) -> None:
        """``http://[::1]:port`` is connected in one step by the loop, like an IPv4 one."""
        async with serve_app(await hello_app(), host="::1") as url:
            port = int(url.rsplit(":", 1)[1])
            async with HttpClient() as client:
                body = await client.fetch(
                    "GET", f"http://[::1]:{port}/hello", service="llm", timeouts=Timeouts()
                )
        assert body == b"hello over IPv4"


class TestConnectTimeout:
    """A dial that never connects ends at its connect timeout, however many are running;
    the pool's one timer for them never touches a dial that ended or a caller's own
    cancellation."""

    @pytest.mark.parametrize("via", ["literal", "name"])
    async def test_a_dial_that_never_connects_is_a_connect_error(
        self, ipv6_black_hole: Any, via: str
    ) -> None:
        """``[::1]:port`` drops every SYN: the call fails as a connect error at 0.3 s
        (the first-byte budget is 5 s), by IP literal or by a name resolving to it."""
        port = free_port()
        ipv6_black_hole(port)

        async def resolver(host: str, port: int) -> list[dial.Address]:
            return [(socket.AF_INET6, ("::1", port, 0, 0))]

        host = "[::1]" if via == "literal" else "model.test"
        async with HttpClient(resolver=resolver) as client:
            with pytest.raises(UpstreamConnectError, match=r"llm: no connection within 0.3 s"):
                await client.fetch(
                    "GET",
                    f"http://{host}:{port}/",
                    service="llm",
                    timeouts=Timeouts(connect=0.3, first_byte=5.0),
                )
            assert client.connections_in_use == 0

    @pytest.mark.parametrize(
        ("connect", "first_byte", "error", "message"),
        [
            (0.3, 5.0, UpstreamConnectError, r"llm: no connection within 0.3 s"),
            (5.0, 0.3, UpstreamTimeout, r"llm: no answer within 0.3 s"),
        ],
    )
    async def test_an_unbounded_call_dials_within_the_sooner_bound(
        self,
        ipv6_black_hole: Any,
        connect: float,
        first_byte: float,
        error: type[Exception],
        message: str,
    ) -> None:
        """A call its caller does not bound gives up a dial at the connect timeout or
        at the first-byte budget, whichever ends first, and says which it was."""
        port = free_port()
        ipv6_black_hole(port)
        async with HttpClient() as client:
            with pytest.raises(error, match=message):
                async with asyncio.timeout(10):  # a hang fails: no message to match
                    await client.start(
                        "GET",
                        f"http://[::1]:{port}/",
                        service="llm",
                        timeouts=Timeouts(connect=connect, first_byte=first_byte),
                    )
            assert client.connections_in_use == 0

    async def test_a_sooner_deadline_beside_a_later_one(self, ipv6_black_hole: Any) -> None:
        """A dial begun after another with a sooner deadline ends at its own; the other
        goes on until its caller leaves, which is a cancellation, not a timeout."""
        port = free_port()
        ipv6_black_hole(port)
        pool = Pool()
        key = ("http", "::1", port)
        try:
            late = asyncio.ensure_future(pool.connection(key, within=30.0))
            soon = asyncio.ensure_future(pool.connection(key, within=0.2))
            await asyncio.wait([soon], timeout=10.0)  # (a bound on the test, not the verdict)
            assert soon.done() and isinstance(soon.exception(), TimeoutError)
            assert not late.done()
            late.cancel()
            with pytest.raises(asyncio.CancelledError):
                await late
        finally:
            pool.close()

    async def test_a_dial_after_a_timeout_is_an_ordinary_one(self, ipv6_black_hole: Any) -> None:
        """The task whose dial timed out is left as it was (no cancellation pending or
        counted): its next dial connects, and a timeout around it still works."""
        port = free_port()
        ipv6_black_hole(port)
        pool = Pool()
        task = asyncio.current_task()
        assert task is not None
        try:
            with pytest.raises(TimeoutError):
                await pool.connection(("http", "::1", port), within=0.2)
            assert task.cancelling() == 0
            async with serve_app(await hello_app()) as url:
                live = int(url.rsplit(":", 1)[1])
                async with asyncio.timeout(10.0):
                    conn = await pool.connection(("http", "127.0.0.1", live), within=5.0)
                assert conn.transport is not None
                conn.close()
        finally:
            pool.close()


# -- a model server that starts after the gateway -----------------------------------------------


class TestReadiness:
    """``/readyz`` and the request path agree, also while the model server starts."""

    async def test_gateway_up_before_its_model_server(self, aiohttp_client: Any) -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # A long interval: only the quick start-up probing can make this test pass.
        gw = await start(aiohttp_client, mesh_text(url, health_interval=30, timeout=5))
        await until(lambda: llm_of(gw).replicas.replicas[0].unreachable, within=10)
        ready = await gw.get("/readyz")
        assert ready.status == 503
        refused = await gw.post(PATHS["openai"], json=CHAT)
        assert refused.status == 502
        llm = FakeLLM()
        async with llm.serve(port=port):
            for _ in range(200):  # bounded: readiness must come within a few probes
                ready = await gw.get("/readyz")
                if ready.status == 200:
                    break
                await asyncio.sleep(0.05)
            assert ready.status == 200
            # Ready means ready: the very next request is served.
            resp = await gw.post(PATHS["openai"], json=CHAT)
            assert resp.status == 200, await resp.text()
            await settled(gw)

    async def test_an_optional_service_does_not_hold_readiness(
        self, fake: FakeLLM, aiohttp_client: Any
    ) -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        extra = {
            "spare": {
                "type": "llm",
                "endpoint": dead,
                "optional": True,
                "health_interval": 0,
                "timeout": 1,
            }
        }
        gw = await start(aiohttp_client, mesh_text(fake.url, extra=extra))
        ready = await gw.get("/readyz")
        body = await ready.json()
        assert ready.status == 200
        assert body["services"] == {"llm": True, "spare": False}


class TestReplicaSetServing:
    """What ``/readyz`` asks of a replica set, on a clock the test moves."""

    def test_serving_follows_breakers_and_probes(self) -> None:
        now = [100.0]
        replicas = ReplicaSet("llm", ["http://a"], threshold=2, clock=lambda: now[0])
        (replica,) = replicas
        assert replicas.serving()
        for _ in range(2):
            replicas.failed(replica, UpstreamError("llm: boom", service="llm"))
        assert not replicas.serving()  # breaker open: no request would be taken
        now[0] += 1.5
        assert replicas.serving()  # half-open: a trial request would be
        replicas.probed(replica, "cannot connect")
        assert not replicas.serving() and replica.unreachable
        replicas.probed(replica, None)
        # Seen healthy: takes traffic at once, not one trial at a time.
        assert replicas.serving() and replica.state(now[0]) == "closed"
        replicas.acquire(replica)
        assert replicas.pick() is replica


class TestSpecKeys:
    """The new keys are validated like the others: every problem named with its path."""

    def test_bad_values_are_named(self) -> None:
        text = mesh_text(
            "http://127.0.0.1:1",
            max_connections=0,
            max_response_body="lots",
            gateway={"send_timeout": -1},
        )
        with pytest.raises(SpecError) as info:
            loads(text, env={})
        problems = "\n".join(info.value.problems)
        assert "services.llm.max_connections: must be a positive integer, not 0" in problems
        assert "services.llm.max_response_body: must be a size in bytes" in problems
        assert "gateway.send_timeout: must be a number of seconds (0: no limit), not -1" in problems

    def test_defaults(self) -> None:
        spec = loads(mesh_text("http://127.0.0.1:1"), env={})
        llm = spec.services["llm"]
        assert (llm.max_connections, llm.max_response_body) == (1000, 64 << 20)
        assert spec.gateway.send_timeout == 60.0


# -- request heads kept per upstream --------------------------------------------------------


class TestKeptRequestHeads:
    """A node's fixed headers are rendered once per URL; a request's own never stick."""

    async def test_fixed_and_own_headers_arrive_as_sent(self) -> None:
        seen: list[dict[str, str]] = []

        async def echo(request: web.Request) -> web.Response:
            seen.append(dict(request.headers))
            return web.json_response(await request.json())

        app = web.Application()
        app.router.add_post("/echo", echo)
        async with serve_app(app) as url, HttpClient() as client:

            async def call(fixed: dict[str, str], own: dict[str, str], n: int) -> Any:
                async with client.request(
                    "POST",
                    url + "/echo",
                    service="svc",
                    timeouts=Timeouts(),
                    body={"n": n},
                    headers=fixed,
                    more_headers=own,
                ) as response:
                    return json.loads(await response.read())

            assert await call({"Authorization": "Bearer a"}, {"X-Request-ID": "r1"}, 1) == {"n": 1}
            assert await call({"Authorization": "Bearer a"}, {"X-Request-ID": "r2"}, 2) == {"n": 2}
            assert await call({"Authorization": "Bearer b"}, {}, 3) == {"n": 3}
            with pytest.raises(ValueError, match="line break"):
                await call({}, {"X-Request-ID": "r\r\nX-Evil: 1"}, 4)
        assert [h.get("Authorization") for h in seen] == ["Bearer a", "Bearer a", "Bearer b"]
        assert [h.get("X-Request-ID") for h in seen] == ["r1", "r2", None]
        assert {h["Content-Type"] for h in seen} == {"application/json"}
        assert all("X-Evil" not in h for h in seen)
