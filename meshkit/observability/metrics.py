"""Prometheus series of one gateway, in a registry of its own.

Every series is declared once per :class:`Metrics` (one per app, never a global
registry), so two gateways in one process — or two tests — never share a count. Label
values come from the configuration only: pipeline, node, service and replica names from
the YAML, dialects from the routes, models the YAML names or an upstream answered for
(at most :data:`MAX_MODELS` of those); anything else is :data:`OTHER`.

A request updates plain numbers — a dictionary entry per counter, a bucket found by
bisection per histogram — with no lock (everything runs on the event loop) and no
per-call validation; prometheus-client turns them into metric families only when
scraped, and renders the exposition (the text format, or OpenMetrics when asked). That
keeps a request's whole metric work to a few microseconds.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..client.replicas import ReplicaSet
from ..nodes.probe import OUTCOMES

#: The label value of anything the configuration does not name.
OTHER = "other"

#: How a streamed answer can reach the caller, the values of the ``path`` label.
STREAM_PATHS = ("spliced", "pulled")

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


class Series:
    """One counter or gauge family: a number per tuple of label values."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], kind: str) -> None:
        self.name = name
        self.doc = doc
        self.labels = tuple(labels)
        self.kind = kind
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        """Add ``amount`` to the series ``key`` (label values, in order)."""
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def dec(self, key: tuple[str, ...]) -> None:
        """Take one from the series ``key`` (gauges)."""
        self.values[key] -= 1.0

    def get(self, key: tuple[str, ...]) -> float:
        """The value of the series ``key`` (0 when never touched)."""
        return self.values.get(key, 0.0)

    def family(self) -> Metric:
        family: Metric
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        else:
            family = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(key, value)
        return family


class Buckets:
    """One histogram family: per tuple of label values, a count per bucket and a sum."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], bounds: Sequence[float]):
        self.name = name
        self.doc = doc
        self.labels = tuple(labels)
        self.bounds = tuple(bounds)
        self.series: dict[tuple[str, ...], list[float]] = {}
        self._les = [repr(float(b)) for b in self.bounds] + ["+Inf"]

    def observe(self, key: tuple[str, ...], value: float) -> None:
        """Count ``value`` in the series ``key``."""
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: "le"
        counts[-1] += value

    def touch(self, key: tuple[str, ...]) -> None:
        """Make the series ``key`` exist (zeros) before its first observation."""
        if key not in self.series:
            self.series[key] = [0.0] * (len(self.bounds) + 2)

    def count(self, key: tuple[str, ...]) -> float:
        """Observations in the series ``key``."""
        return sum(self.series.get(key, [0.0])[:-1])

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, counts in self.series.items():
            running = 0.0
            buckets = []
            for le, n in zip(self._les, counts, strict=False):
                running += n
                buckets.append((le, running))
            family.add_metric(list(key), buckets, counts[-1])
        return family


class Metrics:
    """The gateway's series (see the README's table) in ``registry``.

    Args:
        registry: Where the series are registered; a fresh one by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Series(
            "meshkit_requests",
            "Requests answered, by HTTP status.",
            ("pipeline", "dialect", "code"),
            "counter",
        )
        self.in_flight = Series(
            "meshkit_requests_in_flight",
            "Requests being served now (a stream until its last byte).",
            ("pipeline",),
            "gauge",
        )
        self.duration = Buckets(
            "meshkit_request_duration_seconds",
            "Arrival to last byte.",
            ("pipeline", "dialect"),
            DURATION_BUCKETS,
        )
        self.ttft = Buckets(
            "meshkit_time_to_first_token_seconds",
            "Arrival to the first byte of a streamed answer's body.",
            ("pipeline", "model"),
            TTFT_BUCKETS,
        )
        self.tpot = Buckets(
            "meshkit_time_per_output_token_seconds",
            "Mean gap between output chunks, one observation per stream.",
            ("pipeline", "model"),
            TPOT_BUCKETS,
        )
        self.tokens = Series(
            "meshkit_tokens",
            "Tokens, from the upstream's usage when reported, else counted.",
            ("pipeline", "model", "type"),
            "counter",
        )
        self.node_duration = Buckets(
            "meshkit_node_duration_seconds",
            "Each node's run; a streaming node's lasts to its stream's end.",
            ("pipeline", "node"),
            DURATION_BUCKETS,
        )
        self.upstream = Series(
            "meshkit_upstream_requests",
            "Upstream attempts by outcome (ok, error, timeout, retried, cancelled).",
            ("service", "replica", "outcome"),
            "counter",
        )
        self.disconnects = Series(
            "meshkit_client_disconnects",
            "Callers that left before the end of their answer.",
            ("pipeline",),
            "counter",
        )
        self.streams = Series(
            "meshkit_streams",
            "Streamed answers by how they reached the caller: spliced (written from the "
            "upstream's callbacks) or pulled (chunk by chunk through the graph).",
            ("pipeline", "path"),
            "counter",
        )
        self.models: set[str] = set()
        self._learned = 0
        self._replicas: list[ReplicaSet] = []
        self.registry.register(self)

    # -- labels -------------------------------------------------------------------------

    def know_models(self, names: Iterable[str | None]) -> None:
        """Models named by the configuration (always labelled by name)."""
        self.models.update(n for n in names if n)

    def learn_models(self, names: Iterable[str]) -> None:
        """Models an upstream answered for, up to :data:`MAX_MODELS` of them in all."""
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
        self._replicas.extend(sets)

    def prepare(
        self,
        pipelines: Mapping[str, Iterable[str]],
        dialects: Iterable[tuple[str, str]],
        services: Iterable[ReplicaSet],
    ) -> None:
        """Create the series every deployment has, so their zeros are scraped from the
        start (rates and ``increase()`` then count the first request too)."""
        for pipeline, nodes in pipelines.items():
            self.in_flight.inc((pipeline,), 0.0)
            self.disconnects.inc((pipeline,), 0.0)
            for path in STREAM_PATHS:
                self.streams.inc((pipeline, path), 0.0)
            for node in nodes:
                self.node_duration.touch((pipeline, node))
        for pipeline, dialect in dialects:
            self.duration.touch((pipeline, dialect))
        for replicas in services:
            for replica in replicas:
                for outcome in OUTCOMES:
                    self.upstream.inc((replicas.service, replica.name, outcome), 0.0)

    # -- exposition ---------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (for the registry's duplicate check)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """Every family with its samples, read now."""
        for series in (self.requests, self.in_flight):
            yield series.family()
        for buckets in (self.duration, self.ttft, self.tpot):
            yield buckets.family()
        yield self.tokens.family()
        yield self.node_duration.family()
        yield self.upstream.family()
        yield self._up()
        yield self.disconnects.family()
        yield self.streams.family()

    def _up(self) -> Metric:
        """``meshkit_upstream_up``, read from the replicas' state when scraped (no work
        per request, and never stale)."""
        family = GaugeMetricFamily(
            "meshkit_upstream_up",
            "1 while a replica takes traffic, 0 while out or its breaker is open.",
            labels=("service", "replica"),
        )
        for replicas in self._replicas:
            now = replicas.clock()
            for replica in replicas:
                up = 0.0 if replica.state(now) == "open" else 1.0
                family.add_metric([replicas.service, replica.name], up)
        return family

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for a scrape that sent ``Accept: accept`` (OpenMetrics when
        asked for, else the Prometheus text format), and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
