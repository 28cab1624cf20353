"""Prometheus series of one gateway, in a registry of its own.

Every series is declared once per :class:`Metrics` (one per app, never a global
registry), so two gateways in one process — or two tests — never share a count. Label
values come from the configuration only: pipeline, node, service and replica names from
the YAML, dialects from the routes, models from the YAML and the upstreams' model lists
(:meth:`Metrics.learn_models`); anything else is :data:`OTHER`. Label children are
resolved once and cached, so a request costs a few dictionary look-ups and increments.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ..resilience.replicas import ReplicaSet
from .probe import OUTCOMES

#: The label value of anything the configuration does not name.
OTHER = "other"

#: Most model names learned from upstream model lists (a bound on cardinality).
MAX_MODELS = 64

#: Arrival to last byte: LLM answers take from milliseconds to minutes.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
    300.0, 600.0,
)  # fmt: skip
#: Time to first token: sub-millisecond (a cache, a fake) to a model loading for a minute.
TTFT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)  # fmt: skip
#: Mean gap between output chunks: 10k tokens/s down to one token every few seconds.
TPOT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class Metrics:
    """The gateway's series (see the README's table) in ``registry``.

    Args:
        registry: Where the series live; a fresh one by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "meshkit_requests_total",
            "Requests answered, by HTTP status.",
            ("pipeline", "dialect", "code"),
            registry=r,
        )
        self.in_flight = Gauge(
            "meshkit_requests_in_flight",
            "Requests being served now (a stream until its last byte).",
            ("pipeline",),
            registry=r,
        )
        self.duration = Histogram(
            "meshkit_request_duration_seconds",
            "Arrival to last byte.",
            ("pipeline", "dialect"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "meshkit_time_to_first_token_seconds",
            "Arrival to the first byte of a streamed answer's body.",
            ("pipeline", "model"),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "meshkit_time_per_output_token_seconds",
            "Mean gap between output chunks, one observation per stream.",
            ("pipeline", "model"),
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "meshkit_tokens_total",
            "Tokens, from the upstream's usage when reported, else counted.",
            ("pipeline", "model", "type"),
            registry=r,
        )
        self.node_duration = Histogram(
            "meshkit_node_duration_seconds",
            "Each node's run; a streaming node's lasts to its stream's end.",
            ("pipeline", "node"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream = Counter(
            "meshkit_upstream_requests_total",
            "Upstream attempts by outcome (ok, error, timeout, retried, cancelled).",
            ("service", "replica", "outcome"),
            registry=r,
        )
        self.disconnects = Counter(
            "meshkit_client_disconnects_total",
            "Callers that left before the end of their answer.",
            ("pipeline",),
            registry=r,
        )
        self.models: set[str] = set()
        self._learned = 0
        self._up = _UpCollector()
        r.register(self._up)
        self._cache: dict[tuple[Any, ...], Any] = {}

    # -- labels -------------------------------------------------------------------------

    def know_models(self, names: Iterable[str | None]) -> None:
        """Models named by the configuration (always labelled by name)."""
        self.models.update(n for n in names if n)

    def learn_models(self, names: Iterable[str]) -> None:
        """Models an upstream lists, up to :data:`MAX_MODELS` of them in all."""
        for name in names:
            if name in self.models:
                continue
            if self._learned >= MAX_MODELS:
                return
            self.models.add(name)
            self._learned += 1

    def model(self, name: str | None) -> str:
        """The label for a request's model."""
        return name if name is not None and name in self.models else OTHER

    def watch_replicas(self, sets: Iterable[ReplicaSet]) -> None:
        """Report ``meshkit_upstream_up`` for these services' replicas at each scrape."""
        self._up.sets.extend(sets)

    def prepare(
        self,
        pipelines: Mapping[str, Iterable[str]],
        dialects: Iterable[tuple[str, str]],
        services: Iterable[ReplicaSet],
    ) -> None:
        """Create the children every deployment has, so their zeros are scraped from the
        start (rates and ``increase()`` then count the first request too)."""
        for pipeline, nodes in pipelines.items():
            self.in_flight.labels(pipeline)
            self.disconnects.labels(pipeline)
            for node in nodes:
                self.node_duration.labels(pipeline, node)
        for pipeline, dialect in dialects:
            self.duration.labels(pipeline, dialect)
        for replicas in services:
            for replica in replicas:
                for outcome in OUTCOMES:
                    self.upstream.labels(replicas.service, replica.name, outcome)

    def child(self, family: Any, *labels: str) -> Any:
        """``family.labels(*labels)``, resolved once."""
        key = (id(family), *labels)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = family.labels(*labels)
        return found

    # -- exposition ---------------------------------------------------------------------

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for a scrape that sent ``Accept: accept`` (OpenMetrics when
        asked for, else the Prometheus text format), and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _UpCollector:
    """``meshkit_upstream_up``, read from the replicas' state when scraped (no work per
    request, and never stale)."""

    def __init__(self) -> None:
        self.sets: list[ReplicaSet] = []

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for replicas in self.sets:
            now = replicas.clock()
            for replica in replicas:
                up = 0.0 if replica.state(now) == "open" else 1.0
                family.add_metric([replicas.service, replica.name], up)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "meshkit_upstream_up",
            "1 while a replica takes traffic, 0 while out or its breaker is open.",
            labels=("service", "replica"),
        )
