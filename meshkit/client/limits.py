"""Bounds on outbound calls: :class:`Timeouts` per call, :class:`Limits` per service.

:class:`IdleWatch` bounds each wait for data on a stream with one lazy timer. Each
service gets at most ``max_connections`` requests (so connections) in flight at once;
more wait in turn for one to be given back (a :class:`Gate`), each within its own
first-token budget, and get :class:`ConnectionsBusy` (504) when it runs out.
"""

from __future__ import annotations

import asyncio
from collections import deque

import attrs

from ..errors import UpstreamTimeout
from . import h1


@attrs.frozen
class Timeouts:
    """How long one outbound call may take, in seconds.

    ``first_byte`` bounds everything up to the first piece of the answer (for a
    non-streaming call, the whole answer); ``idle`` bounds each gap between chunks
    after that; ``total`` bounds the whole call when set.
    """

    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 60.0
    total: float | None = None

    def within(self, seconds: float) -> Timeouts:
        """These timeouts shrunk so that none outlasts ``seconds`` (a deadline's rest)."""
        seconds = max(seconds, 0.001)
        total = seconds if self.total is None else min(self.total, seconds)
        return Timeouts(min(self.connect, seconds), min(self.first_byte, seconds), self.idle, total)


class ConnectionsBusy(UpstreamTimeout):
    """Every connection a service may use stayed busy for the whole first-token budget."""

    code = "upstream_connections_busy"


@attrs.frozen
class Limits:
    """What one service may take of the client.

    Attributes:
        max_connections: Requests (so connections) in flight to the service at once;
            more wait in turn, within their first-token budget.
        max_body: Largest answer read whole, in bytes (a stream is not bounded).
    """

    max_connections: int = 1000
    max_body: int = h1.WHOLE_LIMIT


class Gate:
    """The connections one service may use at once; requests past it wait in turn."""

    __slots__ = ("busy", "limit", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a slot if one is free and nobody waits for one."""
        if self.busy < self.limit and not self.waiters:
            self.busy += 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a slot handed over by :meth:`give`."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot just as the wait ended: pass it on
            else:
                self.waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Give a slot back: to the first waiter, else to the free ones."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1


class IdleWatch:
    """Bounds each wait for data on a streamed response by ``idle`` seconds.

    The reader marks the wait (``reading = loop.time()`` before it, ``None`` after):
    two stores per read. One timer per stream checks the mark and re-arms itself only
    when it fires, instead of a read timer being cancelled and re-created on every
    read. A wait found older than ``idle`` fails the response with
    :class:`TimeoutError`. Time the reader spends elsewhere (writing to a slow caller)
    never counts. A response relayed by callbacks marks ``reading`` with the time of
    its last piece of data instead.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_response", "reading")

    def __init__(self, response: h1.Response, idle: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._response = response
        self._idle = idle
        #: Loop time the current wait for data began; None while not waiting.
        self.reading: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        if idle:
            self._handle = self._loop.call_at(self._loop.time() + idle, self._check)

    def _check(self) -> None:
        idle = self._idle
        assert idle
        started = self.reading
        now = self._loop.time()
        if started is not None and now - started >= idle:
            self._handle = None
            self._response.fail(TimeoutError("Timeout on reading data from socket"))
            return
        self._handle = self._loop.call_at((now if started is None else started) + idle, self._check)

    def cancel(self) -> None:
        """Stop watching (the stream ended)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
