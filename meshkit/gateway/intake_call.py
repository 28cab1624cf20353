"""A chat request on a lean connection: its body as it arrives, and its answer's bytes.

The connection (:mod:`meshkit.gateway.intake`) finds the request's head and checks it;
a :class:`Call` then takes the body (``Content-Length`` or chunked, refused past the
app's limit as aiohttp refuses it: a 413 once the handler reads it) and is the exchange
the chat code answers through: a whole answer is one ``write`` of head and body; a
stream's head and events go through a :class:`_Wire` to the sink. Heads carry what
aiohttp's carry (``X-Request-ID``, ``Content-Length`` or chunked framing, ``Date``,
``Server``, ``Connection`` as the request's version and keep-alive ask).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Protocol

import httptools
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDictProxy

from ..nodes.probe import RequestObserver
from ..observability.record import Record
from .dialect import choose_request_id
from .exchange import Answer, Streaming
from .fastpath import BodyTooLarge, Endpoint

_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
SERVER = b"Server: " + SERVER_SOFTWARE.encode("utf-8") + b"\r\n"
_LAST = b"0\r\n\r\n"


class Conn(Protocol):
    """What a call needs of its connection."""

    transport: asyncio.Transport | None

    async def writable(self) -> None:
        """Wait until the transport takes writes (ConnectionResetError: the caller left)."""

    def served(self, call: Call, left: bool) -> None:
        """``call`` is over: read the next request, or close (``left``: being closed)."""


class Shared(Protocol):
    """What a call needs of the intake (settings shared by every connection)."""

    max_body: int
    streaming: Streaming

    def date(self) -> bytes:
        """The ``Date`` header line."""


class HeadReader:
    """httptools callbacks collecting one request: its head, then (a chunked body) the
    body's data for ``sink``."""

    __slots__ = ("complete", "ended", "pairs", "sink")

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.complete = False
        self.ended = False
        self.sink: Callable[[bytes], None] | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return  # a trailer, after a chunked body: nothing meshkit reads
        self.pairs.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_body(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)

    def on_message_complete(self) -> None:
        self.ended = True


class Call:
    """One chat request read by a lean connection, and the chat code's exchange
    (a :class:`~meshkit.gateway.fastpath.Call`): its body as it arrives, its answer."""

    __slots__ = (
        "_conn",
        "_left",
        "_parser",
        "_parts",
        "_reader",
        "_shared",
        "_size",
        "code",
        "endpoint",
        "expect",
        "headers",
        "keep",
        "record",
        "rid",
        "too_large",
        "v11",
    )

    method = "POST"

    def __init__(
        self,
        conn: Conn,
        shared: Shared,
        endpoint: Endpoint,
        headers: CIMultiDictProxy[str],
        v11: bool,
        keep: bool,
        expect: bool,
        length: int,
        chunked: tuple[httptools.HttpRequestParser, HeadReader] | None,
    ) -> None:
        self._conn = conn
        self._shared = shared
        self.endpoint = endpoint
        self.headers = headers
        self.v11 = v11
        self.keep = keep
        self.expect = expect
        self._left = length
        # A chunked body: the parser that read the head, and its callbacks.
        self._parser: httptools.HttpRequestParser | None = None
        self._reader: HeadReader | None = None
        if chunked is not None:
            self._parser, self._reader = chunked
            self._reader.sink = self._keep
        self._parts: list[bytes] = []
        self._size = 0
        self.too_large = False
        self.rid = choose_request_id(headers)
        self.record: Record | None = None
        self.code: str | None = None

    def head(self, status: int, headers: Mapping[str, str], length: int | None) -> bytes:
        """The answer's head as aiohttp writes it (``length`` None: a stream)."""
        call = self
        parts = [
            b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown"))
            if call.v11
            else b"HTTP/1.0 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown"))
        ]
        for name, value in headers.items():
            parts.append(f"{name}: {value}\r\n".encode())
        if "X-Request-ID" not in headers:
            parts.append(f"X-Request-ID: {call.rid}\r\n".encode())
        if length is not None:
            parts.append(b"Content-Length: %d\r\n" % length)
        elif call.v11:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            call.keep = False  # an HTTP/1.0 body of unknown length ends with the connection
        parts.append(self._shared.date())
        parts.append(SERVER)
        if call.keep:
            if not call.v11:
                parts.append(b"Connection: keep-alive\r\n")
        elif call.v11:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    # -- the body -----------------------------------------------------------------------------

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        limit = self._shared.max_body
        if limit and self._size >= limit:  # aiohttp refuses a body of the limit itself
            self.too_large = True
            self._parts.clear()
        elif not self.too_large:
            self._parts.append(data)

    def read(self, buf: bytearray) -> bool | None:
        """Take this request's body bytes from ``buf``; True once it is whole (None:
        a chunked body that does not parse)."""
        parser = self._parser
        if parser is None:
            take = min(self._left, len(buf))
            if take:
                self._keep(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
            return not self._left
        # A chunked body: the head's parser reads the framing (sizes, extensions,
        # trailers) and hands over the data. Its last bytes are always an empty line,
        # so bytes go in up to each CRLF CRLF in turn, and a request pipelined behind
        # the body stays in the buffer. The last three bytes wait for more when there
        # is none: the pair may be split between two reads.
        reader = self._reader
        assert reader is not None
        while buf:
            end = buf.find(b"\r\n\r\n")
            take = end + 4 if end >= 0 else len(buf) - 3
            if take <= 0:
                return False
            data = bytes(buf[:take])
            del buf[:take]
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                return None
            if reader.ended:
                reader.sink = None  # no cycle through the parser's callbacks
                return True
        return False

    # -- the exchange ---------------------------------------------------------------------------

    @property
    def streaming(self) -> Streaming:
        return self._shared.streaming

    def observe(self, model: str | None, stream: bool) -> RequestObserver:
        assert self.record is not None
        return self.record.bind(model, stream)

    def received(self) -> bytes:
        if self.too_large:
            raise BodyTooLarge
        parts = self._parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def body(self) -> bytes:
        return self.received()

    def answer(self, answer: Answer) -> int:
        self.code = answer.code
        conn = self._conn
        transport = conn.transport
        if transport is not None and not transport.is_closing():
            body = answer.body
            transport.write(self.head(answer.status, answer.headers, len(body)) + body)
        return answer.status

    async def open_stream(self, headers: dict[str, str]) -> _Wire:
        conn = self._conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the caller went away")
        return _Wire(conn, transport, self.head(200, headers, None), self.v11)

    def streamed(self) -> int:
        return 200

    def served(self, left: bool) -> None:
        self._conn.served(self, left)


class _Wire:
    """A streamed answer on a lean connection (the sink's :class:`Wire`)."""

    __slots__ = ("_conn", "_head", "chunked", "compressed", "transport")

    def __init__(
        self, conn: Conn, transport: asyncio.Transport, head: bytes, chunked: bool
    ) -> None:
        self._conn = conn
        self._head = head
        self.transport = transport
        self.chunked = chunked
        self.compressed = False

    def take_head(self) -> bytes:
        return self._head

    def send_head(self) -> None:
        self.transport.write(self._head)

    async def drain(self) -> None:
        await self._conn.writable()

    async def write(self, data: bytes) -> None:  # never compressed
        raise NotImplementedError

    async def end(self, last: bytes, before: bytes = b"") -> None:
        if self.transport.is_closing():
            raise ConnectionResetError("the caller went away")
        if not self.chunked:
            data = before + last
        elif last:
            data = b"%b%x\r\n%b\r\n%b" % (before, len(last), last, _LAST)
        else:
            data = before + _LAST
        if data:
            self.transport.write(data)
