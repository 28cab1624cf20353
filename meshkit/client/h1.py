"""A lean HTTP/1.1 client's protocol: requests encoded (:mod:`.h1_request`), responses parsed.

Every outbound call meshkit makes is one small request and one response that may be
long and streamed, to a handful of upstreams. This module does just that, and no more:
a :class:`Response` is parsed by ``httptools`` (the llhttp parser) as its
:class:`~meshkit.client.connection.Connection` receives bytes; :mod:`meshkit.client.pool`
keeps the connections and opens them.

A :class:`Response`'s body is read either by awaiting (:meth:`Response.readany`,
:meth:`Response.read`) or, for a relay, by callbacks (:meth:`Response.pipe`): each piece
of body is handed to a function from the protocol's own ``data_received``, so relaying
a chunk costs no task wake-up at all. That is what keeps meshkit's cost per relayed
chunk near a C proxy's (see ``benchmarks/results/optimisations.md``).

What it accepts from an upstream is bounded: a head (status line and headers) of at
most :data:`HEAD_LIMIT` bytes, a body read whole of at most :attr:`Response.max_size`.
Interim answers (``100``, ``103``) are skipped, trailers ignored; a ``101`` is an
error, since meshkit never asks to switch protocols.

Failures are :class:`H1Error` subclasses; :mod:`meshkit.client` maps them to
:mod:`meshkit.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httptools

from .h1_request import complete_request as complete_request
from .h1_request import encode_head as encode_head
from .h1_request import encode_request as encode_request
from .h1_request import target as target

#: Buffered body bytes past which an awaited response stops reading from the socket.
READ_LIMIT = 1 << 16
#: Longest answer head (status line and headers) accepted from an upstream.
HEAD_LIMIT = 1 << 16
#: Default bound on a body read whole (:meth:`Response.read`).
WHOLE_LIMIT = 64 << 20


class H1Error(Exception):
    """A connection-level failure talking to an upstream."""


class ConnectFailed(H1Error):
    """No connection could be opened (refused, unreachable, no name, TLS failure)."""

    def __init__(self, host: str, port: int, why: str) -> None:
        super().__init__(f"cannot connect to {host}:{port} ({why})")
        self.host = host
        self.port = port


class ClosedEarly(H1Error):
    """The connection ended before the response's head arrived."""


class BrokenBody(H1Error):
    """The response was malformed, or its body was cut short."""


class HeadTooLarge(BrokenBody):
    """The answer's status line and headers are over :data:`HEAD_LIMIT`."""


class BodyTooLarge(H1Error):
    """A body read whole is over its bound (:attr:`Response.max_size`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is over the limit of {limit} bytes")
        self.limit = limit


class UnexpectedAnswer(BrokenBody):
    """A head no request of meshkit's can be answered with (``101 Switching Protocols``)."""


class Headers(dict[str, str]):
    """Response headers, stored and looked up by lower-cased name."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)


class Connection(Protocol):
    """What a :class:`Response` needs of the connection it arrives on
    (:class:`meshkit.client.connection.Connection` is the one meshkit uses)."""

    loop: asyncio.AbstractEventLoop
    streaming: Response | None

    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def finished(self, response: Response) -> None: ...
    def abandon(self, response: Response) -> None: ...
    def expire_at(self, response: Response, when: float, why: str) -> None: ...
    def in_time(self, response: Response) -> None: ...
    def reuse(self, response: Response) -> None: ...


class Response:
    """One response on a :class:`Connection`, from its head to its end.

    Read the body with :meth:`readany`/:meth:`read`, or hand it to callbacks with
    :meth:`pipe`; then give the response back with :meth:`release` (the connection
    returns to its pool when the body was read whole) or :meth:`close`.
    """

    __slots__ = (
        "_buffer",
        "_conn",
        "_error",
        "_head",
        "_head_bytes",
        "_head_size",
        "_headers",
        "_on_data",
        "_on_end",
        "_paused",
        "_raw_headers",
        "_size",
        "_waiter",
        "begun",
        "complete",
        "due",
        "max_size",
        "parser",
        "reason",
        "status",
        "timer",
    )

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._head_size = 0
        self._head_bytes = 0
        self._buffer: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[BaseException | None], None] | None = None
        self._paused = False
        self.complete = False
        #: Some byte of the answer has arrived (a request that failed before is safe
        #: to send again on another connection: the upstream never answered it).
        self.begun = False
        #: Bound on a body read whole with :meth:`read`.
        self.max_size = WHOLE_LIMIT
        self.status = 0
        self.reason = ""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: Headers | None = None
        #: A timer bounding the whole call, cancelled when the response is given back.
        self.timer: asyncio.TimerHandle | None = None
        #: A deadline bounds the wait for the start of the answer (see :meth:`expire_at`).
        self.due = False

    # -- parser callbacks (called by httptools from Connection.data_received) -------------

    def on_message_begin(self) -> None:
        self.begun = True
        if self.complete:
            # A second answer in the packet that ended this one: bytes nobody asked
            # for (see Connection.data_received). Stop parsing before it rewrites this
            # response, and close the connection.
            self._conn.close()
            raise BrokenBody("an answer nobody asked for followed the response")

    def on_status(self, status: bytes) -> None:
        size = self._head_size = self._head_size + len(status)  # (as on_header)
        if size > HEAD_LIMIT:
            raise HeadTooLarge(f"the answer's head is over {HEAD_LIMIT} bytes")
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            return  # a trailer, after a chunked body: nothing meshkit reads
        # The head's complete lines are bounded (one check per header, none per body
        # chunk; inline: a call per header is most of this callback's cost).
        size = self._head_size = self._head_size + len(name) + len(value) + 4
        if size > HEAD_LIMIT:
            raise HeadTooLarge(f"the answer's head is over {HEAD_LIMIT} bytes")
        self._raw_headers.append((name, value))  # decoded only if someone looks

    def head_pending(self, size: int) -> bool:
        """``size`` more bytes arrived and the head is still not complete: whether the
        head is now over :data:`HEAD_LIMIT` (a line that never ends counts too)."""
        self._head_bytes += size
        return self._head_bytes > HEAD_LIMIT

    @property
    def buffered(self) -> int:
        """Bytes of the body received and not read yet (reading pauses past
        :data:`READ_LIMIT`)."""
        return self._size

    @property
    def headers(self) -> Headers:
        """The response's headers (repeated ones joined with ``", "``)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers()
            for name, value in self._raw_headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                old = dict.get(headers, key)
                dict.__setitem__(headers, key, text if old is None else old + ", " + text)
        return headers

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (103 Early Hints, an unasked-for 100 Continue): the
            # final one follows on the same parser; forget this one's reason and headers.
            self.reason = ""
            self._raw_headers = []
            self._headers = None
            return
        if status == 101:
            # meshkit never asks to switch protocols: what follows is not HTTP.
            raise UnexpectedAnswer(f"the upstream answered 101 {self.reason}".rstrip())
        self.status = status
        self._conn.streaming = self
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        sink = self._on_data
        if sink is not None:
            sink(body)
            return
        self._buffer.append(body)
        self._size += len(body)
        if self._size > READ_LIMIT and not self._paused:
            self._paused = True
            self._conn.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # the end of an interim answer, not of this response
        self.complete = True
        self._conn.finished(self)
        self._ended(None)

    # -- connection events ------------------------------------------------------------------

    def lost(self, exc: BaseException | None) -> None:
        """The connection ended; fine only for a body delimited by the close."""
        if self.complete:
            return
        if exc is None and self._head.done() and self._close_delimited():
            self.complete = True
            self._ended(None)
            return
        if self._head.done():
            self.fail(BrokenBody("the connection closed before the body was complete"))
        else:
            self.fail(ClosedEarly("the connection closed before an answer" + _why(exc)))

    def _close_delimited(self) -> bool:
        h = self.headers
        return (
            "content-length" not in h
            and "chunked" not in h.get("transfer-encoding", "").lower()
            and self.status not in (204, 304)
            and not 100 <= self.status < 200
        )

    def fail(self, exc: BaseException) -> None:
        """End the response with ``exc``: readers raise it, a pipe's end gets it."""
        if self.complete or self._error is not None:
            return
        self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved here: an unawaited head must not warn
        self._ended(exc)
        self._conn.abandon(self)

    def expire_at(self, when: float, why: str) -> None:
        """Fail the response with ``TimeoutError(why)`` at loop time ``when`` unless
        :meth:`in_time` is called first: cheaper than a timeout around each await, and
        cheaper than a timer per call (the connection keeps one lazy timer for the
        deadlines of every response it carries)."""
        self.due = True
        self._conn.expire_at(self, when, why)

    def in_time(self) -> None:
        """What :meth:`expire_at` waited for has arrived: its deadline is over."""
        if self.due:
            self.due = False
            self._conn.in_time(self)

    def _ended(self, exc: BaseException | None) -> None:
        """The body is over (``exc`` None) or broken: wake a reader, end a pipe once."""
        self._wake()
        end = self._on_end
        if end is not None:
            self._on_end = self._on_data = None
            end(exc)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- reading ------------------------------------------------------------------------------

    def head(self) -> Awaitable[None]:
        """Wait for the status line and headers (the future itself: no coroutine)."""
        return self._head

    def whole(self) -> bytes | None:
        """The rest of the body at once, when all of it has arrived (a short answer
        comes with its head) and is within :attr:`max_size`; else None: :meth:`read`
        waits for it, or raises."""
        if not self.complete or self._error is not None or self._paused:
            return None
        buffer = self._buffer
        if self._size > self.max_size:
            return None  # read() raises BodyTooLarge
        body = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._size = 0
        return body

    def take(self) -> bytes | None:
        """The body bytes that arrived since the last read, at once; None when none
        did (:meth:`readany` waits for them). A stream's first bytes often come with
        its head: taking them needs no coroutine."""
        buffer = self._buffer
        if not buffer:
            return None
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            self._conn.resume_reading()
        return data

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last read (waiting for some); b"" at the end."""
        while True:
            data = self.take()
            if data is not None:
                return data
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = self._conn.loop.create_future()
            await self._waiter

    async def read(self, limit: int = -1) -> bytes:
        """The rest of the body: at most ``limit`` bytes when given, else all of it.

        Raises:
            BodyTooLarge: With no ``limit``, the body is over :attr:`max_size`.
        """
        parts: list[bytes] = []
        size = 0
        most = self.max_size
        while limit < 0 or size < limit:
            data = await self.readany()
            if not data:
                break
            parts.append(data)
            size += len(data)
            if limit < 0 and size > most:
                self.close()
                raise BodyTooLarge(most)
        body = b"".join(parts)
        return body if limit < 0 else body[:limit]

    def pipe(
        self, on_data: Callable[[bytes], None], on_end: Callable[[BaseException | None], None]
    ) -> None:
        """From now on hand each piece of body to ``on_data`` as it arrives (anything
        already buffered first), then call ``on_end`` once: with None at the end of the
        body, or with the error that cut it short."""
        buffered, self._buffer = self._buffer, []
        self._size = 0
        for data in buffered:
            on_data(data)
        if self._error is not None:
            on_end(self._error)
        elif self.complete:
            on_end(None)
        else:
            self._on_data = on_data
            self._on_end = on_end
            if self._paused:
                self._paused = False
                self._conn.resume_reading()

    def pause(self) -> None:
        """Stop reading from the upstream (its sender then waits): the caller is slow."""
        self._conn.pause_reading()

    def resume(self) -> None:
        """Read from the upstream again after :meth:`pause`."""
        self._conn.resume_reading()

    # -- giving back -------------------------------------------------------------------------

    def release(self) -> None:
        """Done: the connection goes back to its pool when the body was read whole and
        the server keeps it alive, else it is closed."""
        self._stop_timers()
        if self.complete and not self._buffer:
            self._conn.reuse(self)
            # The parser calls this response's bound methods, and the response holds
            # the parser: a reference cycle the collector would have to find, with the
            # head and body, on every call (14 objects). A finished response has no
            # use for it.
            self.parser = _SPENT
        else:
            self.close()

    def _stop_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.due:
            self.due = False
            self._conn.in_time(self)

    def close(self) -> None:
        """Done, whatever was left unread: the connection is closed."""
        self._stop_timers()
        if not self.complete and self._error is None:
            self.fail(BrokenBody("the response was closed"))  # a pipe's end learns why
        self._on_data = self._on_end = None
        self._conn.abandon(self)


class _NoCallbacks:
    """The protocol of :data:`_SPENT`: it hears nothing."""


#: The parser a response released whole holds instead of its own (never fed).
_SPENT = httptools.HttpResponseParser(_NoCallbacks())


def _why(exc: BaseException | None) -> str:
    return f" ({type(exc).__name__}: {exc})" if exc is not None else ""
