"""The lean intake: the chat routes served by an :class:`asyncio.Protocol` of meshkit's own.

aiohttp's server costs about 130 µs of a chat request's CPU (its request object, router,
middleware chain, response objects and writer); a protocol reading requests with
``httptools`` costs about 10 (``benchmarks/results/optimisations.md``, "how low a lean
server goes"). Each connection is a :class:`Connection`: at every request boundary it
looks at the request line, and

- a ``POST`` to a chat endpoint (OpenAI ``/v1/chat/completions``, Ollama ``/api/chat``
  and ``/api/generate``, under each route's prefix, and ``App.mount(chat_path=)``) is
  read here — head and a chunked body's framing by ``httptools``, a body by its
  ``Content-Length`` — and
  answered by :func:`meshkit.gateway.fastpath.serve`, the same chain and chat code
  aiohttp runs;
- anything else, or anything this intake is unsure of (another method or path, a
  malformed or oversized head, ``Upgrade``, an unknown ``Expect`` or transfer coding,
  an HTTP version other than 1.0 and 1.1), is **handed to aiohttp on the same
  connection**: aiohttp's own protocol is created from the runner's server, takes the
  transport, and receives every byte from the start of that request. aiohttp owns the
  connection from then on, so a keep-alive caller that asks ``GET /v1/models`` first
  is served by aiohttp for the rest of that connection; one that asks for a chat first
  gets the lean path until its first other request.

Requests pipelined on one connection are read one at a time: while one is answered,
later bytes wait in the buffer (reading pauses past 1 MiB), so answers leave in order.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .exchange import Streaming
from .fastpath import Endpoint, Gate, serve
from .intake_call import SERVER, Call, HeadReader

#: Longest request head read here: a longer one goes to aiohttp, which decides (its
#: limit on one line is 8190 bytes; a chat request's head is a few hundred).
MAX_HEAD = 8190
#: Bytes of later requests buffered while one is answered before reading pauses.
MAX_PENDING = 1 << 20
#: aiohttp's idle keep-alive timeout under ``web.run_app``.
KEEPALIVE = 75.0

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Intake:
    """What every lean connection of one server shares; call it for a new connection.

    Args:
        gate: The app's gate (its chat endpoints and request chain).
        server: aiohttp's server for the same app (the protocol factory requests are
            handed to).
        keepalive_timeout: Seconds an idle connection stays open (0: for ever).

    Attributes:
        answered: Requests answered here.
        handed_off: Connections handed to aiohttp.
    """

    def __init__(self, gate: Gate, server: web.Server, *, keepalive_timeout: float) -> None:
        self.gate = gate
        self.server = server
        self.endpoints: dict[bytes, Endpoint] = gate.endpoints()
        self.max_body = gate.max_body
        self.streaming: Streaming = gate.streaming
        self.keepalive_timeout = keepalive_timeout
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        #: Idle connections and the loop time each went idle at, oldest first: one
        #: timer for them all (a timer made and cancelled per connection was ~5 µs of
        #: each new connection's CPU).
        self.idle: dict[Connection, float] = {}
        self.closing = False
        self.answered = 0
        self.handed_off = 0
        self._sweep: asyncio.TimerHandle | None = None
        self._second = -1
        self._date = b""

    def __call__(self) -> Connection:
        return Connection(self)

    def went_idle(self, conn: Connection) -> None:
        """``conn`` waits for its next request from now on; closed once it has waited
        the keep-alive timeout."""
        timeout = self.keepalive_timeout
        if timeout <= 0:
            return
        now = self.loop.time()
        idle = self.idle
        idle.pop(conn, None)  # to the end: the order stays that of the times
        idle[conn] = now
        if self._sweep is None:
            self._sweep = self.loop.call_at(now + timeout, self._expire)

    def _expire(self) -> None:
        """Close the connections idle for the keep-alive timeout; wait for the next."""
        self._sweep = None
        timeout = self.keepalive_timeout
        idle = self.idle
        due = self.loop.time() - timeout
        expired = []
        for conn, since in idle.items():
            if since > due:
                self._sweep = self.loop.call_at(since + timeout, self._expire)
                break
            expired.append(conn)
        for conn in expired:
            del idle[conn]
            conn.close_if_idle()

    def date(self) -> bytes:
        """The ``Date`` header line, formatted once per second."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        return self._date

    def close_idle(self) -> None:
        """Stop keeping connections alive: close the idle ones now, the others after
        their answer."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle()

    async def shutdown(self, grace: float) -> None:
        """Let the requests being answered end within ``grace`` seconds, then cancel
        them, and close every connection."""
        self.close_idle()
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for conn in list(self.connections):
            conn.abort()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None


class Connection(asyncio.Protocol):
    """One caller's connection while the lean intake owns it."""

    __slots__ = (
        "_buf",
        "_call",
        "_reading_paused",
        "_writable",
        "_writing_paused",
        "intake",
        "loop",
        "task",
        "transport",
    )

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.loop = intake.loop
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self._buf = bytearray()
        self._call: Call | None = None  # the request whose body is being read
        self._reading_paused = False
        self._writing_paused = False
        self._writable: asyncio.Future[None] | None = None

    # -- connection events ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.intake.connections.add(self)
        self.intake.went_idle(self)

    def data_received(self, data: bytes) -> None:
        self.intake.idle.pop(self, None)
        self._buf += data
        if self.task is None:
            self._advance()
        elif len(self._buf) > MAX_PENDING and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        intake = self.intake
        intake.connections.discard(self)
        intake.idle.pop(self, None)
        if self.task is not None:
            self.task.cancel()  # as aiohttp's handler_cancellation: the upstream call too
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    def _wake(self) -> None:
        waiter = self._writable
        if waiter is not None:
            self._writable = None
            if not waiter.done():
                waiter.set_result(None)

    async def writable(self) -> None:
        """Wait until the transport takes writes again.

        Raises:
            ConnectionResetError: The caller left.
        """
        if self.transport is None:
            raise ConnectionResetError("the caller went away")
        if not self._writing_paused:
            return
        waiter = self._writable
        if waiter is None:
            waiter = self._writable = self.loop.create_future()
        await waiter
        if self.transport is None:
            raise ConnectionResetError("the caller went away")

    # -- idle and closing -------------------------------------------------------------------

    def close_if_idle(self) -> None:
        """Close the connection if no request is being read or answered."""
        if self.task is None and self._call is None and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Cancel the request being answered and drop the connection (shutdown)."""
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    # -- reading ----------------------------------------------------------------------------

    def _advance(self) -> None:
        """Read as far as the buffer goes: the next request's head, its body, then serve
        it (one request at a time, so answers leave in order)."""
        buf = self._buf
        call = self._call
        if call is None:
            if not buf:
                if self.intake.closing:
                    self.close_if_idle()
                else:
                    self.intake.went_idle(self)
                return
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._hand_off()
                return
            call = self._head(end + 4) if end + 4 <= MAX_HEAD else None
            if call is None:
                self._hand_off()
                return
            del buf[: end + 4]
            self._call = call
            if call.expect:  # as aiohttp: before the caller sends the body
                self.transport.write(_CONTINUE)  # type: ignore[union-attr]
        done = call.read(buf)
        if done is None:
            self._refuse_body()
            return
        if not done:
            return
        self._call = None
        intake = self.intake
        intake.answered += 1
        # The request's chain is the task's coroutine; it hands the connection back
        # through ``served`` (no coroutine of the connection's own around it).
        self.task = self.loop.create_task(serve(intake.gate, call.endpoint, call))

    def _head(self, size: int) -> Call | None:
        """The request whose head is the first ``size`` bytes, if this intake answers it
        (None: aiohttp's)."""
        buf = self._buf
        line = bytes(buf[: buf.find(b"\r\n")]).split(b" ")
        if len(line) != 3 or line[0] != b"POST":
            return None
        target = line[1]
        query = target.find(b"?")
        endpoint = self.intake.endpoints.get(target if query < 0 else target[:query])
        if endpoint is None or line[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            return None
        reader = HeadReader()
        parser = httptools.HttpRequestParser(reader)
        try:
            parser.feed_data(bytes(buf[:size]))
        except httptools.HttpParserError:
            return None
        if not reader.complete or parser.should_upgrade():
            return None
        headers = CIMultiDict(reader.pairs)
        v11 = line[2] == b"HTTP/1.1"
        expect = headers.get("Expect")
        if expect is not None and v11 and expect.lower() != "100-continue":
            return None  # aiohttp answers 417
        lengths = headers.getall("Content-Length", ())
        coding = headers.get("Transfer-Encoding")
        length = 0
        if coding is not None:
            if lengths or coding.lower() != "chunked" or not v11:
                return None
        elif lengths:
            if len(lengths) > 1 or not lengths[0].isdigit():
                return None
            length = int(lengths[0])
        return Call(
            self,
            self.intake,
            endpoint,
            CIMultiDictProxy(headers),
            v11,
            parser.should_keep_alive(),
            expect is not None and v11,
            length,
            None if coding is None else (parser, reader),
        )

    def _hand_off(self) -> None:
        """Give the connection to aiohttp, with every byte since the request began."""
        transport = self.transport
        if transport is None:
            return
        intake = self.intake
        intake.connections.discard(self)
        intake.idle.pop(self, None)
        intake.handed_off += 1
        self.transport = None
        data = bytes(self._buf)
        self._buf.clear()
        handler = self.intake.server()
        handler.connection_made(transport)
        transport.set_protocol(handler)
        if self._reading_paused:
            transport.resume_reading()
        if data:
            handler.data_received(data)

    def _refuse_body(self) -> None:
        """A chunked body that does not parse: 400, and the connection closes."""
        self._call = None
        transport = self.transport
        if transport is not None:
            text = b"400, message:\n  Invalid chunked request body"
            transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\n%b%bConnection: close\r\n\r\n%b"
                % (len(text), self.intake.date(), SERVER, text)
            )
            transport.close()

    # -- answering --------------------------------------------------------------------------

    def served(self, call: Call, left: bool) -> None:
        """``call`` is over (its answer written): read the next request, or close
        (``left``: the connection is being closed anyway)."""
        self.task = None
        transport = self.transport
        if transport is None or left:
            return
        if not call.keep or self.intake.closing:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._advance()
