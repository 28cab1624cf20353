"""`App`: serving pipelines built in code on one port.

A node is only a node; this is the piece that serves. Mount each pipeline in the
dialects it should speak, then run the app (or hand :meth:`App.application` to aiohttp's
test client or runner). The app owns the lifecycle: one outbound client for every
pipeline, each node opened before the first request and closed after the last.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Self

from aiohttp import web

from ..client.http import HttpClient
from ..graph.orchestrator import ServiceOrchestrator
from ..nodes.base import MicroService
from ..observability.observer import Observer
from . import ollama, openai
from .app import MAX_BODY, _errors, healthz, mount
from .dialect import Handler, assign_request_id, json_response
from .exchange import Streaming
from .fastpath import GATE, Gate
from .intake_serve import run_app
from .route import Route

DIALECTS = ("openai", "ollama")


class App:
    """Pipelines served on one port in the OpenAI and/or Ollama dialects.

    Example:
        >>> pipeline = ServiceOrchestrator("chat").add(RemoteLLM("llm", endpoint=url))
        >>> App(port=8000).mount(pipeline).mount(pipeline, dialect="ollama").run()

    Args:
        host: Interface to bind.
        port: Port to bind.
        max_body: Largest request body accepted (a 413 beyond it).
        intake: ``"lean"``: the chat endpoints are read by meshkit's own intake when the
            app is served by :meth:`run` or :func:`meshkit.testing.serve_app`;
            ``"aiohttp"``: aiohttp reads every request.
    """

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 8008,
        max_body: int = MAX_BODY,
        intake: str = "lean",
    ):
        if intake not in ("lean", "aiohttp"):
            raise ValueError(f"intake must be 'lean' or 'aiohttp', not {intake!r}")
        self.host = host
        self.port = port
        self.max_body = max_body
        self.intake = intake
        self._routes: list[Route] = []
        self._paths: list[tuple[str, Handler]] = []
        self._chat_paths: list[tuple[str, Route]] = []

    def mount(
        self,
        pipeline: ServiceOrchestrator | MicroService,
        *,
        dialect: str = "openai",
        prefix: str = "",
        model: str | None = None,
        embeddings: MicroService | None = None,
        chat_path: str | None = None,
    ) -> Self:
        """Serve ``pipeline`` (or a single node) in ``dialect`` under ``prefix``.

        Args:
            pipeline: The graph requests run through; a lone node is a one-node graph.
            dialect: ``"openai"`` (``/v1/chat/completions``, ``/v1/models``,
                ``/v1/embeddings``) or ``"ollama"`` (``/api/generate``, ``/api/chat``,
                ``/api/tags``).
            prefix: Path prefix of the dialect's endpoints.
            model: Default model for requests that name none.
            embeddings: The node answering the embedding endpoints, if any.
            chat_path: One more path answering the dialect's chat endpoint (the seed's
                ``/v1/example-service``).
        """
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
        if isinstance(pipeline, MicroService):
            pipeline = ServiceOrchestrator(pipeline.name).add(pipeline)
        route = Route(dialect, pipeline, prefix, model, embeddings)
        self._routes.append(route)
        if chat_path is not None:
            chat = openai.chat_handler if dialect == "openai" else ollama.chat_handler
            self._paths.append((chat_path, chat(route)))
            self._chat_paths.append((chat_path, route))
        return self

    def application(self) -> web.Application:
        """The aiohttp application serving every mount, ``/healthz``, ``/readyz`` and
        ``/metrics``."""
        routes = list(self._routes)
        observer = Observer(request_id=assign_request_id)
        middlewares = (observer.middleware, _errors)
        app = web.Application(client_max_size=self.max_body, middlewares=middlewares)
        mount(app, routes)
        observer.mount(app, routes)
        for path, handler in self._paths:
            app.router.add_post(path, handler)
        if self.intake == "lean":
            app[GATE] = Gate(
                observer,
                routes,
                tuple(self._chat_paths),
                self.max_body,
                Streaming(),
                None,
                None,
                middlewares,
            )
        pipelines = list({id(r.orchestrator): r.orchestrator for r in routes}.values())
        extra = list(
            {
                id(r.embeddings): r.embeddings
                for r in routes
                if r.embeddings is not None
                and all(r.embeddings not in p.services.values() for p in pipelines)
            }.values()
        )

        async def readyz(request: web.Request) -> web.Response:
            client = pipelines[0].client if pipelines else None
            status: dict[str, bool] = {}
            if client is not None:
                for pipeline in pipelines:
                    for node in pipeline.services.values():
                        status[node.name] = await node.ready(client)
            ok = all(status.values())
            return json_response(
                {"status": "ready" if ok else "unavailable", "services": status},
                status=200 if ok else 503,
            )

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            async with HttpClient() as client:
                opened: list[ServiceOrchestrator | MicroService] = []
                try:
                    for pipeline in pipelines:
                        await pipeline.open(client)
                        opened.append(pipeline)
                    for node in extra:
                        await node.open(client)
                        opened.append(node)
                    yield
                finally:
                    for item in reversed(opened):
                        await item.close()

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.cleanup_ctx.append(lifecycle)
        return app

    def run(self, *, handle_signals: bool = True) -> None:
        """Serve until interrupted (blocking)."""
        run_app(
            self.application(),
            host=self.host,
            port=self.port,
            handle_signals=handle_signals,
            handler_cancellation=True,
        )


def build_service_app(
    service: MicroService, *, embeddings: MicroService | None = None, max_body: int = MAX_BODY
) -> web.Application:
    """One in-process node served in the OpenAI dialect (``/v1/embeddings`` answered by
    ``embeddings``, or by the node itself when it can embed)."""
    if embeddings is None and hasattr(service, "embed"):
        embeddings = service
    return App(max_body=max_body).mount(service, embeddings=embeddings).application()
