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
from collections.abc import Mapping
from http import HTTPStatus
from typing import Protocol

from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDictProxy

from ..nodes.probe import RequestObserver
from ..observability.record import Record
from .dialect import choose_request_id
from .exchange import Answer, Streaming
from .fastpath import BodyTooLarge, Endpoint

#: Longest line of a chunked body's framing read before the body is refused.
MAX_LINE = 1 << 16

_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
SERVER = b"Server: " + SERVER_SOFTWARE.encode("utf-8") + b"\r\n"
_LAST = b"0\r\n\r\n"


class Conn(Protocol):
    """What a call needs of its connection."""

    transport: asyncio.Transport | None

    async def writable(self) -> None:
        """Wait until the transport takes writes (ConnectionResetError: the caller left)."""


class Shared(Protocol):
    """What a call needs of the intake (settings shared by every connection)."""

    max_body: int
    streaming: Streaming

    def date(self) -> bytes:
        """The ``Date`` header line."""


class HeadReader:
    """httptools callbacks collecting one request head."""

    __slots__ = ("complete", "pairs")

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.pairs.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        self.complete = True


class Call:
    """One chat request read by a lean connection, and the chat code's exchange
    (a :class:`~meshkit.gateway.fastpath.Call`): its body as it arrives, its answer."""

    __slots__ = (
        "_chunk_left",
        "_chunked",
        "_conn",
        "_left",
        "_parts",
        "_shared",
        "_size",
        "_state",
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
        chunked: bool,
    ) -> None:
        self._conn = conn
        self._shared = shared
        self.endpoint = endpoint
        self.headers = headers
        self.v11 = v11
        self.keep = keep
        self.expect = expect
        self._left = length
        self._chunked = chunked
        self._state = 0  # chunked: 0 size line, 1 data, 2 data's CRLF, 3 trailers
        self._chunk_left = 0
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
        if not self._chunked:
            take = min(self._left, len(buf))
            if take:
                self._keep(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
            return not self._left
        while True:
            state = self._state
            if state == 1:
                take = min(self._chunk_left, len(buf))
                if take:
                    self._keep(bytes(buf[:take]))
                    del buf[:take]
                    self._chunk_left -= take
                if self._chunk_left:
                    return False
                self._state = 2
                continue
            if state == 2:
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    return None
                del buf[:2]
                self._state = 0
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                return None if len(buf) > MAX_LINE else False
            line = bytes(buf[:end])
            del buf[: end + 2]
            if state == 3:
                if not line:
                    return True
                continue
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size < 0:
                return None
            self._chunk_left = size
            self._state = 1 if size else 3

    # -- the exchange ---------------------------------------------------------------------------

    @property
    def streaming(self) -> Streaming:
        return self._shared.streaming

    def observe(self, model: str | None, stream: bool) -> RequestObserver:
        assert self.record is not None
        return self.record.bind(model, stream)

    async def body(self) -> bytes:
        if self.too_large:
            raise BodyTooLarge
        parts = self._parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

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
