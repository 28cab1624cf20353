"""The playground at ``/ui``: a page to chat with any route, its graph, and live status.

The page and its scripts are static files shipped in the package (``gateway/ui/``):
plain JavaScript modules, no build step, nothing fetched from elsewhere, so the page
works offline. They hold no secret and load without a key. Everything the page *does*
goes through the gateway's own endpoints with the caller's key: the chat through the
route's OpenAI ``/v1/chat/completions``, the models through its ``/v1/models``, the
status panel through ``/metrics``, and the drawing through ``GET /ui/api/graph``, which
describes every route and pipeline (nodes, edges with their conditions, the final node)
from the same graph model that ``meshkit graph`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from ..graph.orchestrator import ServiceOrchestrator
from .dialect import json_response
from .route import Route

#: Where the page's files are, inside the installed package.
STATIC = Path(__file__).with_name("ui")

#: The URL the page is served under.
PREFIX = "/ui"

#: The page's API; unlike the page's files, it needs a key when keys are set.
API = PREFIX + "/api/"

# The page may only talk to the gateway it came from: no CDN, no remote fonts, nothing
# injected inline (the scripts are files, so 'self' is all they need).
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def is_public(path: str) -> bool:
    """Whether ``path`` is one of the page's own files, served without a key."""
    if path == PREFIX:
        return True
    return path.startswith(PREFIX + "/") and not path.startswith(API)


def _condition(edge: Any) -> str | None:
    """An edge's condition as ``meshkit graph`` labels it (None: always taken)."""
    label: str | None = edge.label or getattr(edge.when, "source", None)
    if label is None and edge.when is not None:
        label = "condition"
    return label


def describe(orchestrator: ServiceOrchestrator) -> dict[str, Any]:
    """One pipeline as JSON: nodes in run order, edges with conditions, the final node."""
    order = orchestrator.plan()
    return {
        "name": orchestrator.name,
        "nodes": [
            {
                "name": name,
                "type": orchestrator.services[name].service_type.value,
                "optional": orchestrator.is_optional(name),
                "entry": not orchestrator.predecessors(name),
            }
            for name in order
        ],
        "edges": [{"from": e.src, "to": e.dst, "when": _condition(e)} for e in orchestrator.edges],
        "sink": orchestrator.sink,
    }


def catalogue(
    routes: Iterable[Route], pipelines: Mapping[str, ServiceOrchestrator]
) -> dict[str, Any]:
    """Every mounted route and every pipeline, as ``GET /ui/api/graph`` answers."""
    return {
        "routes": [
            {
                "dialect": r.dialect,
                "prefix": r.prefix,
                "pipeline": r.orchestrator.name,
                "model": r.default_model(),
            }
            for r in routes
        ],
        "pipelines": {name: describe(p) for name, p in pipelines.items()},
    }


async def _index(request: web.Request) -> web.FileResponse:
    response = web.FileResponse(STATIC / "index.html")
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _to_index(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect(PREFIX + "/")


def mount(
    app: web.Application, routes: list[Route], pipelines: Mapping[str, ServiceOrchestrator]
) -> None:
    """Serve the playground under ``/ui`` for ``routes`` over ``pipelines``."""
    body = catalogue(routes, pipelines)

    async def graph(request: web.Request) -> web.Response:
        return json_response(body)

    router = app.router
    router.add_get(PREFIX, _to_index)
    router.add_get(PREFIX + "/", _index)
    router.add_get(API + "graph", graph)
    # After the API routes: the static resource would otherwise claim /ui/api/...
    router.add_static(PREFIX, STATIC, append_version=False)
