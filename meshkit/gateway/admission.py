"""Admission control and draining: how many requests the gateway serves at once.

Every request except the health endpoints counts from the moment it is admitted until
its handler returns, which for a stream is after its last byte. Past ``limit`` the
answer is an immediate 429 with ``Retry-After`` (no queue: a caller that must wait is
better told so at once than held with its connection open). While the gateway shuts
down, new requests get 503 and :meth:`Admission.drain` waits for the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from ..errors import MeshError, Overloaded, ShuttingDown

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Paths never counted nor refused: orchestrators must see health (and Prometheus its
#: scrape) while we are busy.
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


class Admission:
    """Counts requests in flight; refuses those over ``limit`` (None or 0: no limit).

    Args:
        limit: Most requests served at once across the gateway.
        retry_after: Seconds suggested to a refused caller.
    """

    def __init__(self, limit: int | None = None, *, retry_after: float = 1.0) -> None:
        self.limit = limit or None
        self.retry_after = retry_after
        self.in_flight = 0
        self.refused = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def refusal(self) -> MeshError | None:
        """Why a request arriving now is refused (None: it may be admitted)."""
        if self.draining:
            err: MeshError = ShuttingDown("the gateway is shutting down")
            err.retry_after = self.retry_after
            return err
        if self.limit is not None and self.in_flight >= self.limit:
            self.refused += 1
            err = Overloaded(
                f"the gateway is serving its limit of {self.limit} requests; retry shortly"
            )
            err.retry_after = self.retry_after
            return err
        return None

    def enter(self) -> None:
        """One more request in flight (after :meth:`refusal` found none)."""
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        """One request fewer in flight."""
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware applying the bound."""
        if request.path in EXEMPT:
            return await handler(request)
        err = self.refusal()
        if err is not None:
            raise err
        self.enter()
        try:
            return await handler(request)
        finally:
            self.leave()

    async def wait_idle(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for no request to be in flight; True if none is."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def drain(self, grace: float, abort: Callable[[], int]) -> None:
        """Refuse new requests, let those in flight finish within ``grace`` seconds,
        then ``abort`` the streams still open (their readers end them with a final
        error event) and give them a moment to write it."""
        self.draining = True
        log.info("meshkit.gateway.draining", in_flight=self.in_flight, grace=grace)
        if await self.wait_idle(grace):
            return
        aborted = abort()
        log.warning("meshkit.gateway.grace_over", in_flight=self.in_flight, aborted=aborted)
        await self.wait_idle(2.0)
