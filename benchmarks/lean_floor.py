"""The floor for a lean Python gateway: a protocol-level relay with no aiohttp at all.

A benchmark floor, not a server to deploy. It answers what ``aiohttp_floor.py``
answers, the same way, with neither side on aiohttp: requests are read by an
:class:`asyncio.Protocol` parsing with ``httptools`` (llhttp, as ``meshkit.client.h1``
parses answers), each request is sent upstream through meshkit's own client
(:class:`meshkit.client.HttpClient`: its pool, ``h1`` and one ``answer_by`` timer per
call, as meshkit's LLM node calls it), and the answer comes back:

- a streamed answer (the upstream sent no ``Content-Length``) is piped: each piece of
  body the upstream connection receives is written to the caller as one HTTP chunk from
  that connection's own callback (``Response.pipe``), no task switch per chunk; a
  caller whose socket buffer fills pauses the upstream connection until it drains;
- a whole answer (``Content-Length``) is read whole and written with one ``write``.

What it leaves out, on purpose, so the figure is what a lean server side costs and
nothing else: no parsing or validation of the body, no routes beyond the two the
benchmark uses (``POST /v1/chat/completions``, ``GET /v1/models``), no headers passed
on, no limits on what a caller sends, no timeouts on callers, HTTP/1.1 callers only,
any upstream failure a bare ``502``. One task per request (the client's calls are
coroutines, as a real handler's would be); requests pipelined on one connection are
answered in turn.

Run: ``python benchmarks/lean_floor.py --port 9101 --upstream http://127.0.0.1:9000``
(with meshkit importable: the harness sets ``PYTHONPATH`` to the checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus

import httptools

from meshkit.client import HttpClient, Timeouts
from meshkit.client.h1 import Response

ROUTES = {
    (b"POST", b"/v1/chat/completions"): "/v1/chat/completions",
    (b"GET", b"/v1/models"): "/v1/models",
}
TIMEOUTS = Timeouts()
SERVICE = "llm"
LAST_CHUNK = b"0\r\n\r\n"


class Relay:
    """What every connection shares: the client, the upstream and the Date header."""

    def __init__(self, upstream: str) -> None:
        self.client = HttpClient()
        self.upstream = upstream.rstrip("/")
        self._second = -1
        self._date = b""

    def date(self) -> bytes:
        """The ``Date`` header's value, formatted once per second."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = formatdate(now, usegmt=True).encode("ascii")
        return self._date


def head(status: int, ctype: bytes, date: bytes, length: int | None, keep: bool) -> bytes:
    """A response head: whole (``Content-Length``) or chunked when ``length`` is None."""
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nDate: %s\r\n%s\r\n%s\r\n" % (
        status,
        HTTPStatus(status).phrase.encode("ascii"),
        ctype,
        date,
        framing,
        b"" if keep else b"Connection: close\r\n",
    )


class Intake(asyncio.Protocol):
    """One caller's connection: parse requests, relay each in turn, write the answers."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.waiting: deque[tuple[bytes, bytes, bytes, bool]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.piped: Response | None = None  # the upstream answer being streamed to us
        self.keep = True

    # -- connection events ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.answer(400, b"malformed request", keep=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.waiting.clear()
        piped, self.piped = self.piped, None
        if piped is not None:  # the caller left mid-stream: drop the upstream connection
            self.relay.client.finish(piped, ok=False)

    def pause_writing(self) -> None:
        if self.piped is not None:
            self.piped.pause()

    def resume_writing(self) -> None:
        if self.piped is not None:
            self.piped.resume()

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        self.waiting.append((method, self.url, b"".join(self.body), keep))
        if self.task is None:
            self.next()

    # -- answering ------------------------------------------------------------------------

    def next(self) -> None:
        """Start on the oldest request not answered yet, if any."""
        if self.waiting and self.transport is not None:
            method, url, body, keep = self.waiting.popleft()
            self.task = self.loop.create_task(self.forward(method, url, body, keep))
        else:
            self.task = None

    def done(self, keep: bool) -> None:
        """One answer is written: close, or go on with the next request."""
        if not keep and self.transport is not None:
            self.transport.close()
        self.next()

    def answer(self, status: int, text: bytes, keep: bool) -> None:
        """A short plain-text answer (errors)."""
        if self.transport is not None:
            self.transport.write(
                head(status, b"text/plain", self.relay.date(), len(text), keep) + text
            )
            if not keep:
                self.transport.close()

    async def forward(self, method: bytes, url: bytes, body: bytes, keep: bool) -> None:
        """Send one request upstream and write its answer back, whole or piped."""
        path = ROUTES.get((method, url))
        if path is None:
            self.answer(404, b"not found", keep)
            self.done(keep)
            return
        client = self.relay.client
        try:
            response = await client.start(
                method.decode("ascii"),
                self.relay.upstream + path,
                service=SERVICE,
                timeouts=TIMEOUTS,
                body=body or None,
                answer_by=self.loop.time() + TIMEOUTS.first_byte,
            )
            response.in_time()
        except Exception as exc:
            self.answer(502, type(exc).__name__.encode("ascii"), keep)
            self.done(keep)
            return
        transport = self.transport
        if transport is None:  # the caller left while we waited
            client.finish(response, ok=False)
            return
        headers = response.headers
        ctype = headers.get("content-type", "application/json").encode("latin-1")
        if "content-length" in headers:
            try:
                data = await response.read()
            except Exception as exc:
                client.finish(response, ok=False)
                self.answer(502, type(exc).__name__.encode("ascii"), keep)
                self.done(keep)
                return
            client.finish(response, ok=True)
            if self.transport is not None:
                self.transport.write(
                    head(response.status, ctype, self.relay.date(), len(data), keep) + data
                )
            self.done(keep)
            return
        self.keep = keep
        transport.write(head(response.status, ctype, self.relay.date(), None, keep))
        self.piped = response
        response.pipe(self.on_upstream_data, self.on_upstream_end)

    def on_upstream_data(self, data: bytes) -> None:
        """One piece of a streamed answer: one chunk to the caller, from the upstream
        connection's own callback."""
        transport = self.transport
        if transport is not None:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def on_upstream_end(self, exc: BaseException | None) -> None:
        """The streamed answer ended: the last chunk, or a cut answer if it broke."""
        response, self.piped = self.piped, None
        if response is None:
            return  # the caller had left; its connection ended the upstream one
        self.relay.client.finish(response, ok=exc is None)
        transport = self.transport
        if transport is None:
            return
        if exc is not None:
            transport.close()  # no last chunk: the caller sees a truncated body
            return
        transport.write(LAST_CHUNK)
        self.done(self.keep)


async def serve(port: int, upstream: str) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    relay = Relay(upstream)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with relay.client:
        server = await loop.create_server(lambda: Intake(relay), "127.0.0.1", port, backlog=4096)
        async with server:
            await stop


def main() -> None:
    """Parse the arguments and serve on uvloop when it is installed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.upstream))
    else:
        uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
