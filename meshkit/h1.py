"""A lean HTTP/1.1 client: pooled keep-alive connections over asyncio, parsed by llhttp.

Every outbound call meshkit makes is one small request and one response that may be
long and streamed, to a handful of upstreams. This module does just that, and no more:
a :class:`Connection` is an :class:`asyncio.Protocol` whose responses are parsed by
``httptools`` (the llhttp parser); a :class:`Pool` keeps idle connections per host.

A :class:`Response`'s body is read either by awaiting (:meth:`Response.readany`,
:meth:`Response.read`) or, for a relay, by callbacks (:meth:`Response.pipe`): each piece
of body is handed to a function from the protocol's own ``data_received``, so relaying
a chunk costs no task wake-up at all. That is what keeps meshkit's cost per relayed
chunk near a C proxy's (see ``benchmarks/results/optimisations.md``).

Failures are :class:`H1Error` subclasses; :mod:`meshkit.client` maps them to
:mod:`meshkit.errors`.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

#: Buffered body bytes past which an awaited response stops reading from the socket.
READ_LIMIT = 1 << 16


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


@functools.lru_cache(maxsize=256)
def target(url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
    """``(scheme, host, port)``, the request target and the Host header of ``url``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    if port != default:
        shown += f":{port}"
    return (scheme, host, port), path.encode("ascii"), shown.encode("idna")


def encode_request(
    method: str, path: bytes, host: bytes, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    """One request's bytes: request line, headers and body (never chunked)."""
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), path, host)]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} has a line break or colon in it")
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if body is not None:
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
    else:
        lines.append(b"\r\n")
    return b"".join(lines)


class Headers(dict[str, str]):
    """Response headers, stored and looked up by lower-cased name."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)


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
        "_header",
        "_headers",
        "_on_data",
        "_on_end",
        "_paused",
        "_raw_headers",
        "_size",
        "_waiter",
        "complete",
        "head_timer",
        "parser",
        "reason",
        "status",
        "timer",
    )

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._header = b""
        self._buffer: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[BaseException | None], None] | None = None
        self._paused = False
        self.complete = False
        self.status = 0
        self.reason = ""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: Headers | None = None
        #: A timer bounding the whole call, cancelled when the response is given back.
        self.timer: asyncio.TimerHandle | None = None
        #: A timer bounding the wait for the start of the answer (see :meth:`expire_at`).
        self.head_timer: asyncio.TimerHandle | None = None

    # -- parser callbacks (called by httptools from Connection.data_received) -------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second answer in the packet that ended this one: bytes nobody asked
            # for (see Connection.data_received). Stop parsing before it rewrites this
            # response, and close the connection.
            self._conn.close()
            raise BrokenBody("an answer nobody asked for followed the response")

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))  # decoded only if someone looks

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
        if _interim(status):
            # An interim answer (103 Early Hints, an unasked-for 100 Continue): the
            # final one follows on the same parser; forget this one's reason and headers.
            self.reason = ""
            self._raw_headers = []
            self._headers = None
            return
        self.status = status
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
        if _interim(self.parser.get_status_code()):
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

    def expire_at(self, when: float, exc: BaseException) -> None:
        """Fail the response with ``exc`` at loop time ``when`` unless :meth:`in_time`
        is called first: one timer, cheaper than a timeout around each await."""
        self.head_timer = self._conn.loop.call_at(when, self.fail, exc)

    def in_time(self) -> None:
        """What :meth:`expire_at` waited for has arrived: stop its timer."""
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

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

    async def head(self) -> None:
        """Wait for the status line and headers."""
        await self._head

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last read (waiting for some); b"" at the end."""
        while True:
            if self._buffer:
                data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
                self._buffer.clear()
                self._size = 0
                if self._paused:
                    self._paused = False
                    self._conn.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = self._conn.loop.create_future()
            await self._waiter

    async def read(self, limit: int = -1) -> bytes:
        """The rest of the body (at most ``limit`` bytes when given)."""
        parts: list[bytes] = []
        size = 0
        while limit < 0 or size < limit:
            data = await self.readany()
            if not data:
                break
            parts.append(data)
            size += len(data)
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
        else:
            self.close()

    def _stop_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def close(self) -> None:
        """Done, whatever was left unread: the connection is closed."""
        self._stop_timers()
        if not self.complete and self._error is None:
            self.fail(BrokenBody("the response was closed"))  # a pipe's end learns why
        self._on_data = self._on_end = None
        self._conn.abandon(self)


def _interim(status: int) -> bool:
    """A 1xx answer other than 101: informational, always followed by the final one."""
    return 100 <= status < 200 and status != 101


def _why(exc: BaseException | None) -> str:
    return f" ({type(exc).__name__}: {exc})" if exc is not None else ""


class Connection(asyncio.Protocol):
    """One keep-alive connection to one upstream, carrying one response at a time."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.loop = asyncio.get_running_loop()
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.keep = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response.complete:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            response.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            response.fail(BrokenBody(f"relaying the body failed: {exc.__context__!r}"))
        except httptools.HttpParserError as exc:
            response.fail(BrokenBody(f"malformed response: {exc}"))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        response = self.response
        if response is not None:
            response.lost(exc)
        self.pool.forget(self)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def send(self, data: bytes) -> Response:
        """Write one request; the response to read is returned."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClosedEarly("the connection closed before the request was sent")
        response = Response(self)
        self.response = response
        transport.write(data)
        return response

    def finished(self, response: Response) -> None:
        """The response's body is complete: note whether the connection may be reused."""
        self.keep = response.parser.should_keep_alive()

    def reuse(self, response: Response) -> None:
        if self.response is response:
            self.response = None
            if self.keep and self.transport is not None and not self.transport.is_closing():
                self.pool.put_back(self)
            else:
                self.pool.forget(self)
                self.close()

    def abandon(self, response: Response) -> None:
        if self.response is response:
            self.response = None
            self.pool.forget(self)
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Idle keep-alive connections per ``(scheme, host, port)``.

    ``keepalive`` is how long an idle connection is kept; one sweeper per pool closes
    the older ones, armed only while some connection is idle. ``https`` upstreams are
    verified with ``tls``, by default the system's trusted CAs
    (:func:`ssl.create_default_context`, which honours ``SSL_CERT_FILE``).
    """

    def __init__(
        self, *, keepalive: float = 30.0, max_idle: int = 256, tls: ssl.SSLContext | None = None
    ) -> None:
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._busy: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._tls = tls
        self.closed = False

    @property
    def in_use(self) -> int:
        """Connections carrying a request now."""
        return len(self._busy)

    async def connection(
        self, key: tuple[str, str, int], *, within: float, fresh: bool = False
    ) -> Connection:
        """An idle pooled connection to ``key``, or a new one opened within ``within`` s."""
        if self.closed:
            raise RuntimeError("the connection pool is closed")
        idle = None if fresh else self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                self._busy.add(conn)
                return conn
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(within):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, key),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(host, port, exc.strerror or str(exc) or type(exc).__name__) from exc
        if not fresh:
            self._busy.add(conn)
        return conn

    def put_back(self, conn: Connection) -> None:
        self._busy.discard(conn)
        idle = self._idle.setdefault(conn.key, [])
        if self.closed or len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.keepalive / 2, self._sweep)

    def forget(self, conn: Connection) -> None:
        self._busy.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self.keepalive
        left = False
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since <= oldest]:
                idle.remove(conn)
                conn.close()
            left = left or bool(idle)
        if left:
            self._sweeper = loop.call_later(self.keepalive / 2, self._sweep)

    def close(self) -> None:
        """Close every connection, idle or busy."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            if conn.response is not None:
                conn.response.close()
            conn.close()
        self._busy.clear()
