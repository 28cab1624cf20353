"""The outbound layer: the only code in meshkit that opens connections.

It owns the keep-alive pool and the HTTP/1.1 wire (:mod:`~meshkit.client.h1`,
:mod:`~meshkit.client.pool`, :mod:`~meshkit.client.connection`,
:mod:`~meshkit.client.dial`, :mod:`~meshkit.client.proxy`), the client nodes call
(:class:`HttpClient`, with per-service :class:`Limits` and :class:`Timeouts`), and what
makes an upstream dependable: replica sets with health probes and circuit breakers
(:mod:`~meshkit.client.replicas`), request deadlines (:mod:`~meshkit.client.deadline`)
and the retry policy (:mod:`~meshkit.client.retry`).
It depends only on :mod:`meshkit.protocol`'s neighbours below it (``errors``, ``_json``)
and knows nothing of nodes, graphs or serving.
"""

from __future__ import annotations

from .deadline import DEADLINE_HEADER, deadline_from, earliest, header_value
from .http import HttpClient
from .limits import Limits, Timeouts
from .replicas import BALANCERS, EVICTED, Replica, ReplicaSet, safe_url
from .retry import Retrying, RetryPolicy, retryable

__all__ = [
    "BALANCERS",
    "DEADLINE_HEADER",
    "EVICTED",
    "HttpClient",
    "Limits",
    "Replica",
    "ReplicaSet",
    "RetryPolicy",
    "Retrying",
    "Timeouts",
    "deadline_from",
    "earliest",
    "header_value",
    "retryable",
    "safe_url",
]
