"""The gateway's observer: a middleware that opens one record per request, ``/metrics``,
and the lifecycle of the tracer provider.

Labels are fixed when the app is built: each mounted resource maps to its route's
pipeline, dialect and path template. A request to a path nobody mounted is labelled
``other``; the health endpoints and ``/metrics`` itself are not counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiohttp import web

from ..client.replicas import ReplicaSet
from ..graph.orchestrator import ServiceOrchestrator
from ..nodes.base import MicroService
from ..nodes.llm import RemoteLLM
from ..nodes.probe import NOOP, RequestObserver
from .metrics import OTHER, Metrics
from .record import Labels, Record
from .tracing import Tracing, from_environment


class Route(Protocol):
    """What the observer reads of a mounted route (the gateway's ``Route`` has it)."""

    @property
    def prefix(self) -> str: ...
    @property
    def dialect(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def orchestrator(self) -> ServiceOrchestrator: ...
    def default_model(self) -> str | None: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Where the request's record is kept on the aiohttp request.
RECORD = web.RequestKey("meshkit.record", Record)
#: Where an error response keeps its error's code, for the access line.
ERROR_CODE = web.ResponseKey("meshkit.error_code", str)
#: The path Prometheus scrapes.
METRICS_PATH = "/metrics"
#: Paths never counted (probes and scrapes would drown the traffic they watch).
UNCOUNTED = frozenset({"/healthz", "/readyz", METRICS_PATH})

_UNROUTED = Labels(OTHER, OTHER, OTHER)


def observe(request: web.Request, model: str | None, stream: bool) -> RequestObserver:
    """The record of ``request`` (bound to the chat it runs), or :data:`NOOP` when the
    app has no observer (a handler mounted in someone else's app)."""
    if RECORD not in request:
        return NOOP
    return request[RECORD].bind(model, stream)


class Observer:
    """Metrics, traces and the access log of one gateway app.

    Args:
        metrics: Whether to keep Prometheus series and serve ``/metrics``.
        tracing: The tracer provider (None: no spans); by default from ``OTEL_*``.
        request_id: How a request's id is chosen (the caller's, or a new one).
    """

    def __init__(
        self,
        *,
        metrics: bool = True,
        tracing: Tracing | str | None = "environment",
        request_id: Callable[[web.Request], str],
    ) -> None:
        self.metrics = Metrics() if metrics else None
        self.tracing: Tracing | None = from_environment() if isinstance(tracing, str) else tracing
        self._request_id = request_id
        self._labels: dict[Any, Labels] = {}

    # -- building -----------------------------------------------------------------------

    def mount(self, app: web.Application, routes: Iterable[Route]) -> None:
        """Label every mounted resource with its route, add ``/metrics`` and the
        lifecycle; call it after the routes are mounted."""
        routes = list(routes)
        for resource in app.router.resources():
            path = resource.canonical
            best: Route | None = None
            for route in routes:
                marker = route.prefix + ("/v1/" if route.dialect == "openai" else "/api/")
                if path.startswith(marker) and (
                    best is None or len(route.prefix) > len(best.prefix)
                ):
                    best = route
            if best is not None:
                self._labels[resource] = Labels(best.orchestrator.name, best.dialect, path)
        if self.metrics is not None:
            self._prepare(routes)
            app.router.add_get(METRICS_PATH, self.scrape)
        app.cleanup_ctx.append(self._lifecycle)

    def labels_for(self, path: str) -> Labels:
        """The labels of the mounted resource at ``path`` (a server other than aiohttp
        serving that resource's requests labels them the same way)."""
        for resource, labels in self._labels.items():
            if resource.canonical == path:
                return labels
        return _UNROUTED

    def _prepare(self, routes: list[Route]) -> None:
        metrics = self.metrics
        assert metrics is not None
        pipelines: dict[str, list[str]] = {}
        services: dict[str, MicroService] = {}
        for route in routes:
            orchestrator = route.orchestrator
            pipelines[orchestrator.name] = list(orchestrator.services)
            services.update(orchestrator.services)
            metrics.know_models([route.model, route.default_model()])
        replica_sets: list[ReplicaSet] = []
        for service in services.values():
            if isinstance(service, RemoteLLM):
                replica_sets.append(service.replicas)
                metrics.know_models([service.model])
                fallback = service.fallback
                if isinstance(fallback, RemoteLLM) and fallback.name not in services:
                    replica_sets.append(fallback.replicas)
        metrics.watch_replicas(replica_sets)
        metrics.prepare(pipelines, {(r.orchestrator.name, r.dialect) for r in routes}, replica_sets)

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        yield
        tracing = self.tracing
        if tracing is not None:
            # Exporting what is pending may block on the network: not on the loop.
            await asyncio.get_running_loop().run_in_executor(None, tracing.shutdown)

    # -- serving --------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Open the request's record, time it, and close it however the request ends."""
        labels = self._labels.get(request.match_info.route.resource, _UNROUTED)
        if labels is _UNROUTED and request.path in UNCOUNTED:
            return await handler(request)
        rid = self._request_id(request)
        record = Record(self, labels, rid, request.headers, request.method)
        request[RECORD] = record
        gauge = None if self.metrics is None else self.metrics.in_flight
        key = labels.pipeline_key
        if gauge is not None:
            gauge.inc(key)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers.setdefault("X-Request-ID", record.rid)
                # Only an error carries a code: no failed look-up (a raised KeyError
                # inside the mapping) on every answer.
                code = response.get(ERROR_CODE) if status >= 400 else None
                if code is not None and record.error is None:
                    record.error = code
            return response
        except asyncio.CancelledError:
            # The caller left: 499 (as nginx logs it) unless the answer had begun.
            record.left = True
            status = 200 if record.prepared else 499
            raise
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if gauge is not None:
                gauge.dec(key)
            # Observed once the answer is on its way: aiohttp sends a returned response
            # after this middleware, in the same step of the task, so the metrics and
            # the access line (~20 µs) no longer delay it, and the duration runs to
            # the last byte as documented. The callback runs before anything the
            # caller can send next.
            asyncio.get_running_loop().call_soon(record.finish, status)

    async def scrape(self, request: web.Request) -> web.Response:
        """``GET /metrics``: the exposition, OpenMetrics when the scraper asks for it."""
        assert self.metrics is not None
        body, content_type = self.metrics.render(request.headers.get("Accept"))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response
