"""Serving one `MicroService` on its own port."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..client import HttpClient
from ..nodes.base import MicroService
from ..orchestrator import ServiceOrchestrator
from .app import MAX_BODY, _errors, healthz, mount
from .dialect import json_response
from .route import Route


def _with_client(
    app: web.Application,
    services: list[MicroService],
    orchestrator: ServiceOrchestrator | None = None,
) -> None:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with HttpClient() as client:
            opened = []
            try:
                if orchestrator is not None:
                    orchestrator.attach(client)
                for service in services:
                    await service.open(client)
                    opened.append(service)
                yield
            finally:
                for service in reversed(opened):
                    await service.close()

    app.cleanup_ctx.append(lifecycle)


def build_service_app(
    service: MicroService, *, embeddings: MicroService | None = None, max_body: int = MAX_BODY
) -> web.Application:
    """Serve one in-process node in the OpenAI dialect.

    Mounts ``/v1/chat/completions``, ``/v1/models``, ``/v1/embeddings`` (answered by
    ``embeddings``, or by ``service`` itself when it has an ``embed`` method),
    ``/healthz`` and ``/readyz``, plus any routes added with ``service.add_route``.
    """
    orchestrator = ServiceOrchestrator(service.name).add(service)
    if embeddings is None and hasattr(service, "embed"):
        embeddings = service
    app = web.Application(client_max_size=max_body, middlewares=[_errors])
    mount(app, [Route("openai", orchestrator, embeddings=embeddings)])
    for path, handler, methods in service.routes:
        for method in methods:
            app.router.add_route(method, path, handler)

    async def readyz(request: web.Request) -> web.Response:
        ok = await service.ready(orchestrator.client)
        return json_response(
            {"status": "ready" if ok else "unavailable"}, status=200 if ok else 503
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    extra = [embeddings] if embeddings is not None and embeddings is not service else []
    _with_client(app, [service, *extra], orchestrator)
    return app


def build_routes_app(service: MicroService) -> web.Application:
    """An app with only ``service``'s own routes, ``/healthz``, and its lifecycle."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    mount(app, [])
    for path, handler, methods in service.routes:
        for method in methods:
            app.router.add_route(method, path, handler)
    app.router.add_get("/healthz", healthz)
    _with_client(app, [service])
    return app


def run_service(service: MicroService, *, handle_signals: bool = True) -> None:
    """Block serving ``service``'s routes on its host and port."""
    app = build_routes_app(service)
    web.run_app(
        app,
        host=service.host,
        port=service.port,
        handle_signals=handle_signals,
        handler_cancellation=True,
        print=None,
    )
