"""Observability: Prometheus metrics, OpenTelemetry traces and the access log.

The gateway builds one :class:`~meshkit.observability.observer.Observer` per app; each
request gets a record (:mod:`~meshkit.observability.record`) that the graph, the nodes
and the writer report to through the hooks declared here, and that becomes series
(:mod:`~meshkit.observability.metrics`), spans (:mod:`~meshkit.observability.tracing`)
and one log line (:mod:`~meshkit.observability.access_log`) when the request ends.

Only the hooks are imported here: the nodes layer depends on them, and nothing else.
"""

from __future__ import annotations

from .probe import NOOP, AttemptProbe, NodeProbe, RequestObserver, Tally

__all__ = ["NOOP", "AttemptProbe", "NodeProbe", "RequestObserver", "Tally"]
