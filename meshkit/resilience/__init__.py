"""Resilience: deadlines, retries, replicas with health and breakers, fallbacks.

What meshkit promises (timeouts, retries, mid-stream failures, shutdown) is written
down in ``docs/resilience.md``.
"""

from __future__ import annotations

from .deadline import DEADLINE_HEADER, deadline_from, earliest, header_value
from .replicas import BALANCERS, EVICTED, Replica, ReplicaSet, safe_url
from .retry import RetryPolicy, instant_backoff, is_testing, retryable, set_testing

__all__ = [
    "BALANCERS",
    "DEADLINE_HEADER",
    "EVICTED",
    "Replica",
    "ReplicaSet",
    "RetryPolicy",
    "deadline_from",
    "earliest",
    "header_value",
    "instant_backoff",
    "is_testing",
    "retryable",
    "safe_url",
    "set_testing",
]
