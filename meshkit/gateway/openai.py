"""The OpenAI dialect: ``/v1/chat/completions``, ``/v1/models``, ``/v1/embeddings``.

Parsing and rendering live in :mod:`meshkit.protocol.openai`; this module serves them.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest, MeshError, NotFound
from ..nodes.base import Context
from ..protocol import fields as v
from ..protocol.openai import parse_request as parse_chat
from ..protocol.openai_sse import ChatEncoder, error_body
from ..protocol.types import EmbeddingRequest, Usage
from .dialect import Handler, error_json, json_response, request_id, serve_chat
from .route import Route


def error_response(err: MeshError) -> web.Response:
    """An error as OpenAI clients expect it."""
    return error_json(error_body(err), err)


def chat_handler(route: Route) -> Handler:
    """The ``/v1/chat/completions`` handler answering from ``route``'s pipeline."""

    async def chat(request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        try:
            body = await request.read()
            parsed = parse_chat(body).with_model(route.default_model())
            return await serve_chat(request, route.orchestrator, parsed, ChatEncoder, rid)
        except MeshError as err:
            return error_response(err)

    return chat


def add_routes(router: web.UrlDispatcher, route: Route) -> None:
    """Mount the OpenAI endpoints for ``route``."""
    prefix = route.prefix

    async def models(request: web.Request) -> web.Response:
        try:
            names = await route.model_names()
        except MeshError as err:
            return error_response(err)
        return json_response(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": 0, "owned_by": "meshkit"} for n in names
                ],
            }
        )

    async def embeddings(request: web.Request) -> web.Response:
        rid = request_id(request)
        try:
            if route.embeddings is None:
                raise NotFound("this route has no embedding service")
            obj = v.parse_object(await request.read())
            raw = obj.get("input")
            if isinstance(raw, str):
                texts: tuple[str, ...] = (raw,)
            elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
                texts = tuple(raw)
            else:
                raise BadRequest(
                    "'input' must be a string or a non-empty array of strings", param="input"
                )
            model = (
                v.opt_str(obj, "model")
                or getattr(route.embeddings, "model", None)
                or route.default_model()
            )
            ctx = Context(client=route.orchestrator.client, request_id=rid, headers=request.headers)
            embed = getattr(route.embeddings, "embed", None)
            if embed is None:
                raise NotFound(f"service {route.embeddings.name!r} cannot embed")
            result = await embed(EmbeddingRequest(texts, model), ctx)
        except MeshError as err:
            return error_response(err)
        usage = result.usage or Usage()
        return json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": list(vec)}
                    for i, vec in enumerate(result.vectors)
                ],
                "model": result.model or model or "",
                "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
            },
            rid=rid,
        )

    router.add_post(prefix + "/v1/chat/completions", chat_handler(route))
    router.add_get(prefix + "/v1/models", models)
    router.add_post(prefix + "/v1/embeddings", embeddings)
