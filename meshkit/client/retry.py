"""Retry policy: exponential backoff with full jitter, bounded in count and by deadline.

Tests turn the waits off with :func:`set_testing` (as ``stamina`` does), so a retry
test never sleeps on the wall clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import attrs

from ..errors import MeshError, UpstreamConnectError, UpstreamError, UpstreamOverloaded

_testing = False


def set_testing(instant: bool) -> None:
    """Make every backoff wait zero seconds (``True``) or real again (``False``)."""
    global _testing
    _testing = instant


def is_testing() -> bool:
    """Whether backoff waits are switched off."""
    return _testing


@contextmanager
def instant_backoff() -> Iterator[None]:
    """Within the block, retries do not wait."""
    before = _testing
    set_testing(True)
    try:
        yield
    finally:
        set_testing(before)


def retryable(err: MeshError) -> bool:
    """Whether a failure is safe to try again: nothing reached the upstream's model
    (a connect error), or the upstream asked for a retry (429, 502, 503)."""
    if isinstance(err, UpstreamConnectError | UpstreamOverloaded):
        return True
    return isinstance(err, UpstreamError) and err.upstream_status == 502


@attrs.frozen
class RetryPolicy:
    """How often and how patiently to retry a safe failure.

    Attributes:
        retries: Extra attempts after the first (0 turns retries off).
        base: First backoff, in seconds; doubles per attempt.
        cap: Longest backoff, in seconds.
        max_retry_after: Longest ``Retry-After`` honoured before giving up instead.
    """

    retries: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    base: float = 0.1
    cap: float = 2.0
    max_retry_after: float = 30.0

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0).

        Full jitter over ``base * 2**attempt`` (capped), but never less than what the
        upstream's ``Retry-After`` asked for.
        """
        if _testing:
            return 0.0
        ceiling = min(self.cap, self.base * (2**attempt))
        wait = random.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait
