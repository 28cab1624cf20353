"""One pooled keep-alive connection to an upstream, as an :class:`asyncio.Protocol`.

A :class:`Connection` carries one :class:`~meshkit.client.h1.Response` at a time: it
feeds the bytes it receives to that response's parser, bounds the wait for its answer
(through its owner's :class:`~meshkit.client.limits.Deadlines`) and, once the answer is
over, goes back to its owner (:class:`Owner`, the :class:`~meshkit.client.pool.Pool`
that opened it) or closes.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools

from .h1 import (
    HEAD_LIMIT,
    BrokenBody,
    ClosedEarly,
    H1Error,
    HeadTooLarge,
    Response,
    UnexpectedAnswer,
)
from .limits import Deadlines


class Owner(Protocol):
    """What a :class:`Connection` tells the pool it belongs to."""

    deadlines: Deadlines[Connection]

    def put_back(self, conn: Connection) -> None: ...

    def forget(self, conn: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One keep-alive connection to one upstream, carrying one response at a time."""

    # (slots: a burst keeps a thousand of them, and each is touched on every event)
    __slots__ = (
        "_due_why",
        "due",
        "idle_since",
        "keep",
        "key",
        "loop",
        "pool",
        "response",
        "reused",
        "streaming",
        "transport",
    )

    def __init__(self, pool: Owner, key: tuple[str, str, int]) -> None:
        self.loop = asyncio.get_running_loop()
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        #: The response whose body is arriving now (its head is in, its end is not).
        self.streaming: Response | None = None
        self.keep = False
        #: It has carried a request before (it came out of the pool's idle list).
        self.reused = False
        self.idle_since = 0.0
        #: Loop time the response being waited for must have begun by (None: no bound).
        self.due: float | None = None
        self._due_why = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # The relay's per-chunk path: one attribute test, then the parser.
        response = self.streaming
        if response is None:
            self._not_streaming(data)
            return
        try:
            response.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            response.fail(_parse_error(exc))

    def _not_streaming(self, data: bytes) -> None:
        """Bytes before the answer's body: its head, or bytes nobody asked for."""
        response = self.response
        if response is None or response.complete:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            response.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            response.fail(_parse_error(exc))
            return
        if not response.status and response.head_pending(len(data)):
            response.fail(HeadTooLarge(f"the answer's head is over {HEAD_LIMIT} bytes"))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.streaming = None
        if self.due is not None:
            self.due = None
            self.pool.deadlines.discard(self)
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

    def expire_at(self, response: Response, when: float, why: str) -> None:
        """Fail ``response`` (the one this connection carries) with ``TimeoutError(why)``
        at loop time ``when`` unless :meth:`in_time` comes first.

        The pool's :class:`~meshkit.client.limits.Deadlines` keep one timer for every
        connection's deadline, not one per call or per connection: a burst of new
        connections arms one in all, and a deadline costs a store and a removal.
        """
        self.due = when
        self._due_why = why
        self.pool.deadlines.add(self, when)

    def in_time(self, response: Response) -> None:
        """``response`` no longer needs its deadline (its answer came, or it is over)."""
        if self.response is response and self.due is not None:
            self.due = None
            self.pool.deadlines.discard(self)

    def overdue(self) -> None:
        """The deadline of :meth:`expire_at` passed: the response fails."""
        self.due = None
        if self.response is not None:
            self.response.fail(TimeoutError(self._due_why))

    def finished(self, response: Response) -> None:
        """The response's body is complete: note whether the connection may be reused."""
        self.streaming = None
        self.keep = response.parser.should_keep_alive()

    def reuse(self, response: Response) -> None:
        if self.response is response:
            self.response = None
            self.streaming = None
            if self.keep and self.transport is not None and not self.transport.is_closing():
                self.reused = True
                self.pool.put_back(self)
            else:
                self.pool.forget(self)
                self.close()

    def abandon(self, response: Response) -> None:
        if self.response is response:
            self.response = None
            self.streaming = None
            self.pool.forget(self)
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse_error(exc: httptools.HttpParserError | httptools.HttpParserUpgrade) -> H1Error:
    """The failure for a parser error: what a callback raised, or a malformed answer."""
    if isinstance(exc, httptools.HttpParserCallbackError):
        cause = exc.__context__
        if isinstance(cause, H1Error):
            return cause
        return BrokenBody(f"relaying the body failed: {cause!r}")
    if isinstance(exc, httptools.HttpParserUpgrade):
        return UnexpectedAnswer("the upstream switched protocols")
    return BrokenBody(f"malformed response: {exc}")
