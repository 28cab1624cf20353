"""Bounds on outbound calls: :class:`Timeouts` per call, :class:`Limits` per service.

:class:`IdleWatch` bounds each wait for data on a stream (one lazy timer per loop),
:class:`Deadlines` bound many waits with one lazy timer (a pool's connects, the
starts of its answers: :class:`Dials`). Each
service gets at most ``max_connections`` requests (so connections) in flight at once;
more wait in turn for one to be given back (a :class:`Gate`), each within its own
first-token budget, and get :class:`ConnectionsBusy` (504) when it runs out.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import attrs

from ..errors import UpstreamTimeout
from . import h1

K = TypeVar("K", bound=Hashable)


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

    __slots__ = ("busy", "limit", "max_body", "waiters")

    def __init__(self, limit: int, max_body: int = h1.WHOLE_LIMIT) -> None:
        self.limit = limit
        #: The service's :attr:`Limits.max_body` (kept here: the gate is looked up
        #: on every call anyway).
        self.max_body = max_body
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
    two stores per read. The watches of one loop share one timer (:class:`_Watches`),
    armed for the earliest moment one of them could run out and re-armed only when it
    fires, instead of a read timer being cancelled and re-created on every read, or a
    timer made per stream. A wait found older than ``idle`` fails the response with
    :class:`TimeoutError`. Time the reader spends elsewhere (writing to a slow caller)
    never counts. A response relayed by callbacks marks ``reading`` with the time of
    its last piece of data instead.
    """

    __slots__ = ("_idle", "_response", "_watches", "reading")

    def __init__(self, response: h1.Response, idle: float | None) -> None:
        self._response = response
        self._idle = idle or 0.0
        #: Loop time the current wait for data began; None while not waiting.
        self.reading: float | None = None
        self._watches: _Watches | None = None
        if idle:
            self._watches = _Watches.of(asyncio.get_running_loop())
            self._watches.add(self)

    def cancel(self) -> None:
        """Stop watching (the stream ended)."""
        watches = self._watches
        if watches is not None:
            self._watches = None
            watches.discard(self)


class _Watches:
    """The idle watches of one event loop and the one timer that checks them.

    The timer is armed for the earliest time a watch could run out (a watch added
    with a sooner one re-arms it); when it fires it fails every watch whose wait is
    over and re-arms for the soonest of the others, as each watch's own timer would
    have fired, so a stall is found as soon as it is one.
    """

    __slots__ = ("__weakref__", "_due", "_handle", "_loop", "_watches")

    _of: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watches] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watches: set[IdleWatch] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    #: The last loop's own: a weak mapping's lookup makes a weak reference each time.
    _last: _Watches | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Watches:
        """The loop's own (one per loop)."""
        last = cls._last
        if last is not None and last._loop is loop:
            return last
        watches = cls._of.get(loop)
        if watches is None:
            watches = cls._of[loop] = cls(loop)
        cls._last = watches
        return watches

    def add(self, watch: IdleWatch) -> None:
        self._watches.add(watch)
        due = self._loop.time() + watch._idle  # (a wait may begin at once)
        if self._handle is None or due < self._due:
            self._arm(due)

    def discard(self, watch: IdleWatch) -> None:
        self._watches.discard(watch)

    def _arm(self, due: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._due = due
        self._handle = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._handle = None
        now = self._loop.time()
        soonest: float | None = None
        for watch in list(self._watches):  # (a failed response cancels its watch)
            started = watch.reading
            idle = watch._idle
            if started is not None and now - started >= idle:
                self._watches.discard(watch)
                watch._watches = None
                watch._response.fail(TimeoutError("Timeout on reading data from socket"))
                continue
            due = (now if started is None else started) + idle
            if soonest is None or due < soonest:
                soonest = due
        if soonest is not None:
            self._arm(soonest)


class Deadlines(Generic[K]):
    """Keys each due by a loop time, and one timer for all of them.

    A burst opens a connection per call, and a timer per connection or per call (what
    :func:`asyncio.timeout` arms) is an object made, scheduled and cancelled each time.
    Here one timer is armed for the soonest deadline (a sooner one added re-arms it)
    and re-armed only when it fires: then ``expire`` is called with each key that is
    overdue, and the timer is armed for the soonest of the others. Calls end long
    before their bound, so a burst arms one timer in all, and a key that is done costs
    one store and one removal.
    """

    __slots__ = ("_due", "_expire", "_handle", "_running")

    def __init__(self, expire: Callable[[K], object]) -> None:
        self._expire = expire
        #: Each key's deadline (loop time).
        self._running: dict[K, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def __len__(self) -> int:
        return len(self._running)

    def add(self, key: K, when: float) -> None:
        """``key`` is due by loop time ``when`` (replacing its deadline, if any)."""
        self._running[key] = when
        if self._handle is None or when < self._due:
            self._arm(when)

    def discard(self, key: K) -> bool:
        """``key`` is done in time: whether it was still waiting (not expired)."""
        return self._running.pop(key, None) is not None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._due = when
        self._handle = asyncio.get_running_loop().call_at(when, self._check)

    def _check(self) -> None:
        self._handle = None
        now = asyncio.get_running_loop().time()
        running = self._running
        for key in [key for key, when in running.items() if when <= now]:
            if running.pop(key, None) is not None:  # (an expiry may end others)
                self._expire(key)
        if running:
            soonest = min(running.values())
            if self._handle is None or soonest < self._due:  # (an expiry may add one)
                self._arm(soonest)


class Dials(Deadlines["asyncio.Task[Any]"]):
    """The connections one pool is opening, each within its connect timeout.

    An overdue dial's task is cancelled, as :func:`asyncio.timeout` would; the task
    brackets its wait with :meth:`add` and :meth:`done`, and turns a cancellation
    :meth:`done` says was its timeout into :class:`TimeoutError`.
    """

    __slots__ = ("_expired",)

    def __init__(self) -> None:
        super().__init__(self._cancel)
        #: The tasks cancelled for being overdue, until they say they are done.
        self._expired: set[asyncio.Task[Any]] = set()

    def _cancel(self, task: asyncio.Task[Any]) -> None:
        self._expired.add(task)
        task.cancel()

    def done(self, task: asyncio.Task[Any], cancelling: int) -> bool:
        """``task``'s dial is over: whether it ran out of time, so that the
        cancellation it got is a timeout (``cancelling``: the task's
        :meth:`~asyncio.Task.cancelling` when the dial began; a cancellation from
        elsewhere since then stays one)."""
        if self.discard(task) or task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() <= cancelling
