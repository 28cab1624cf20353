"""One request's record: what the graph, the nodes and the writer told it, and what it
makes of that at the end — the metrics, the spans, and the access log line.

Nothing is observed per chunk here: the writer counts chunks and keeps the few that
carry a finish reason or usage (:class:`~meshkit.observability.probe.Tally`), and the
record derives time to first token, the mean gap between chunks and the token counts
once, when the request ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, MutableMapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from ..errors import MeshError
from ..nodes.probe import AttemptProbe, NodeProbe, RequestObserver, Tally
from ..protocol.streams import is_stream
from ..protocol.types import Chunk, Completion, Usage
from . import access_log
from .metrics import Metrics
from .tracing import Tracing, answer_attributes, current_node, error_status, trace_id_of


class Observer(Protocol):
    """Where a record reports (the gateway's :class:`~meshkit.observability.observer.Observer`)."""

    metrics: Metrics | None
    tracing: Tracing | None


T = TypeVar("T")


def error_type(exc: BaseException) -> str:
    """A short, bounded name for a failure (a meshkit error's code, else the class)."""
    if isinstance(exc, MeshError):
        return exc.code
    return type(exc).__name__


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError):  # UpstreamTimeout is one too
        return "timeout"
    return "error"


#: A model's metric keys: of its time series, of its input and of its output tokens.
ModelKeys = tuple[tuple[str, str], tuple[str, str, str], tuple[str, str, str]]


class Labels:
    """One mounted resource's label values and the metric keys its requests update,
    made once when the app is built instead of as tuples on every request.

    Args:
        pipeline: Pipeline label (``other`` for unrouted paths).
        dialect: Dialect label.
        route: The route's path template (never the raw path).
    """

    __slots__ = (
        "_codes",
        "_models",
        "_nodes",
        "dialect",
        "pipeline",
        "pipeline_key",
        "route",
        "route_key",
    )

    def __init__(self, pipeline: str, dialect: str, route: str) -> None:
        self.pipeline = pipeline
        self.dialect = dialect
        self.route = route
        self.pipeline_key = (pipeline,)
        self.route_key = (pipeline, dialect)
        self._codes: dict[int, tuple[str, str, str]] = {}
        self._nodes: dict[str, tuple[str, str]] = {}
        self._models: dict[
            str, tuple[tuple[str, str], tuple[str, str, str], tuple[str, str, str]]
        ] = {}

    def code_key(self, status: int) -> tuple[str, str, str]:
        """The key of ``meshkit_requests`` for an answer with ``status``."""
        key = self._codes.get(status)
        if key is None:
            key = self._codes[status] = (self.pipeline, self.dialect, str(status))
        return key

    def model_keys(self, model: str) -> ModelKeys:
        """The keys for ``model`` (a metric label value): of the time series
        (``meshkit_ttft_seconds``, ``meshkit_tpot_seconds``) and of the input and output
        token counts."""
        keys = self._models.get(model)
        if keys is None:
            pipeline = self.pipeline
            keys = self._models[model] = (
                (pipeline, model),
                (pipeline, model, "input"),
                (pipeline, model, "output"),
            )
        return keys

    def node_key(self, node: str) -> tuple[str, str]:
        """The key of ``meshkit_node_duration_seconds`` for ``node``."""
        key = self._nodes.get(node)
        if key is None:
            key = self._nodes[node] = (self.pipeline, node)
        return key


class _Node(NodeProbe):
    """A node's run: its duration (to its stream's end) and its span."""

    __slots__ = ("name", "record", "span", "start", "stream", "token")

    def __init__(self, record: Record, name: str) -> None:
        self.record = record
        self.name = name
        self.stream = False
        self.span: Any = None
        self.token: Any = None
        self.start = 0.0

    def __enter__(self) -> _Node:
        self.start = time.perf_counter()
        record = self.record
        tracing = record.observer.tracing
        if tracing is not None and record.span is not None:
            self.span = tracing.child(
                record.span,
                f"node {self.name}",
                tracing.INTERNAL,
                {"meshkit.pipeline": record.pipeline, "meshkit.node": self.name},
            )
            self.token = current_node.set(self.span)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.token is not None:
            current_node.reset(self.token)
            self.token = None
        if exc is not None:
            self.end(exc)
        elif self.stream:
            record = self.record
            record.open_nodes = (*record.open_nodes, self)  # ends with the request
        else:
            self.end(None)

    def returned(self, result: T) -> T:
        self.stream = is_stream(result)
        return result

    def end(self, exc: BaseException | None) -> None:
        record = self.record
        metrics = record.observer.metrics
        if metrics is not None:
            metrics.node_duration.observe(
                record.labels.node_key(self.name), time.perf_counter() - self.start
            )
        if self.span is not None:
            if exc is not None:
                record.observer.tracing.fail(self.span, error_type(exc))  # type: ignore[union-attr]
            self.span.end()


class _Attempt(AttemptProbe):
    """One upstream attempt: its outcome (counted when the request ends) and its span."""

    __slots__ = ("model", "outcome", "replica", "service", "span", "start", "ttft")

    def __init__(self, service: str, replica: str, span: Any) -> None:
        self.service = service
        self.replica = replica
        self.span = span
        self.start = time.perf_counter()
        self.outcome: str | None = None  # None: still streaming
        self.ttft: float | None = None
        self.model: str | None = None

    def failed(self, exc: BaseException) -> None:
        self.outcome = _outcome(exc)
        span = self.span
        if span is not None:
            span.set_attribute("error.type", error_type(exc))
            span.set_status(error_status())
            span.end()
            self.span = None

    def answered(self) -> None:
        self.ttft = time.perf_counter() - self.start
        if self.span is not None:
            self.span.set_attribute("gen_ai.response.time_to_first_chunk", self.ttft)

    def completed(self, completion: T) -> T:
        self.outcome = "ok"
        if self.span is not None and isinstance(completion, Completion):
            answer_attributes(
                self.span, completion.model, [completion.finish_reason], completion.usage
            )
            self.span.end()
            self.span = None
        return completion


class Record(RequestObserver):
    """Everything known about one request, turned into observations by :meth:`finish`.

    Args:
        observer: The gateway's observer (metrics, tracing, labels).
        labels: The labels of the resource the request was routed to.
        rid: Request id (the caller's ``X-Request-ID`` or a new one).
        headers: The caller's headers (for ``traceparent``).
        method: HTTP method.
    """

    __slots__ = (
        "attempts",
        "dialect",
        "end",
        "ends",
        "error",
        "error_service",
        "first",
        "labels",
        "left",
        "model",
        "observer",
        "open_nodes",
        "parent",
        "path",
        "pipeline",
        "prepared",
        "response",
        "rid",
        "route",
        "sent",
        "span",
        "start",
        "stream",
    )

    def __init__(
        self,
        observer: Observer,
        labels: Labels,
        rid: str,
        headers: Mapping[str, str],
        method: str,
    ) -> None:
        self.start = time.perf_counter()
        self.observer = observer
        self.labels = labels
        self.pipeline = pipeline = labels.pipeline
        self.dialect = labels.dialect
        self.route = route = labels.route
        self.rid = rid
        self.model: str | None = None
        self.stream = False
        self.prepared = False
        self.left = False
        self.error: str | None = None
        self.error_service: str | None = None
        self.first: float | None = None
        self.end: float | None = None
        self.sent = 0
        # The two sequences below stay empty tuples until something goes in: fewer
        # objects made (and tracked by the cyclic collector) per request.
        self.ends: Sequence[Chunk] = ()
        #: How a streamed answer reached the caller ("spliced" or "pulled").
        self.path: str | None = None
        self.response: Completion | None = None
        self.open_nodes: Sequence[_Node] = ()
        self.attempts: list[_Attempt] = []
        tracing = observer.tracing
        self.parent: tuple[str, str | None] | None = None
        if tracing is not None:
            self.span = tracing.server(
                f"{method} {route}",
                headers,
                {
                    "http.request.method": method,
                    "http.route": route,
                    "meshkit.pipeline": pipeline,
                    "meshkit.request_id": rid,
                },
            )
        else:
            self.span = None
            traceparent = headers.get("traceparent")
            if traceparent is not None and trace_id_of(traceparent):
                self.parent = (traceparent, headers.get("tracestate"))

    # -- what the gateway tells it ----------------------------------------------------------

    def bind(self, model: str | None, stream: bool) -> Record:
        """The chat this request runs (its model and whether it streams)."""
        self.model = model
        self.stream = stream
        if self.span is not None and model:
            self.span.set_attribute("gen_ai.request.model", model)
        return self

    def streamed(self, tally: Tally | None) -> None:
        self.end = time.perf_counter()
        self.prepared = True
        if tally is not None:
            self.first = tally.first
            self.sent = tally.sent
            self.ends = tally.ends
            self.path = "spliced" if tally.spliced else "pulled"

    def completed(self, completion: Completion) -> None:
        self.response = completion

    def failed(self, err: BaseException) -> None:
        self.error = error_type(err)
        self.error_service = getattr(err, "service", None)

    def gone(self) -> None:
        self.left = True

    # -- what the nodes tell it -------------------------------------------------------------

    def node(self, name: str) -> NodeProbe:
        return _Node(self, name)

    def attempt(
        self,
        service: str,
        replica: str,
        url: str,
        model: str | None,
        headers: MutableMapping[str, str],
    ) -> AttemptProbe:
        tracing = self.observer.tracing
        span = None
        if tracing is not None:
            parent = current_node.get() or self.span
            where = urlsplit(url)  # hostname and port only: never a credential in the URL
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "chat",
                "server.address": where.hostname or "",
                "meshkit.service": service,
                "meshkit.replica": replica,
            }
            if where.port is not None:
                attributes["server.port"] = where.port
            if model:
                attributes["gen_ai.request.model"] = model
            span = tracing.child(
                parent, f"chat {model}" if model else "chat", tracing.CLIENT, attributes
            )
            tracing.inject(span, headers)
        elif self.parent is not None:
            headers["traceparent"] = self.parent[0]
            if self.parent[1]:
                headers["tracestate"] = self.parent[1]
        probe = _Attempt(service, replica, span)
        self.attempts.append(probe)
        return probe

    def retried(self, service: str) -> None:
        for attempt in reversed(self.attempts):
            if attempt.service == service and attempt.outcome in ("error", "timeout"):
                attempt.outcome = "retried"
                return

    # -- the end ------------------------------------------------------------------------------

    def finish(self, status: int) -> None:
        """The request is over with ``status``: observe it all, once."""
        now = time.perf_counter()
        duration = now - self.start
        metrics = self.observer.metrics
        # Usage and the chunks without text in one pass over what the writer kept (the
        # finish reasons and model only when a span wants them, below).
        response = self.response
        usage = None if response is None else response.usage
        bare = 0
        if response is None:
            for chunk in self.ends:
                if chunk.usage is not None:
                    usage = chunk.usage
                if not chunk.text:
                    bare += 1
        ttft = None
        tpot = None
        if self.stream and self.first is not None:
            ttft = self.first - self.start
            last = self.end or now
            if self.sent > 1 and last > self.first:
                tpot = (last - self.first) / (self.sent - 1)
        tokens_in = tokens_out = None
        if usage is not None:
            tokens_in = usage.prompt_tokens
            tokens_out = usage.completion_tokens
        elif response is None and self.sent:  # counted: output chunks that carried text
            tokens_out = max(0, self.sent - bare)
        # A node refers to its record: let go of them, or each stream would leave a
        # reference cycle (with its attempts and kept chunks) for the collector.
        open_nodes, self.open_nodes = self.open_nodes, ()
        for node in open_nodes:
            node.end(None)
        for attempt in self.attempts:
            if attempt.outcome is None:
                attempt.outcome = self._stream_outcome(attempt.service)
                if attempt.span is not None:
                    _, finishes, answer_model = self._answer()
                    answer_attributes(attempt.span, answer_model, finishes, usage)
                    if attempt.outcome != "ok":
                        self.observer.tracing.fail(attempt.span, self.error or "cancelled")  # type: ignore[union-attr]
                    attempt.span.end()
        if metrics is not None:
            pipeline = self.pipeline
            labels = self.labels
            metrics.requests.inc(labels.code_key(status))
            metrics.duration.observe(labels.route_key, duration)
            if self.left:
                metrics.disconnects.inc(labels.pipeline_key)
            if self.path is not None:
                metrics.streams.inc((pipeline, self.path))
            model = metrics.model(self.model)
            if self.model and model != self.model and 200 <= status < 300:
                metrics.learn_models((self.model,))  # the upstream answered: it knows it
                model = metrics.model(self.model)
            timed, inputs, outputs = labels.model_keys(model)
            if ttft is not None:
                metrics.ttft.observe(timed, ttft)
            if tpot is not None:
                metrics.tpot.observe(timed, tpot)
            if tokens_in:
                metrics.tokens.inc(inputs, tokens_in)
            if tokens_out:
                metrics.tokens.inc(outputs, tokens_out)
            for attempt in self.attempts:
                outcome = attempt.outcome or "ok"
                metrics.upstream.inc((attempt.service, attempt.replica, outcome))
        span = self.span
        trace_id = None
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500 or self.error:
                self.observer.tracing.fail(span, self.error or str(status))  # type: ignore[union-attr]
            if ttft is not None:
                span.set_attribute("gen_ai.response.time_to_first_chunk", ttft)
            span.end()
            trace_id = self.observer.tracing.trace_id(span)  # type: ignore[union-attr]
        elif self.parent is not None:
            trace_id = trace_id_of(self.parent[0])
        access_log.request(
            request_id=self.rid,
            trace_id=trace_id,
            pipeline=self.pipeline,
            dialect=self.dialect,
            route=self.route,
            model=self.model,
            status=status,
            stream=self.stream,
            ttft_ms=None if ttft is None else round(ttft * 1000, 3),
            duration_ms=round(duration * 1000, 3),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            error=self.error or (None if status < 400 else f"http_{status}"),
            disconnected=self.left,
        )

    def _answer(self) -> tuple[Usage | None, list[str | None], str | None]:
        """Usage, finish reasons and model of the answer, from what the writer kept."""
        response = self.response
        if response is not None:
            return response.usage, [response.finish_reason], response.model
        usage = None
        finishes: list[str | None] = []
        model = None
        for chunk in self.ends:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.finish_reason is not None:
                finishes.append(chunk.finish_reason)
            model = chunk.model or model
        return usage, finishes, model

    def _stream_outcome(self, service: str) -> str:
        """How an attempt that was streaming ended, from how the request ended."""
        if self.error is not None:
            if self.error_service in (None, service):  # None: the failure named no service
                return "timeout" if self.error.endswith("timeout") else "error"
            return "cancelled"
        if self.left or (self.stream and not self.prepared):
            return "cancelled"
        return "ok"
