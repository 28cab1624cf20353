"""Resilience: deadlines, retries, replicas with health and breakers, fallbacks.

What meshkit promises (timeouts, retries, mid-stream failures, shutdown) is written
down in ``docs/resilience.md``.
"""

from __future__ import annotations

from .deadline import DEADLINE_HEADER, deadline_from, earliest, header_value
from .replicas import BALANCERS, EVICTED, Replica, ReplicaSet, safe_url
from .retry import Retrying, RetryPolicy, retryable

__all__ = [
    "BALANCERS",
    "DEADLINE_HEADER",
    "EVICTED",
    "Replica",
    "ReplicaSet",
    "RetryPolicy",
    "Retrying",
    "deadline_from",
    "earliest",
    "header_value",
    "retryable",
    "safe_url",
]
