"""Observability: Prometheus metrics, OpenTelemetry traces and the access log.

The gateway builds one :class:`~meshkit.observability.observer.Observer` per app; each
request gets a record (:mod:`~meshkit.observability.record`) that the graph, the nodes
and the writer report to through the hooks of :mod:`meshkit.nodes.probe`, and that
becomes series
(:mod:`~meshkit.observability.metrics`), spans (:mod:`~meshkit.observability.tracing`)
and one log line (:mod:`~meshkit.observability.access_log`) when the request ends.

The package sits between the graph and the gateway: nodes report through those hooks
(re-exported here) and never import this package.
"""

from __future__ import annotations

from ..nodes.probe import NOOP, AttemptProbe, NodeProbe, RequestObserver, Tally

__all__ = ["NOOP", "AttemptProbe", "NodeProbe", "RequestObserver", "Tally"]
