"""Retries of safe upstream failures, run by stamina.

`stamina <https://stamina.hynek.me>`_ runs the attempts: how many (``retries`` + 1),
the total time they may take, exponential backoff with jitter between them, and a switch
that makes every wait instant in tests (``stamina.set_testing(True, attempts=..., cap=True)``;
``cap`` keeps each service's own count). What stays meshkit's is the judgement of each
failure, made in stamina's backoff hook (:meth:`Retrying.backoff`): whether it is safe to
send the request again (:func:`retryable`), how long the upstream asked to be left alone
(``Retry-After``, honoured unless another replica can be asked at once), and whether the
wait still fits in the call's budget.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import attrs
import stamina

from ..errors import MeshError, UpstreamConnectError, UpstreamError, UpstreamOverloaded


def retryable(err: MeshError) -> bool:
    """Whether a failure is safe to try again: nothing reached the upstream's model
    (a connect error), or the upstream asked for a retry (429, 502, 503)."""
    if isinstance(err, UpstreamConnectError | UpstreamOverloaded):
        return True
    return isinstance(err, UpstreamError) and err.upstream_status == 502


@attrs.frozen
class RetryPolicy:
    """How often and how patiently to retry a safe failure.

    The n-th retry waits ``min(cap, base * 2**(n-1) + jitter * random())`` seconds
    (stamina's backoff), or what the upstream's ``Retry-After`` asked for.

    Attributes:
        retries: Extra attempts after the first (0 turns retries off).
        base: First backoff, in seconds; doubles per attempt.
        cap: Longest backoff, in seconds.
        jitter: Most random seconds added to a backoff, so that callers refused
            together do not come back together.
        max_retry_after: Longest ``Retry-After`` honoured before giving up instead.
    """

    retries: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    base: float = 0.1
    cap: float = 2.0
    jitter: float = 0.1
    max_retry_after: float = 30.0

    def longest_wait(self, retry: int) -> float:
        """The longest backoff stamina may pick before retry number ``retry`` (from 1)."""
        return float(min(self.cap, self.base * 2 ** (retry - 1) + self.jitter))

    def start(
        self,
        budget_end: float,
        *,
        fresh: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> Retrying:
        """The retries of one call that must be over by ``budget_end`` (a ``clock`` time).

        ``fresh`` says whether a replica not tried yet could take the next attempt now.
        """
        return Retrying(self, budget_end, fresh, clock)


@attrs.define
class Retrying:
    """One call's attempts: iterate for stamina's attempts, each used as a context
    manager around one try; the failure it lets out is judged by :meth:`backoff`.

    Attributes:
        last: The latest failure (None before the first).
        failed_at: When it happened (a ``clock`` time).
    """

    policy: RetryPolicy
    budget_end: float
    fresh: Callable[[], bool]
    clock: Callable[[], float] = time.monotonic
    last: UpstreamError | None = None
    failed_at: float = 0.0
    _failures: int = 0

    def __aiter__(self) -> AsyncIterator[stamina.Attempt]:
        policy = self.policy
        # stamina's own clock bounds the retries too; it must be given a positive time
        # (with none left, the attempt itself fails at once and is not retried).
        left = max(self.budget_end - self.clock(), 0.001)
        return stamina.retry_context(
            on=self.backoff,
            attempts=policy.retries + 1,
            timeout=left,
            wait_initial=policy.base,
            wait_max=policy.cap,
            wait_jitter=policy.jitter,
        ).__aiter__()

    @property
    def waited(self) -> float:
        """Seconds since the latest failure (the pause before the attempt now starting)."""
        return self.clock() - self.failed_at

    def backoff(self, exc: BaseException) -> bool | float:
        """stamina's backoff hook: False to give up, True to retry after stamina's own
        backoff, or the seconds the upstream asked to wait (``Retry-After``)."""
        if not isinstance(exc, UpstreamError):
            return False  # a bad request, a client leaving, a cancellation: never retried
        self.last = exc
        self.failed_at = now = self.clock()
        self._failures += 1
        if not retryable(exc):
            return False
        policy = self.policy
        asked = exc.retry_after
        if asked is not None and not self.fresh():
            # The same replicas again: what they asked for, or not at all.
            if asked > policy.max_retry_after:
                return False
            wait: float = asked
        else:
            asked = None
            wait = policy.longest_wait(self._failures)
        if stamina.is_testing():
            wait = 0.0  # stamina waits nothing in tests either
        if now + wait >= self.budget_end:
            return False  # a wait that might not fit is not started
        return True if asked is None else asked
