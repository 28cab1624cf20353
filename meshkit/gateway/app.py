"""The gateway `Application`: dialect routes over a mesh, health, and errors in shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import structlog
from aiohttp import web

from ..errors import BadRequest, InternalError, MeshError, MethodNotAllowed, NotFound
from ..graph.mesh import Mesh
from ..graph.orchestrator import ServiceOrchestrator
from ..observability.observer import Observer
from . import ollama, openai
from .admission import Admission
from .auth import ApiKeys
from .dialect import assign_request_id, dialect_for, json_response, render, too_large
from .exchange import Streaming
from .fastpath import GATE, Gate
from .route import Route
from .ui import mount as mount_ui
from .web_exchange import STREAMING, to_response

log = structlog.get_logger(__name__)

MESH = web.AppKey("meshkit.mesh", Mesh)
ROUTES = web.AppKey("meshkit.routes", list[Route])
ADMISSION = web.AppKey("meshkit.admission", Admission)

#: Default cap on request bodies; larger ones get a 413 in the caller's dialect.
MAX_BODY = 8 * 1024 * 1024

_MOUNT = {"openai": openai.add_routes, "ollama": ollama.add_routes}


def _routes(app: web.Application) -> list[Route]:
    return app[ROUTES] if ROUTES in app else []


def _render(err: MeshError, dialect: str) -> web.Response:
    return to_response(render(err, dialect))


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn aiohttp's own 4xx and any crash into JSON in the caller's dialect."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            err: MeshError = NotFound(f"no route for {request.method} {request.path}")
        elif exc.status == 405:
            err = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        elif exc.status == 413:
            err = too_large(request.app._client_max_size)
        else:
            err = BadRequest(exc.reason)
            err.status = exc.status
        response = _render(err, dialect_for(request.path, _routes(request.app)))
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "")
        return response
    except MeshError as err:
        return _render(err, dialect_for(request.path, _routes(request.app)))
    except Exception:
        # A bug, not a refusal: logged in full, answered as a 500 in the caller's dialect
        # (the lean intake answers the same).
        log.exception("meshkit.gateway.crashed", path=request.path)
        crash = InternalError("internal error in the gateway")
        return _render(crash, dialect_for(request.path, _routes(request.app)))


def mount(app: web.Application, routes: list[Route]) -> None:
    """Add every route's dialect endpoints and the health endpoints to ``app``."""
    app[ROUTES] = routes
    for route in routes:
        _MOUNT[route.dialect](app.router, route)


async def healthz(request: web.Request) -> web.Response:
    """Process is alive; never touches upstreams or credentials."""
    return json_response({"status": "ok"})


def build_app(
    mesh: Mesh,
    *,
    max_body: int | None = None,
    api_keys: Sequence[str] | None = None,
    max_inflight: int | None = None,
    shutdown_grace: float | None = None,
    metrics: bool | None = None,
) -> web.Application:
    """The gateway for a loaded mesh, as its ``gateway`` section declares.

    With no routes declared and a single pipeline, both dialects are mounted at ``/``.
    Keyword arguments override the spec's ``max_body``, ``api_keys``, ``max_inflight``,
    ``shutdown_grace`` and ``metrics``. On shutdown the app refuses new requests and lets those in
    flight finish for ``shutdown_grace`` seconds before ending the streams still open
    with a final error event.
    """
    gw = mesh.spec.gateway
    keys = ApiKeys(gw.api_keys if api_keys is None else api_keys)
    admission = Admission(gw.max_inflight if max_inflight is None else max_inflight)
    grace = gw.shutdown_grace if shutdown_grace is None else shutdown_grace
    observer = Observer(
        metrics=gw.metrics if metrics is None else metrics, request_id=assign_request_id
    )
    middlewares = [
        observer.middleware,
        _errors,
        *([keys.middleware] if keys else []),
        admission.middleware,
    ]
    limit = gw.max_body if max_body is None else max_body
    app = web.Application(client_max_size=limit, middlewares=middlewares)
    app[MESH] = mesh
    app[ADMISSION] = admission
    streaming = app[STREAMING] = Streaming(gw.send_timeout, gw.splice)
    specs = list(mesh.spec.gateway.routes)
    routes: list[Route] = []
    if specs:
        for spec in specs:
            embeddings = mesh.services[spec.embeddings] if spec.embeddings else None
            routes.append(
                Route(
                    spec.dialect, mesh.pipelines[spec.pipeline], spec.prefix, spec.model, embeddings
                )
            )
    elif len(mesh.pipelines) == 1:
        (only,) = mesh.pipelines.values()
        routes = [Route("openai", only), Route("ollama", only)]
    mount(app, routes)
    observer.mount(app, routes)
    if gw.intake == "lean":
        app[GATE] = Gate(
            observer,
            routes,
            (),
            limit,
            streaming,
            keys if keys else None,
            admission,
            tuple(middlewares),
        )

    async def readyz(request: web.Request) -> web.Response:
        # Ready when every required service can take a request now; an optional
        # service's state is reported but does not hold the gateway back.
        status = await mesh.ready()
        ok = all(up for name, up in status.items() if not mesh.spec.services[name].optional)
        return json_response(
            {"status": "ready" if ok else "unavailable", "services": status},
            status=200 if ok else 503,
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    mount_ui(app, routes, mesh.pipelines)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await mesh.open()
        log.info(
            "meshkit.gateway.open",
            pipelines=sorted(mesh.pipelines),
            routes=[f"{r.dialect}:{r.prefix or '/'}" for r in routes],
            auth=bool(keys),
            max_inflight=admission.limit,
        )
        yield
        await mesh.close()

    def abort() -> int:
        try:
            return mesh.client.abort_streams()
        except RuntimeError:  # the mesh never opened
            return 0

    async def drain(app: web.Application) -> None:
        await admission.drain(grace, abort)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(drain)
    return app


def pipeline_handler(
    orchestrator: ServiceOrchestrator,
    *,
    dialect: str = "openai",
    endpoint: str = "chat",
    model: str | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler that answers one dialect endpoint from ``orchestrator``.

    Args:
        orchestrator: The pipeline; it must be open when requests arrive.
        dialect: ``"openai"`` or ``"ollama"``.
        endpoint: ``"chat"``, or ``"generate"`` for Ollama's prompt endpoint.
        model: Default model for requests that name none.
    """
    route = Route(dialect, orchestrator, model=model)
    if dialect == "openai" and endpoint == "chat":
        return openai.chat_handler(route)
    if dialect == "ollama" and endpoint == "chat":
        return ollama.chat_handler(route)
    if dialect == "ollama" and endpoint == "generate":
        return ollama.generate_handler(route)
    raise ValueError(f"no {endpoint!r} endpoint in the {dialect!r} dialect")
