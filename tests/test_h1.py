"""meshkit.h1 against real servers on 127.0.0.1: keep-alive, bodies, pipes and failures.

aiohttp servers (:func:`meshkit.testing.serve_app`) answer well-formed HTTP; raw
``asyncio.start_server`` servers (:class:`Raw`) write hand-made, cut-short or malformed
answers byte for byte. Every server is closed by the test that started it.
"""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from meshkit.client import h1
from meshkit.client.http import HttpClient, Timeouts
from meshkit.client.pool import Connection, Pool
from meshkit.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from meshkit.testing import serve_app

from .conftest import TcpServer, free_port, until

Script = Callable[["Raw", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

#: Bytes the selector transport reads per ``recv`` (what one ``data_received`` can bring).
RECV_MAX = 256 * 1024


class Raw(TcpServer):
    """A raw TCP server on 127.0.0.1 that runs ``script`` for each connection.

    ``peers`` holds each connection's client port; ``eofs`` counts connections the
    client closed (seen by a script awaiting :meth:`wait_eof`).
    """

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.peers: list[int] = []
        self.eofs = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[1])
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def wait_eof(self, reader: asyncio.StreamReader) -> None:
        """Wait until the client closes this connection (anything it sends is dropped)."""
        while await reader.read(65536):
            pass
        self.eofs += 1


async def request_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answering(*parts: bytes | asyncio.Event, then_close: bool = False) -> Script:
    """A script: read one request, write ``parts`` (draining each; at an event, wait until
    it is set), then close or wait for the client to close."""

    async def script(raw: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        for part in parts:
            if isinstance(part, asyncio.Event):
                await part.wait()
                continue
            writer.write(part)
            await writer.drain()
        if not then_close:
            await raw.wait_eof(reader)

    return script


def send(
    conn: Connection,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> h1.Response:
    _, path, host = h1.target(url)
    return conn.send(h1.encode_request(method, path, host, headers or {}, body))


async def connect(pool: Pool, url: str) -> Connection:
    key, _, _ = h1.target(url)
    return await pool.connection(key, within=5.0)


async def get(pool: Pool, url: str, **options: Any) -> tuple[Connection, h1.Response]:
    """Send a request on a pooled connection and wait for the answer's head."""
    conn = await connect(pool, url)
    response = send(conn, url, **options)
    await response.head()
    return conn, response


def closed(conn: Connection) -> bool:
    """The client side saw the connection end."""
    return conn.transport is None


class Recorder:
    """on_data / on_end callbacks for :meth:`h1.Response.pipe`."""

    def __init__(self, then: Callable[[BaseException | None], None] | None = None) -> None:
        self.pieces: list[bytes] = []
        self.ends: list[BaseException | None] = []
        self._then = then

    def on_data(self, data: bytes) -> None:
        assert not self.ends, "data after the end"
        self.pieces.append(data)

    def on_end(self, exc: BaseException | None) -> None:
        self.ends.append(exc)
        if self._then is not None:
            self._then(exc)

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


@pytest.fixture
async def pool() -> Any:
    made = Pool()
    yield made
    made.close()


async def paused(pool: Pool, url: str) -> tuple[h1.Response, asyncio.Transport]:
    """Send a request for a large body and read none of it: the answer and its
    connection's transport, once the transport has paused."""
    conn, response = await get(pool, url)
    transport = conn.transport
    assert transport is not None
    await until(lambda: not transport.is_reading())
    return response, transport


def answer_body(body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler answering ``body`` (a 200 with its length)."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    return handler


def app_with(**routes: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    for name, handler in routes.items():
        app.router.add_route("*", f"/{name}", handler)
    return app


# -- keep-alive ------------------------------------------------------------------------------


class TestKeepAlive:
    async def test_sequential_requests_reuse_one_connection(self, pool: Pool) -> None:
        ports: list[int] = []

        async def hello(request: web.Request) -> web.Response:
            assert request.transport is not None
            ports.append(request.transport.get_extra_info("peername")[1])
            return web.Response(body=b"hello %d" % len(ports))

        async with serve_app(app_with(hello=hello)) as url:
            conn1, r1 = await get(pool, url + "/hello")
            assert (r1.status, pool.in_use, pool.idle) == (200, 1, 0)
            assert await r1.read() == b"hello 1"
            r1.release()
            assert (pool.in_use, pool.idle) == (0, 1)

            conn2, r2 = await get(pool, url + "/hello")
            assert conn2 is conn1
            assert (pool.in_use, pool.idle) == (1, 0)
            assert await r2.read() == b"hello 2"
            r2.release()
            assert len(ports) == 2 and ports[0] == ports[1]
            assert (pool.in_use, pool.idle) == (0, 1)

    async def test_connection_close_is_not_reused(self, pool: Pool) -> None:
        ports: list[int] = []

        async def bye(request: web.Request) -> web.Response:
            assert request.transport is not None
            ports.append(request.transport.get_extra_info("peername")[1])
            response = web.Response(body=b"bye")
            response.force_close()
            return response

        async with serve_app(app_with(bye=bye)) as url:
            conn1, r1 = await get(pool, url + "/bye")
            assert r1.headers["Connection"] == "close"
            assert await r1.read() == b"bye"
            r1.release()
            assert (pool.in_use, pool.idle) == (0, 0)
            await until(lambda: closed(conn1))

            conn2, r2 = await get(pool, url + "/bye")
            assert conn2 is not conn1
            assert await r2.read() == b"bye"
            r2.release()
            assert len(ports) == 2 and ports[0] != ports[1]


# -- bodies ----------------------------------------------------------------------------------


class TestBodies:
    async def test_content_length(self, pool: Pool) -> None:
        async def fixed(request: web.Request) -> web.Response:
            return web.Response(body=b"0123456789", headers={"X-Kind": "fixed"})

        async with serve_app(app_with(fixed=fixed)) as url:
            _, response = await get(pool, url + "/fixed")
            assert response.status == 200 and response.reason == "OK"
            assert response.headers["Content-Length"] == "10"
            assert response.headers.get("x-kind") == "fixed"
            assert await response.read() == b"0123456789"
            assert response.complete
            assert await response.readany() == b""  # the end stays the end
            response.release()
            assert pool.idle == 1

    async def test_take_what_came(self, pool: Pool) -> None:
        """``take()``: the body bytes that came with the head, at once; None when none
        are waiting; a read paused past ``READ_LIMIT`` goes on once they are taken."""
        size = 3 * h1.READ_LIMIT
        go = asyncio.Event()

        async def script(raw: Raw, reader: asyncio.StreamReader, writer: Any) -> None:
            await request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nfirst" % (size + 5))
            await go.wait()
            writer.write(b"x" * size)
            await raw.wait_eof(reader)

        async with Raw(script) as raw:
            _, response = await get(pool, raw.url)
            await until(lambda: response.buffered == 5)
            assert response.take() == b"first"
            assert response.take() is None
            go.set()
            await until(lambda: response.buffered > h1.READ_LIMIT)  # reading paused
            got = response.take()
            assert got is not None
            async with asyncio.timeout(10):  # a read left paused hangs: fails here
                rest = await response.read()
            assert len(got) + len(rest) == size and set(got + rest) == {ord("x")}
            assert response.complete and response.take() is None
            response.release()
            assert pool.idle == 1

    async def test_whole_at_once(self, pool: Pool) -> None:
        """``whole()``: None while the body is still arriving or over ``max_size``;
        the body once all of it is in, then the empty rest."""
        go = asyncio.Event()

        async def script(raw: Raw, reader: asyncio.StreamReader, writer: Any) -> None:
            await request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
            await go.wait()
            writer.write(b"56789")
            await raw.wait_eof(reader)

        async with Raw(script) as raw:
            _, response = await get(pool, raw.url)
            assert response.whole() is None  # half the body
            go.set()
            await until(lambda: response.complete)
            response.max_size = 9
            assert response.whole() is None  # over the bound: read() raises
            response.max_size = 10
            assert response.whole() == b"0123456789"
            assert response.whole() == b""
            response.release()
            assert pool.idle == 1

    async def test_read_with_limit(self, pool: Pool) -> None:
        async with serve_app(app_with(fixed=answer_body(b"0123456789"))) as url:
            _, response = await get(pool, url + "/fixed")
            assert await response.read(4) == b"0123"
            response.close()

    async def test_chunked(self, pool: Pool) -> None:
        pieces = [b"alpha ", b"beta ", b"gamma"]

        async def chunked(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for piece in pieces:
                await response.write(piece)
            await response.write_eof()
            return response

        async with serve_app(app_with(chunked=chunked)) as url:
            _, response = await get(pool, url + "/chunked")
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert "content-length" not in response.headers
            assert await response.read() == b"".join(pieces)
            response.release()
            assert (pool.in_use, pool.idle) == (0, 1)  # a chunked body ends the message

    async def test_close_delimited(self, pool: Pool) -> None:
        script = answering(b"HTTP/1.1 200 OK\r\n\r\nfirst ", b"second", then_close=True)
        async with Raw(script) as raw:
            conn, response = await get(pool, raw.url)
            assert "content-length" not in response.headers
            assert await response.read() == b"first second"
            assert response.complete
            response.release()
            assert (pool.in_use, pool.idle) == (0, 0)
            assert closed(conn)

    async def test_204_has_no_body(self, pool: Pool) -> None:
        async def empty(request: web.Request) -> web.Response:
            return web.Response(status=204)

        async with serve_app(app_with(empty=empty)) as url:
            conn, response = await get(pool, url + "/empty")
            assert response.status == 204
            assert response.complete  # nothing to wait for: no length and still no body
            assert await response.read() == b""
            response.release()
            assert pool.idle == 1
            again, second = await get(pool, url + "/empty")
            assert again is conn and second.status == 204
            second.release()

    async def test_one_mebibyte_read_whole(self, pool: Pool) -> None:
        big = random.Random(1).randbytes(1 << 20)
        async with serve_app(app_with(large=answer_body(big))) as url:
            # Nobody reads: the buffer passes READ_LIMIT and the socket is paused.
            response, transport = await paused(pool, url + "/large")
            assert h1.READ_LIMIT < response.buffered <= h1.READ_LIMIT + RECV_MAX
            body = await response.read()
            assert len(body) == len(big) and body == big
            assert transport.is_reading()
            response.release()
            assert (pool.in_use, pool.idle) == (0, 1)


# -- pipe ------------------------------------------------------------------------------------


def gated_stream(pieces: list[bytes], gate: asyncio.Queue[None]) -> Callable[..., Any]:
    """A chunked aiohttp handler writing one piece per token put in ``gate``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in pieces:
            await gate.get()
            await response.write(piece)
        await gate.get()
        await response.write_eof()
        return response

    return handler


class TestPipe:
    async def test_pieces_in_order_then_one_end(self, pool: Pool) -> None:
        pieces = [b"one ", b"two ", b"three ", b"four"]
        gate: asyncio.Queue[None] = asyncio.Queue()
        async with serve_app(app_with(s=gated_stream(pieces, gate))) as url:
            gate.put_nowait(None)  # aiohttp sends its head with the first piece
            conn, response = await get(pool, url + "/s")
            released: list[bool] = []

            def then(exc: BaseException | None) -> None:
                response.release()
                released.append(True)

            rec = Recorder(then)
            response.pipe(rec.on_data, rec.on_end)
            await until(lambda: rec.data == pieces[0])
            for i in range(1, len(pieces)):
                gate.put_nowait(None)
                await until(lambda i=i: rec.data == b"".join(pieces[: i + 1]))
                assert rec.ends == []
            gate.put_nowait(None)
            await until(lambda: bool(rec.ends))
            assert rec.ends == [None] and released == [True]
            assert (pool.in_use, pool.idle) == (0, 1)
            # The pooled connection serves the next call.
            for _ in range(len(pieces) + 1):
                gate.put_nowait(None)
            again, second = await get(pool, url + "/s")
            assert again is conn
            assert await second.read() == b"".join(pieces)
            second.release()
            assert rec.ends == [None]  # still exactly once

    async def test_buffered_data_is_handed_over_first(self, pool: Pool) -> None:
        pieces = [b"early ", b"late"]
        gate: asyncio.Queue[None] = asyncio.Queue()
        async with serve_app(app_with(s=gated_stream(pieces, gate))) as url:
            gate.put_nowait(None)
            _, response = await get(pool, url + "/s")
            await until(lambda: response.buffered == len(pieces[0]))  # buffered, unread
            rec = Recorder()
            response.pipe(rec.on_data, rec.on_end)
            assert rec.pieces == [pieces[0]]  # synchronously, before anything new
            assert response.buffered == 0
            gate.put_nowait(None)
            gate.put_nowait(None)
            await until(lambda: bool(rec.ends))
            assert rec.data == b"".join(pieces) and rec.ends == [None]
            response.release()
            assert pool.idle == 1

    async def test_pipe_after_the_end_ends_at_once(self, pool: Pool) -> None:
        async with serve_app(app_with(fixed=answer_body(b"all of it"))) as url:
            _, response = await get(pool, url + "/fixed")
            await until(lambda: response.complete)
            rec = Recorder()
            response.pipe(rec.on_data, rec.on_end)
            assert rec.data == b"all of it" and rec.ends == [None]
            response.release()
            assert pool.idle == 1

    async def test_pipe_resumes_a_paused_socket(self, pool: Pool) -> None:
        big = random.Random(2).randbytes(1 << 20)
        async with serve_app(app_with(large=answer_body(big))) as url:
            response, _ = await paused(pool, url + "/large")
            rec = Recorder()
            response.pipe(rec.on_data, rec.on_end)
            await until(lambda: bool(rec.ends))
            assert rec.ends == [None] and rec.data == big
            response.release()
            assert pool.idle == 1

    async def test_pause_and_resume(self, pool: Pool) -> None:
        pieces = [b"a", b"b"]
        gate: asyncio.Queue[None] = asyncio.Queue()
        async with serve_app(app_with(s=gated_stream(pieces, gate))) as url:
            gate.put_nowait(None)
            conn, response = await get(pool, url + "/s")
            transport = conn.transport
            assert transport is not None
            rec = Recorder()
            response.pipe(rec.on_data, rec.on_end)
            await until(lambda: rec.data == b"a")
            response.pause()
            assert not transport.is_reading()
            response.resume()
            assert transport.is_reading()
            gate.put_nowait(None)
            gate.put_nowait(None)
            await until(lambda: bool(rec.ends))
            assert rec.data == b"ab" and rec.ends == [None]
            response.release()


# -- failures --------------------------------------------------------------------------------


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class TestFailures:
    async def test_connection_refused(self, pool: Pool) -> None:
        port = free_port()
        with pytest.raises(h1.ConnectFailed) as info:
            await connect(pool, f"http://127.0.0.1:{port}/")
        assert (info.value.host, info.value.port) == ("127.0.0.1", port)
        assert f"127.0.0.1:{port}" in str(info.value)
        assert pool.in_use == 0

    async def test_closed_before_any_answer(self, pool: Pool) -> None:
        async with Raw(answering(then_close=True)) as raw:
            conn = await connect(pool, raw.url)
            response = send(conn, raw.url)
            with pytest.raises(h1.ClosedEarly):
                await response.head()
            with pytest.raises(h1.ClosedEarly):
                await response.readany()
            assert pool.in_use == 0 and pool.idle == 0
            await until(lambda: closed(conn))

    async def test_closed_mid_chunked_body(self, pool: Pool) -> None:
        script = answering(CHUNKED_HEAD + b"5\r\nhello\r\n", then_close=True)
        async with Raw(script) as raw:
            _, response = await get(pool, raw.url)
            assert await response.readany() == b"hello"  # what came is still handed over
            with pytest.raises(h1.BrokenBody):
                await response.readany()
            with pytest.raises(h1.BrokenBody):
                await response.read()  # and it stays broken
            assert pool.in_use == 0 and pool.idle == 0

    async def test_short_content_length(self, pool: Pool) -> None:
        script = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", then_close=True)
        async with Raw(script) as raw:
            _, response = await get(pool, raw.url)
            with pytest.raises(h1.BrokenBody):
                await response.read()
            response.release()  # a broken response is closed, never pooled
            assert pool.in_use == 0 and pool.idle == 0

    async def test_closed_mid_body_ends_a_pipe_with_the_error(self, pool: Pool) -> None:
        gate = asyncio.Event()  # once set, the script ends: the server closes
        script = answering(CHUNKED_HEAD + b"5\r\nhello\r\n", gate, then_close=True)
        async with Raw(script) as raw:
            _, response = await get(pool, raw.url)
            rec = Recorder()
            response.pipe(rec.on_data, rec.on_end)
            await until(lambda: rec.data == b"hello")
            assert rec.ends == []
            gate.set()
            await until(lambda: bool(rec.ends))
            assert len(rec.ends) == 1 and isinstance(rec.ends[0], h1.BrokenBody)
            assert rec.data == b"hello"
            assert pool.in_use == 0 and pool.idle == 0

    @pytest.mark.parametrize(
        "answer",
        [
            b"HTTX/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
            b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nhi",
            b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nhi",
        ],
        ids=["protocol", "status", "length"],
    )
    async def test_malformed_answer(self, pool: Pool, answer: bytes) -> None:
        async with Raw(answering(answer)) as raw:
            conn = await connect(pool, raw.url)
            response = send(conn, raw.url)
            with pytest.raises(h1.BrokenBody, match="malformed"):
                await response.head()
            await until(lambda: raw.eofs == 1)  # the client dropped the connection
            assert pool.in_use == 0 and pool.idle == 0

    async def test_malformed_chunk_mid_body(self, pool: Pool) -> None:
        async with Raw(answering(CHUNKED_HEAD + b"2\r\nok\r\nzz\r\n")) as raw:
            _, response = await get(pool, raw.url)
            with pytest.raises(h1.BrokenBody, match="malformed"):
                await response.read()
            await until(lambda: raw.eofs == 1)

    async def test_close_ends_a_pipe_with_an_error(self, pool: Pool) -> None:
        async with Raw(answering(CHUNKED_HEAD + b"3\r\nabc\r\n")) as raw:
            _, response = await get(pool, raw.url)
            rec = Recorder()
            response.pipe(rec.on_data, rec.on_end)
            await until(lambda: rec.data == b"abc")
            response.close()
            assert len(rec.ends) == 1 and isinstance(rec.ends[0], h1.BrokenBody)
            response.close()  # idempotent: no second end
            assert len(rec.ends) == 1
            await until(lambda: raw.eofs == 1)
            assert pool.in_use == 0 and pool.idle == 0

    async def test_a_failing_on_data_breaks_the_body(self, pool: Pool) -> None:
        gate = asyncio.Event()
        script = answering(CHUNKED_HEAD + b"3\r\nabc\r\n", gate, b"3\r\ndef\r\n")
        async with Raw(script) as raw:
            _, response = await get(pool, raw.url)
            got: list[bytes] = []
            ends: list[BaseException | None] = []

            def explode(data: bytes) -> None:
                got.append(data)
                if b"def" in data:
                    raise RuntimeError("the caller went away")

            response.pipe(explode, ends.append)
            await until(lambda: got == [b"abc"])
            gate.set()
            await until(lambda: bool(ends))
            assert len(ends) == 1 and isinstance(ends[0], h1.BrokenBody)
            assert "the caller went away" in str(ends[0])
            await until(lambda: raw.eofs == 1)
            assert pool.in_use == 0 and pool.idle == 0

    async def test_unasked_bytes_close_an_idle_connection(self, pool: Pool) -> None:
        gate = asyncio.Event()
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        script = answering(ok, gate, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n??")
        async with Raw(script) as raw:
            conn, response = await get(pool, raw.url)
            assert await response.read() == b"ok"
            response.release()
            assert pool.idle == 1
            gate.set()
            await until(lambda: raw.eofs == 1)
            assert closed(conn) and pool.idle == 0

    @pytest.mark.parametrize(
        "extra",
        [b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", b"JUNK"],
        ids=["second-answer", "junk"],
    )
    async def test_unasked_bytes_in_the_same_packet(self, pool: Pool, extra: bytes) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + extra
        async with Raw(answering(answer)) as raw:
            conn, response = await get(pool, raw.url)
            assert await response.read() == b"ok"
            assert (response.status, response.reason) == (200, "OK")  # not rewritten
            response.release()
            assert pool.idle == 0  # never pooled: the connection cannot be trusted
            await until(lambda: raw.eofs == 1)
            assert closed(conn)


# -- interim (1xx) answers -------------------------------------------------------------------


class TestInterim:
    """A client must parse 1xx answers it did not ask for (RFC 9110 15.2)."""

    async def test_early_hints_in_the_same_packet(self, pool: Pool) -> None:
        answer = (
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        )
        async with Raw(answering(answer)) as raw:
            _, response = await get(pool, raw.url)
            assert (response.status, response.reason) == (200, "OK")
            assert "link" not in response.headers
            assert await response.read() == b"hi"
            response.release()
            assert pool.idle == 1

    async def test_early_hints_then_the_answer(self, pool: Pool) -> None:
        gate = asyncio.Event()
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        script = answering(hints, gate, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        async with Raw(script) as raw:
            conn = await connect(pool, raw.url)
            response = send(conn, raw.url)
            await until(lambda: response.begun)  # the 103 alone was parsed...
            assert response.status == 0  # ...and is not taken for the answer
            gate.set()
            await response.head()
            assert (response.status, response.reason) == (200, "OK")
            assert await response.read() == b"hi"
            response.release()
            assert pool.idle == 1

    async def test_interim_then_close_is_closed_early(self, pool: Pool) -> None:
        script = answering(b"HTTP/1.1 103 Early Hints\r\n\r\n", then_close=True)
        async with Raw(script) as raw:
            conn = await connect(pool, raw.url)
            response = send(conn, raw.url)
            with pytest.raises(h1.ClosedEarly):
                await response.head()


# -- requests, targets and headers -----------------------------------------------------------


class TestEncoding:
    def test_request_bytes(self) -> None:
        wire = h1.encode_request("POST", b"/v1/x?a=1", b"h:8080", {"X-A": "b"}, b'{"k":1}')
        assert wire == (
            b'POST /v1/x?a=1 HTTP/1.1\r\nHost: h:8080\r\nX-A: b\r\nContent-Length: 7\r\n\r\n{"k":1}'
        )
        assert h1.encode_request("GET", b"/", b"h", {}, None) == (
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        )

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("X-Evil", "a\r\nInjected: yes"),
            ("X-Evil", "a\nb"),
            ("X-Evil", "a\rb"),
            ("X-Evil\r\nInjected", "yes"),
            ("X\nEvil", "yes"),
            ("X-Evil: yes\r\nY", "z"),
        ],
    )
    def test_rejects_line_breaks(self, name: str, value: str) -> None:
        with pytest.raises(ValueError, match="line break"):
            h1.encode_request("GET", b"/", b"h", {name: value}, None)

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            (
                "http://example.com:8080/a/b?x=1&y=2",
                (("http", "example.com", 8080), b"/a/b?x=1&y=2", b"example.com:8080"),
            ),
            ("http://example.com", (("http", "example.com", 80), b"/", b"example.com")),
            ("http://Example.COM:80/p", (("http", "example.com", 80), b"/p", b"example.com")),
            ("HTTPS://api.test/v1#frag", (("https", "api.test", 443), b"/v1", b"api.test")),
            ("https://api.test:8443/", (("https", "api.test", 8443), b"/", b"api.test:8443")),
            ("http://[::1]:9000/q?", (("http", "::1", 9000), b"/q", b"[::1]:9000")),
            ("http://127.0.0.1/?k=v", (("http", "127.0.0.1", 80), b"/?k=v", b"127.0.0.1")),
        ],
    )
    def test_target(self, url: str, expected: tuple[Any, ...]) -> None:
        assert h1.target(url) == expected

    @pytest.mark.parametrize(
        "url",
        ["ftp://example.com/x", "example.com/x", "ws://example.com/", "http:///path", ""],
    )
    def test_target_rejects_non_http(self, url: str) -> None:
        with pytest.raises(ValueError, match="not an http"):
            h1.target(url)

    def test_headers_case_insensitive(self) -> None:
        headers = h1.Headers()
        dict.__setitem__(headers, "content-type", "text/plain")
        assert headers["Content-Type"] == headers["CONTENT-TYPE"] == "text/plain"
        assert headers.get("Content-type") == "text/plain"
        assert headers.get("X-Missing", "dflt") == "dflt"
        assert "CONTENT-TYPE" in headers and "x-missing" not in headers
        with pytest.raises(KeyError):
            headers["X-Missing"]

    async def test_repeated_headers_join(self, pool: Pool) -> None:
        answer = (
            b"HTTP/1.1 200 Fine Thanks\r\nX-Dup: a\r\nContent-Length: 0\r\n"
            b"x-dup: b\r\nX-DUP: c\r\nServer: raw\r\n\r\n"
        )
        async with Raw(answering(answer)) as raw:
            _, response = await get(pool, raw.url)
            assert response.reason == "Fine Thanks"
            assert response.headers["X-Dup"] == "a, b, c"
            assert response.headers.get("x-DUP") == "a, b, c"
            assert "SERVER" in response.headers and response.headers["server"] == "raw"
            response.release()


# -- the pool --------------------------------------------------------------------------------


def keep_alive_answers(raw: Raw) -> Script:
    async def script(_: Raw, reader: asyncio.StreamReader, writer: Any) -> None:
        while True:
            try:
                await request_head(reader)
            except asyncio.IncompleteReadError:
                raw.eofs += 1
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    return script


class TestPool:
    async def test_idle_connections_are_swept(self) -> None:
        pool = Pool(keepalive=0.2)
        raw = Raw(answering())
        raw.script = keep_alive_answers(raw)
        try:
            async with raw:
                conn, response = await get(pool, raw.url)
                assert await response.read() == b"ok"
                response.release()
                assert pool.idle == 1 and not closed(conn)
                await until(lambda: raw.eofs == 1)  # the server saw the client close it
                assert closed(conn) and pool.idle == 0
                # A new call opens a new connection.
                again, second = await get(pool, raw.url)
                assert again is not conn
                assert await second.read() == b"ok"
                second.release()
                assert raw.peers[0] != raw.peers[1]
                # The sweeper, stopped while nothing was idle, runs again for this one.
                assert pool.idle == 1
                await until(lambda: raw.eofs == 2)
                assert closed(again) and pool.idle == 0
        finally:
            pool.close()

    async def test_a_busy_connection_is_not_swept(self) -> None:
        pool = Pool(keepalive=0.2)
        async with Raw(answering(CHUNKED_HEAD + b"1\r\na\r\n")) as busy_raw:
            raw = Raw(answering())
            raw.script = keep_alive_answers(raw)
            async with raw:
                try:
                    conn, response = await get(pool, busy_raw.url)
                    other, quick = await get(pool, raw.url)
                    assert await quick.read() == b"ok"
                    quick.release()
                    await until(lambda: raw.eofs == 1)  # the idle one was swept...
                    assert closed(other) and not closed(conn)  # ...the busy one was not
                    assert await response.readany() == b"a"
                    response.close()
                finally:
                    pool.close()

    async def test_close_closes_idle_and_busy(self) -> None:
        pool = Pool()
        async with Raw(answering(CHUNKED_HEAD + b"4\r\nbusy\r\n")) as busy_raw:
            raw = Raw(answering())
            raw.script = keep_alive_answers(raw)
            async with raw:
                idle_conn, quick = await get(pool, raw.url)
                assert await quick.read() == b"ok"
                quick.release()
                busy_conn, response = await get(pool, busy_raw.url)
                rec = Recorder()
                response.pipe(rec.on_data, rec.on_end)
                await until(lambda: rec.data == b"busy")
                assert (pool.in_use, pool.idle) == (1, 1)

                pool.close()
                assert pool.closed and (pool.in_use, pool.idle) == (0, 0)
                assert len(rec.ends) == 1 and isinstance(rec.ends[0], h1.BrokenBody)
                await until(lambda: raw.eofs == 1 and busy_raw.eofs == 1)
                assert closed(idle_conn) and closed(busy_conn)
                with pytest.raises(RuntimeError, match="closed"):
                    await connect(pool, raw.url)

    async def test_max_idle(self) -> None:
        pool = Pool(max_idle=1)
        raw = Raw(answering())
        raw.script = keep_alive_answers(raw)
        try:
            async with raw:
                first, r1 = await get(pool, raw.url)
                second, r2 = await get(pool, raw.url)
                assert first is not second and pool.in_use == 2
                assert await r1.read() == await r2.read() == b"ok"
                r1.release()
                r2.release()
                assert (pool.in_use, pool.idle) == (0, 1)
                await until(lambda: raw.eofs == 1)
                assert not closed(first) and closed(second)
        finally:
            pool.close()


# -- HttpClient on h1 ------------------------------------------------------------------------


class TestHttpClient:
    async def test_no_cycle_per_call(self) -> None:
        """A response read whole and given back leaves no reference cycle behind (the
        collector would otherwise find one, with its head and body, per call)."""
        async with (
            serve_app(app_with(fixed=answer_body(b"0123456789"))) as url,
            HttpClient() as client,
        ):
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(10):
                    body = await client.fetch(
                        "GET", url + "/fixed", service="s", timeouts=Timeouts()
                    )
                    assert body == b"0123456789"
                gc.collect()
                left = [o for o in gc.garbage if isinstance(o, h1.Response)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            assert left == []

    async def test_500_is_an_upstream_error_with_its_message(self) -> None:
        async def boom(request: web.Request) -> web.Response:
            return web.json_response({"error": {"message": "model exploded"}}, status=500)

        async with serve_app(app_with(boom=boom)) as url, HttpClient() as client:
            with pytest.raises(UpstreamError) as info:
                await client.fetch("POST", url + "/boom", service="llm", timeouts=Timeouts())
            assert type(info.value) is UpstreamError
            assert info.value.upstream_status == 500 and info.value.service == "llm"
            assert str(info.value) == "llm: upstream answered 500: model exploded"
            assert client.connections_in_use == 0 and client.live_responses == 0

    async def test_refused_is_a_connect_error(self) -> None:
        port = free_port()
        async with HttpClient() as client:
            with pytest.raises(UpstreamConnectError, match=f"127.0.0.1:{port}"):
                await client.fetch(
                    "GET", f"http://127.0.0.1:{port}/", service="llm", timeouts=Timeouts()
                )
            assert client.connections_in_use == 0

    async def test_fetch_reads_the_body_and_pools_the_connection(self) -> None:
        async def echo(request: web.Request) -> web.Response:
            return web.Response(body=await request.read(), content_type="application/json")

        async with serve_app(app_with(echo=echo)) as url, HttpClient() as client:
            for n in range(2):
                body = await client.fetch(
                    "POST", url + "/echo", service="llm", timeouts=Timeouts(), body={"n": n}
                )
                assert body.replace(b" ", b"") == b'{"n":%d}' % n
            assert client.connections_in_use == 0 and client.pool.idle == 1

    async def test_total_timeout_mid_body(self) -> None:
        async with Raw(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart")) as raw:
            async with HttpClient() as client:
                response = await client.start(
                    "GET", raw.url, service="llm", timeouts=Timeouts(total=0.2)
                )
                assert client.live_responses == 1
                try:
                    assert await response.readany() == b"start"
                    with pytest.raises(TimeoutError, match=r"longer than 0\.2 s"):
                        async with asyncio.timeout(10):  # a hang fails: no message to match
                            await response.readany()
                finally:
                    client.finish(response, ok=False)
                assert client.live_responses == 0 and client.connections_in_use == 0
                await until(lambda: raw.eofs == 1)

    async def test_an_unbounded_call_waits_for_its_head_within_first_byte(self) -> None:
        """A call its caller does not bound fails when no head comes within
        ``first_byte``, and gives its connection slot back."""
        async with Raw(answering()) as raw, HttpClient() as client:
            with pytest.raises(UpstreamTimeout, match=r"llm: no answer within 0\.2 s"):
                async with asyncio.timeout(10):  # a hang fails: no message to match
                    await client.start(
                        "GET", raw.url, service="llm", timeouts=Timeouts(first_byte=0.2)
                    )
            assert client.connections_in_use == 0 and client.live_responses == 0

    async def test_an_unbounded_call_leaves_the_body_to_its_caller(self) -> None:
        """Once the head is in, ``first_byte`` bounds nothing more: a body that comes
        later than it is read whole."""
        body_sent = asyncio.Event()

        async def script(
            raw: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.5)  # past the first-byte budget
            writer.write(b"late")
            await writer.drain()
            body_sent.set()
            await raw.wait_eof(reader)

        async with Raw(script) as raw, HttpClient() as client:
            response = await client.start(
                "GET", raw.url, service="llm", timeouts=Timeouts(first_byte=0.2)
            )
            try:
                async with asyncio.timeout(10):
                    assert await response.read() == b"late"
                assert body_sent.is_set()
            finally:
                client.finish(response, ok=True)
            assert client.connections_in_use == 0

    async def test_total_timer_is_cancelled_on_release(self) -> None:
        async with serve_app(app_with(fixed=answer_body(b"done"))) as url, HttpClient() as client:
            response = await client.start(
                "GET", url + "/fixed", service="llm", timeouts=Timeouts(total=30)
            )
            timer = response.timer
            assert timer is not None
            assert await response.read() == b"done"
            client.finish(response, ok=True)
            assert timer.cancelled() and response.timer is None

    async def test_probe(self) -> None:
        async def health(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def sick(request: web.Request) -> web.Response:
            return web.Response(status=503, text="busy")

        port = free_port()
        async with serve_app(app_with(health=health, sick=sick)) as url, HttpClient() as client:
            assert await client.probe(url + "/health", within=5, headers={}) is None
            assert await client.probe(url + "/sick", within=5, headers={}) == "answered 503"
            dead = await client.probe(f"http://127.0.0.1:{port}/", within=5, headers={})
            assert dead == f"cannot connect to 127.0.0.1:{port}"
            # Probes use fresh connections and keep none.
            assert client.connections_in_use == 0 and client.pool.idle == 0


# -- conformance: one edge case each, with the behaviour meshkit gives it ---------------------


def answer_once_then(then: bytes = b"") -> Script:
    """A script: answer the first request (keep-alive); on the next request on the same
    connection, write ``then`` (often nothing) and close, as a server whose keep-alive
    ran out just as the request arrived."""

    async def script(raw: Raw, reader: asyncio.StreamReader, writer: Any) -> None:
        await request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        await writer.drain()
        await request_head(reader)
        raw.eofs += 1  # counts requests dropped unanswered
        if then:
            writer.write(then)
            await writer.drain()

    return script


def big_head(size: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 2\r\n\r\nok" % (b"a" * size)


class TestConformance:
    """RFC 9112 edge cases an upstream may send, each with meshkit's stated behaviour."""

    @pytest.mark.parametrize(
        "head",
        [
            b"Content-Length: 5\r\nTransfer-Encoding: chunked",
            b"Transfer-Encoding: chunked\r\nContent-Length: 5",
        ],
        ids=["cl-first", "te-first"],
    )
    async def test_content_length_with_transfer_encoding_is_malformed(
        self, pool: Pool, head: bytes
    ) -> None:
        """Both framings at once (a smuggling shape): refused, connection closed."""
        answer = b"HTTP/1.1 200 OK\r\n%s\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % head
        async with Raw(answering(answer)) as raw:
            conn = await connect(pool, raw.url)
            with pytest.raises(h1.BrokenBody, match="Transfer-Encoding"):
                await send(conn, raw.url).head()
            await until(lambda: raw.eofs == 1)
            assert closed(conn) and pool.idle == 0

    @pytest.mark.parametrize("second", [b"3", b"5"], ids=["same", "different"])
    async def test_duplicate_content_length_is_malformed(self, pool: Pool, second: bytes) -> None:
        """Two Content-Length fields, even equal: refused (no guessing which framing)."""
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: %s\r\n\r\nabc" % second
        async with Raw(answering(answer)) as raw:
            conn = await connect(pool, raw.url)
            with pytest.raises(h1.BrokenBody, match="Duplicate Content-Length"):
                await send(conn, raw.url).head()
            await until(lambda: closed(conn))

    async def test_trailers_are_ignored_and_the_connection_kept(self, pool: Pool) -> None:
        """Trailer fields after a chunked body are read past, never become headers."""
        answer = CHUNKED_HEAD + b"3\r\nabc\r\n0\r\nX-Trailer: late\r\n\r\n"
        raw = Raw(answering())

        async def twice(_: Raw, reader: asyncio.StreamReader, writer: Any) -> None:
            for _ in range(2):
                await request_head(reader)
                writer.write(answer)
                await writer.drain()
            await raw.wait_eof(reader)

        raw.script = twice
        async with raw:
            conn, response = await get(pool, raw.url)
            assert await response.read() == b"abc"
            assert "x-trailer" not in response.headers
            response.release()
            again, second = await get(pool, raw.url)
            assert again is conn and await second.read() == b"abc"
            second.release()

    @pytest.mark.parametrize("interim", [b"100 Continue", b"102 Processing", b"103 Early Hints"])
    async def test_interim_answers_are_skipped(self, pool: Pool, interim: bytes) -> None:
        """1xx other than 101: skipped, the final answer is the response."""
        answer = b"HTTP/1.1 %s\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" % interim
        async with Raw(answering(answer)) as raw:
            _, response = await get(pool, raw.url)
            assert response.status == 200 and await response.read() == b"hi"
            response.release()

    async def test_101_is_an_unexpected_answer(self, pool: Pool) -> None:
        """meshkit never asks to switch protocols: a 101 fails the response cleanly."""
        answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n\x00\x00\x12\x04"
        async with Raw(answering(answer)) as raw:
            conn = await connect(pool, raw.url)
            with pytest.raises(h1.UnexpectedAnswer, match="101 Switching Protocols"):
                await send(conn, raw.url).head()
            await until(lambda: raw.eofs == 1)
            assert closed(conn) and pool.in_use == 0

    async def test_101_through_the_client_is_a_502(self) -> None:
        """Through HttpClient, the 101 is an upstream error (502), not a success."""
        answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        async with Raw(answering(answer)) as raw, HttpClient() as client:
            with pytest.raises(UpstreamError, match="101") as info:
                await client.fetch("GET", raw.url, service="llm", timeouts=Timeouts())
            assert info.value.status == 502
            assert client.connections_in_use == 0 and client.live_responses == 0

    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    async def test_redirect_is_never_followed(self, status: int) -> None:
        """A 3xx is a 502 saying the upstream redirected and where (without credentials)."""
        answer = (
            b"HTTP/1.1 %d Moved\r\nLocation: http://user:hunter22@elsewhere.example/v1\r\n"
            b"Content-Length: 0\r\n\r\n" % status
        )
        async with Raw(answering(answer)) as raw, HttpClient() as client:
            with pytest.raises(UpstreamError) as info:
                await client.fetch("GET", raw.url, service="llm", timeouts=Timeouts())
            err = info.value
            assert (err.status, err.upstream_status) == (502, status)
            assert f"redirected ({status}) to http://elsewhere.example/v1" in err.message
            assert "hunter22" not in err.message and "user" not in err.message
            assert len(raw.peers) == 1  # nothing was asked of "elsewhere"

    async def test_stale_socket_fails_before_any_byte(self, pool: Pool) -> None:
        """h1 itself: the request on the reused connection ends closed-early, unanswered."""
        async with Raw(answer_once_then()) as raw:
            conn, first = await get(pool, raw.url)
            assert await first.read() == b"first"
            first.release()
            again = await connect(pool, raw.url)
            assert again is conn and again.reused
            response = send(again, raw.url)
            with pytest.raises(h1.ClosedEarly):
                await response.head()
            assert not response.begun
            assert raw.eofs == 1

    async def test_stale_socket_is_retried_once_unseen(self) -> None:
        """HttpClient: a reused connection closed before any byte is replaced at once."""
        async with Raw(answer_once_then()) as raw, HttpClient() as client:
            for _ in range(3):
                body = await client.fetch("GET", raw.url, service="llm", timeouts=Timeouts())
                assert body == b"first"
            # Requests 2 and 3 each met a stale socket and went out again on a new one.
            assert raw.eofs == 2 and len(raw.peers) == 3
            assert client.connections_in_use == 0

    async def test_a_partial_answer_is_not_retried(self) -> None:
        """Once any byte of the answer arrived, the upstream did answer: no second try."""
        async with Raw(answer_once_then(b"HTTP/1.1 2")) as raw, HttpClient() as client:
            assert await client.fetch("GET", raw.url, service="llm", timeouts=Timeouts())
            with pytest.raises(UpstreamConnectError, match="connection lost before an answer"):
                await client.fetch("GET", raw.url, service="llm", timeouts=Timeouts())
            assert len(raw.peers) == 1

    async def test_a_new_connection_closed_early_is_not_retried(self) -> None:
        """Only a reused connection is presumed stale; a new one failing is an error."""
        async with Raw(answering(then_close=True)) as raw, HttpClient() as client:
            with pytest.raises(UpstreamConnectError):
                await client.fetch("GET", raw.url, service="llm", timeouts=Timeouts())
            assert len(raw.peers) == 1

    async def test_cancel_then_reuse(self) -> None:
        """A call cancelled before its answer closes its connection (so no late answer
        can reach a later call); the next call gets a new connection and its own answer."""

        async def script(raw: Raw, reader: asyncio.StreamReader, writer: Any) -> None:
            path = (await request_head(reader)).split(b" ")[1]
            if path == b"/slow":
                await raw.wait_eof(reader)  # never answers; sees the caller leave
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
            await writer.drain()
            await raw.wait_eof(reader)

        async with Raw(script) as raw, HttpClient() as client:
            slow = asyncio.ensure_future(
                client.fetch("GET", raw.url + "/slow", service="llm", timeouts=Timeouts())
            )
            await until(lambda: len(raw.peers) == 1)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert client.connections_in_use == 0
            await until(lambda: raw.eofs == 1)  # that connection was closed, not pooled
            fast = await client.fetch("GET", raw.url + "/fast", service="llm", timeouts=Timeouts())
            assert fast == b"/fast" and len(raw.peers) == 2

    async def test_oversized_head_in_one_packet(self, pool: Pool) -> None:
        """A head over 64 KiB is refused, connection closed; just under it is fine."""
        async with Raw(answering(big_head(h1.HEAD_LIMIT + 1))) as raw:
            conn = await connect(pool, raw.url)
            with pytest.raises(h1.HeadTooLarge, match=str(h1.HEAD_LIMIT)):
                await send(conn, raw.url).head()
            await until(lambda: raw.eofs == 1)
        async with Raw(answering(big_head(h1.HEAD_LIMIT - 100))) as raw:
            _, response = await get(pool, raw.url)
            assert await response.read() == b"ok"
            response.release()

    async def test_oversized_status_line_in_one_packet(self, pool: Pool) -> None:
        """A reason phrase over 64 KiB counts toward the head's bound too."""
        head = b"HTTP/1.1 200 %s\r\nContent-Length: 2\r\n\r\nok" % (b"O" * (h1.HEAD_LIMIT + 1))
        async with Raw(answering(head)) as raw:
            conn = await connect(pool, raw.url)
            with pytest.raises(h1.HeadTooLarge, match=str(h1.HEAD_LIMIT)):
                await send(conn, raw.url).head()
            await until(lambda: raw.eofs == 1)

    async def test_a_head_line_that_never_ends(self, pool: Pool) -> None:
        """A header line sent forever without its end is cut off at the limit."""

        async def dribble(raw: Raw, reader: asyncio.StreamReader, writer: Any) -> None:
            await request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
            for _ in range(64):  # 1 MiB at most, far past the limit
                writer.write(b"a" * 16384)
                await writer.drain()
            await raw.wait_eof(reader)

        async with Raw(dribble) as raw:
            conn = await connect(pool, raw.url)
            with pytest.raises(h1.HeadTooLarge):
                await send(conn, raw.url).head()
            await until(lambda: closed(conn))

    async def test_oversized_head_through_the_client_is_a_502(self) -> None:
        """Through HttpClient, an oversized head is a 502 naming the limit."""
        async with Raw(answering(big_head(h1.HEAD_LIMIT * 2))) as raw, HttpClient() as client:
            with pytest.raises(UpstreamError, match="head is over 65536 bytes") as info:
                await client.fetch("GET", raw.url, service="llm", timeouts=Timeouts())
            assert info.value.status == 502
            assert client.connections_in_use == 0

    async def test_ipv6_literal(self, pool: Pool) -> None:
        """``http://[::1]:port``: connects over IPv6, sends ``Host: [::1]:port``."""
        hosts: list[str] = []

        async def where(request: web.Request) -> web.Response:
            hosts.append(request.headers["Host"])
            return web.Response(body=b"v6")

        async with serve_app(app_with(where=where), host="::1") as url:
            assert url.startswith("http://::1:")
            port = url.rsplit(":", 1)[1]
            _, response = await get(pool, f"http://[::1]:{port}/where")
            assert await response.read() == b"v6"
            response.release()
        assert hosts == [f"[::1]:{port}"]
