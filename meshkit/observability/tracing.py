"""OpenTelemetry traces, configured only by the standard ``OTEL_*`` environment.

With none of ``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set (or ``OTEL_TRACES_EXPORTER=none``, or
``OTEL_SDK_DISABLED=true``), :func:`from_environment` returns None: the SDK is not even
imported, no span is made, and the caller's ``traceparent`` is only passed on upstream.
Otherwise a tracer provider of this gateway's own (not the process-global one) exports
through a batch processor to the exporters named — ``otlp`` (HTTP/protobuf, or gRPC when
``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` and its exporter is installed) and ``console`` —
which read their endpoint, headers, timeout and compression from the environment too.
The SDK comes with the ``meshkit[otel]`` extra.
"""

from __future__ import annotations

import contextvars
import importlib.metadata
import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from ..protocol.types import Usage

log = structlog.get_logger(__name__)

#: The node span of the running node, parent of the upstream attempts made inside it.
#: (Each graph node runs in its own task, so parallel nodes never see each other's.)
current_node: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "meshkit_node_span", default=None
)

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id in a W3C ``traceparent`` header (None when absent or malformed)."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


def wanted(env: Mapping[str, str]) -> list[str]:
    """The span exporters the environment asks for (empty: tracing is off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = env.get("OTEL_TRACES_EXPORTER")
    if names is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    return [n.strip().lower() for n in names.split(",") if n.strip() and n.strip() != "none"]


class Tracing:
    """A tracer provider of one gateway and the few calls the record makes on it.

    Args:
        provider: An OpenTelemetry SDK ``TracerProvider`` with its processors.
    """

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        try:
            version = importlib.metadata.version("meshkit")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source tree
            version = None
        self.tracer = provider.get_tracer("meshkit", version)
        self._propagator = TraceContextTextMapPropagator()
        self._in = trace.set_span_in_context
        self.SERVER = trace.SpanKind.SERVER
        self.CLIENT = trace.SpanKind.CLIENT
        self.INTERNAL = trace.SpanKind.INTERNAL
        self._error = trace.Status(trace.StatusCode.ERROR)

    def server(self, name: str, headers: Mapping[str, str], attributes: dict[str, Any]) -> Any:
        """The SERVER span of a request, a child of the caller's ``traceparent`` if any."""
        parent = self._propagator.extract(headers) if "traceparent" in headers else None
        return self.tracer.start_span(name, context=parent, kind=self.SERVER, attributes=attributes)

    def child(self, parent: Any, name: str, kind: Any, attributes: dict[str, Any]) -> Any:
        """A span under ``parent``."""
        return self.tracer.start_span(
            name, context=self._in(parent), kind=kind, attributes=attributes
        )

    def inject(self, span: Any, headers: MutableMapping[str, str]) -> None:
        """Add ``span``'s ``traceparent`` (and ``tracestate``) to outbound ``headers``."""
        self._propagator.inject(headers, context=self._in(span))

    def fail(self, span: Any, error_type: str) -> None:
        """Mark ``span`` failed with ``error.type``."""
        span.set_attribute("error.type", error_type)
        span.set_status(self._error)

    @staticmethod
    def trace_id(span: Any) -> str:
        """``span``'s trace id in hex."""
        return f"{span.get_span_context().trace_id:032x}"

    def shutdown(self) -> None:
        """Export what is pending and stop (blocking: run it in an executor)."""
        self.provider.shutdown()


def from_environment(env: Mapping[str, str] | None = None) -> Tracing | None:
    """Tracing as the ``OTEL_*`` environment configures it, or None when it asks for none
    (or the ``otel`` extra is missing, which is logged)."""
    env = os.environ if env is None else env
    names = wanted(env)
    if not names:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "meshkit.tracing.unavailable",
            reason="OTEL_* asks for traces but the SDK is missing: pip install 'meshkit[otel]'",
        )
        return None
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "meshkit"}))
    provider = TracerProvider(resource=resource)
    added = []
    for name in names:
        exporter = _exporter(name, env)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
            added.append(name)
    if not added:
        provider.shutdown()
        return None
    log.info(
        "meshkit.tracing.on",
        exporters=added,
        service=resource.attributes.get("service.name"),
    )
    return Tracing(provider)


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("meshkit.tracing.unknown_exporter", exporter=name)
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        else:
            log.warning("meshkit.tracing.unknown_protocol", protocol=protocol)
            return None
    except ImportError:
        log.warning(
            "meshkit.tracing.unavailable",
            reason=f"no OTLP exporter for {protocol} installed: pip install 'meshkit[otel]'",
        )
        return None
    return OTLPSpanExporter()


def error_status() -> Any:
    """OpenTelemetry's error status (imported only when a span fails)."""
    from opentelemetry.trace import Status, StatusCode

    return Status(StatusCode.ERROR)


def answer_attributes(
    span: Any, model: str | None, finishes: list[str | None], usage: Usage | None
) -> None:
    """The GenAI attributes of an answer on ``span``."""
    if model:
        span.set_attribute("gen_ai.response.model", model)
    reasons = [f for f in finishes if f]
    if reasons:
        span.set_attribute("gen_ai.response.finish_reasons", reasons)
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
