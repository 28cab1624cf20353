"""Replicas of one service: a balancer, passive and active health, a breaker per replica.

Each :class:`Replica` is a small state machine:

* **closed** — takes traffic; consecutive failures are counted;
* **open** — after ``threshold`` consecutive failures, or at once when it cannot be
  reached (connect error, failed health probe), it takes no traffic for a cool-down
  that doubles on each trip (``cooldown`` up to ``max_cooldown``);
* **half-open** — once the cool-down is over it takes one trial request at a time; a
  success closes it, a failure opens it again.

A replica found unreachable while health probes run stays out until a probe succeeds;
then it takes traffic at once, its breaker closed. Until a replica has answered a probe
once (a model server still starting), it is probed every :data:`STARTUP_PROBE` seconds
rather than every interval, so it takes traffic as soon as it is up.
Requests still waiting for a first byte from a replica that is found unreachable are
*evicted* (their task is cancelled with :data:`EVICTED`) so the caller can retry them
elsewhere within the same budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import structlog

from ..errors import MeshError, UpstreamConnectError, UpstreamRejected
from .limits import ConnectionsBusy

log = structlog.get_logger(__name__)

BALANCERS = ("least_inflight", "round_robin")

#: Cancel message given to a request task evicted from a replica that went down.
EVICTED = "meshkit.replica.evicted"

#: Seconds between probes of a replica that has never answered one yet.
STARTUP_PROBE = 0.5

Clock = Callable[[], float]


def safe_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for logs and messages."""
    if "@" not in url:
        return url  # nothing to hide: no parse (a replica's name is asked per request)
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@attrs.define(eq=False)
class Replica:
    """One endpoint of a service and its health.

    Attributes:
        url: Base URL (may hold credentials; use :attr:`name` in logs).
        in_flight: Requests using it now (a stream counts until it is closed).
        served: Requests ever sent to it.
        failures: Consecutive failures.
        trips: Consecutive times the breaker opened (grows the cool-down).
        open_until: Monotonic time the cool-down ends (0 when closed).
        unreachable: Out until a health probe succeeds.
        probed_ok: A health probe has succeeded at least once.
    """

    url: str
    in_flight: int = 0
    served: int = 0
    failures: int = 0
    trips: int = 0
    open_until: float = 0.0
    unreachable: bool = False
    probed_ok: bool = False
    last_error: str | None = None
    waiting: set[asyncio.Task[Any]] = attrs.field(factory=set, repr=False)
    evicted: set[asyncio.Task[Any]] = attrs.field(factory=set, repr=False)

    @property
    def name(self) -> str:
        """The URL without credentials."""
        return safe_url(self.url)

    def state(self, now: float) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        if self.unreachable or (self.open_until and now < self.open_until):
            return "open"
        return "half_open" if self.open_until else "closed"

    def available(self, now: float) -> bool:
        """Whether it may take a request now (half-open: one at a time)."""
        if self.unreachable:
            return False
        if not self.open_until:
            return True
        return now >= self.open_until and self.in_flight == 0


class ReplicaSet:
    """The replicas of one service and how requests are spread over them.

    Args:
        service: Service name, for logs and errors.
        urls: Base URLs, one per replica.
        balancer: ``"least_inflight"`` (ties broken in turn) or ``"round_robin"``.
        threshold: Consecutive failures that open a replica's breaker.
        cooldown: First cool-down, in seconds; doubles per consecutive trip.
        max_cooldown: Longest cool-down, in seconds.
        clock: Monotonic clock (tests may pass their own).
    """

    def __init__(
        self,
        service: str,
        urls: Sequence[str],
        *,
        balancer: str = "least_inflight",
        threshold: int = 5,
        cooldown: float = 1.0,
        max_cooldown: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError(f"{service}: a service needs at least one endpoint")
        if balancer not in BALANCERS:
            raise ValueError(f"balancer must be one of {BALANCERS}, not {balancer!r}")
        self.service = service
        self.replicas = tuple(Replica(u) for u in urls)
        self.balancer = balancer
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self.probing = False
        self._turn = 0

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    @property
    def in_flight(self) -> int:
        """Requests in flight over every replica."""
        return sum(r.in_flight for r in self.replicas)

    # -- choosing ---------------------------------------------------------------------------

    def pick(self, exclude: Collection[Replica] = ()) -> Replica | None:
        """The replica for the next request, or None when none may take one now."""
        replicas = self.replicas
        if len(replicas) == 1 and not exclude:
            # One replica, healthy (the usual case): no turn to keep, no clock to read.
            only = replicas[0]
            if not only.unreachable and not only.open_until:
                return only
        now = self.clock()
        n = len(replicas)
        start = self._turn
        self._turn = (start + 1) % n
        best: Replica | None = None
        for i in range(n):
            replica = replicas[(start + i) % n]
            if replica in exclude or not replica.available(now):
                continue
            if self.balancer == "round_robin":
                return replica
            if best is None or replica.in_flight < best.in_flight:
                best = replica
        return best

    def serving(self) -> bool:
        """Whether some replica can take traffic now (or as a half-open trial)."""
        now = self.clock()
        return any(
            not r.unreachable and (not r.open_until or now >= r.open_until) for r in self.replicas
        )

    def retry_in(self) -> float:
        """Seconds until some replica may take traffic again (a hint for Retry-After)."""
        now = self.clock()
        waits = [max(0.0, r.open_until - now) for r in self.replicas if not r.unreachable]
        return min(waits) if waits else self.cooldown

    def last_error(self) -> str | None:
        """The most recent failure recorded on any replica, for error messages."""
        for replica in self.replicas:
            if replica.last_error and not replica.available(self.clock()):
                return replica.last_error
        return None

    def acquire(self, replica: Replica) -> None:
        """Count a request on ``replica``."""
        replica.in_flight += 1
        replica.served += 1

    def release(self, replica: Replica) -> None:
        """Count a request on ``replica`` as done."""
        replica.in_flight -= 1

    # -- passive health ---------------------------------------------------------------------

    def succeeded(self, replica: Replica) -> None:
        """A request got its answer (or its first chunk): close the breaker."""
        if replica.failures or replica.open_until:
            if replica.open_until:
                log.info("meshkit.replica.back", service=self.service, replica=replica.name)
            replica.failures = 0
            replica.trips = 0
            replica.open_until = 0.0

    def failed(self, replica: Replica, err: BaseException) -> None:
        """A request failed on ``replica``; maybe open its breaker."""
        if isinstance(err, UpstreamRejected | ConnectionsBusy) or not isinstance(err, MeshError):
            # The caller's fault, the gateway's own bound, or not the replica's at all
            # (a client leaving).
            return
        replica.failures += 1
        replica.last_error = err.message
        unreachable = isinstance(err, UpstreamConnectError)
        half_open = bool(replica.open_until) and self.clock() >= replica.open_until
        if unreachable or half_open or replica.failures >= self.threshold:
            self._trip(replica, err, unreachable=unreachable)

    def _trip(self, replica: Replica, err: BaseException, *, unreachable: bool) -> None:
        wait = min(self.max_cooldown, self.cooldown * (2**replica.trips))
        replica.trips += 1
        replica.open_until = self.clock() + wait
        log.warning(
            "meshkit.replica.out",
            service=self.service,
            replica=replica.name,
            cooldown=round(wait, 3),
            failures=replica.failures,
            error=getattr(err, "code", type(err).__name__),
        )
        if unreachable:
            if self.probing:
                replica.unreachable = True
            self.evict(replica)

    def evict(self, replica: Replica) -> None:
        """Cancel requests still waiting for a first byte from ``replica``."""
        for task in list(replica.waiting):
            replica.evicted.add(task)
            task.cancel(EVICTED)
        replica.waiting.clear()

    # -- active health ----------------------------------------------------------------------

    def probed(self, replica: Replica, problem: str | None) -> None:
        """Record a health probe's outcome (``problem`` is None when it succeeded)."""
        if problem is None:
            replica.probed_ok = True
        if problem is None and replica.unreachable:
            # It answers: it takes traffic at once, not as a half-open trial, so that a
            # gateway that found /readyz green never refuses requests for it.
            replica.unreachable = False
            replica.open_until = 0.0
            replica.failures = 0
            log.info("meshkit.replica.back", service=self.service, replica=replica.name)
        elif problem is not None and not replica.unreachable:
            replica.unreachable = True
            replica.last_error = f"health probe: {problem}"
            log.warning(
                "meshkit.replica.out",
                service=self.service,
                replica=replica.name,
                error=replica.last_error,
            )
            self.evict(replica)

    async def probe_forever(
        self, probe: Callable[[Replica], Awaitable[str | None]], interval: float
    ) -> None:
        """Probe every replica each ``interval`` seconds until cancelled (every
        :data:`STARTUP_PROBE` seconds while one has never answered)."""
        self.probing = True
        try:
            while True:
                results = await asyncio.gather(*(probe(r) for r in self.replicas))
                for replica, problem in zip(self.replicas, results, strict=True):
                    self.probed(replica, problem)
                starting = not all(r.probed_ok for r in self.replicas)
                await asyncio.sleep(min(interval, STARTUP_PROBE) if starting else interval)
        finally:
            self.probing = False
            for replica in self.replicas:
                replica.unreachable = False


def eviction(replica: Replica, task: asyncio.Task[Any] | None) -> bool:
    """After a ``CancelledError``: was it an eviction from ``replica`` (then absorbed)?"""
    if task is None or task not in replica.evicted:
        return False
    replica.evicted.discard(task)
    return task.uncancel() == 0
