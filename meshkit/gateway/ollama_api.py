"""The Ollama endpoints clients call besides chat: version, show, ps and embeddings.

Tools built for Ollama (editors, chat front-ends, the official clients) ask
``/api/version`` and ``/api/show`` before they chat and ``/api/embed`` for retrieval.
meshkit answers them in Ollama's shape for the models a route serves; a model it does
not serve, or embeddings on a route without an embedding service, get Ollama's 404.
meshkit keeps no model on a timer, so ``/api/ps`` lists every served model with no
expiry and no memory figures of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..errors import BadRequest, MeshError, NotFound
from ..protocol import fields as v
from . import embeddings as emb
from .dialect import json_response, request_id
from .route import Route

#: The Ollama API level meshkit speaks (clients compare it to enable features).
OLLAMA_VERSION = "0.12.0"

#: Far future, as Ollama reports a model loaded with ``keep_alive: -1``.
_NEVER = "2318-01-01T00:00:00Z"

ErrorResponse = Callable[[MeshError], web.Response]


def _stamp() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat().replace("+00:00", "Z")


def _details() -> dict[str, Any]:
    # meshkit does not know the weights behind an upstream; empty is Ollama's "unknown".
    return {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }


def _model_of(obj: dict[str, Any]) -> str:
    """The ``model`` of a body (older clients send ``name``)."""
    model = v.opt_str(obj, "model") or v.opt_str(obj, "name")
    if not model:
        raise BadRequest("'model' is required", param="model")
    return model


async def _chat_models(route: Route) -> Sequence[str]:
    return await route.model_names()


def _embedding_model(route: Route) -> str | None:
    service = route.embeddings
    model = getattr(service, "model", None) if service is not None else None
    return str(model) if model else None


def _not_found(model: str) -> NotFound:
    return NotFound(f"model '{model}' not found", param="model")


def _embed_options(obj: dict[str, Any]) -> None:
    """Refuse what meshkit's embedders cannot honour, naming the field."""
    if obj.get("truncate") is False:
        raise BadRequest(
            "'truncate': false is not supported: meshkit's embedders truncate long inputs",
            param="truncate",
        )
    if v.opt_object(obj, "options"):
        raise BadRequest("'options' is not supported for embeddings", param="options")
    if obj.get("dimensions") is not None:
        raise BadRequest("'dimensions' is not supported by meshkit", param="dimensions")
    # keep_alive is accepted: meshkit keeps its models loaded, so there is nothing to do.


def add_routes(router: web.UrlDispatcher, route: Route, error_response: ErrorResponse) -> None:
    """Mount ``/api/version``, ``/api/show``, ``/api/ps``, ``/api/embed`` and
    ``/api/embeddings`` for ``route``."""
    prefix = route.prefix

    async def version(request: web.Request) -> web.Response:
        return json_response({"version": OLLAMA_VERSION})

    async def show(request: web.Request) -> web.Response:
        try:
            model = _model_of(v.parse_object(await request.read()))
            capabilities = []
            if model in await _chat_models(route):
                capabilities.append("completion")
            if model == _embedding_model(route):
                capabilities.append("embedding")
            if not capabilities:
                raise _not_found(model)
        except MeshError as err:
            return error_response(err)
        return json_response(
            {
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": _details(),
                "model_info": {},
                "capabilities": capabilities,
                "modified_at": _stamp(),
            }
        )

    async def ps(request: web.Request) -> web.Response:
        try:
            names = list(await _chat_models(route))
        except MeshError as err:
            return error_response(err)
        embedder = _embedding_model(route)
        if embedder and embedder not in names:
            names.append(embedder)
        return json_response(
            {
                "models": [
                    {
                        "name": n,
                        "model": n,
                        "size": 0,
                        "digest": "",
                        "details": _details(),
                        "expires_at": _NEVER,
                        "size_vram": 0,
                    }
                    for n in names
                ]
            }
        )

    async def embed(request: web.Request) -> web.Response:
        rid = request_id(request)
        started = time.monotonic_ns()
        try:
            if route.embeddings is None:
                raise NotFound("this route has no embedding service")
            obj = v.parse_object(await request.read())
            texts = emb.texts_of(obj.get("input"), "input")
            _embed_options(obj)
            model = v.opt_str(obj, "model") or emb.default_model(route)
            result = await emb.embed(route, request, texts, model, rid)
        except MeshError as err:
            return error_response(err)
        return json_response(
            {
                "model": result.model or model or "",
                "embeddings": [list(vector) for vector in result.vectors],
                "total_duration": time.monotonic_ns() - started,
                "load_duration": 0,
                "prompt_eval_count": result.usage.prompt_tokens if result.usage else 0,
            },
            rid=rid,
        )

    async def embeddings(request: web.Request) -> web.Response:
        rid = request_id(request)
        try:
            if route.embeddings is None:
                raise NotFound("this route has no embedding service")
            obj = v.parse_object(await request.read())
            prompt = v.opt_str(obj, "prompt")
            if prompt is None:
                raise BadRequest("'prompt' is required", param="prompt")
            _embed_options(obj)
            model = v.opt_str(obj, "model") or emb.default_model(route)
            result = await emb.embed(route, request, (prompt,), model, rid)
        except MeshError as err:
            return error_response(err)
        return json_response({"embedding": list(result.vectors[0])}, rid=rid)

    router.add_get(prefix + "/api/version", version)
    router.add_post(prefix + "/api/show", show)
    router.add_get(prefix + "/api/ps", ps)
    router.add_post(prefix + "/api/embed", embed)
    router.add_post(prefix + "/api/embeddings", embeddings)
