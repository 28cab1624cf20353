"""The OpenAI dialect: ``/v1/chat/completions``, ``/v1/models``, ``/v1/embeddings``.

Parsing and rendering live in :mod:`meshkit.protocol.openai`; this module serves them.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import MeshError
from ..protocol.openai import parse_request as parse_chat
from ..protocol.openai_sse import ChatEncoder, error_body
from . import dialect, embeddings
from .dialect import Handler, error_json, json_response
from .route import Route


def error_response(err: MeshError) -> web.Response:
    """An error as OpenAI clients expect it."""
    return error_json(error_body(err), err)


def chat_handler(route: Route) -> Handler:
    """The ``/v1/chat/completions`` handler answering from ``route``'s pipeline."""
    return dialect.chat_handler(route, parse_chat, ChatEncoder, error_body)


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

    router.add_post(prefix + "/v1/chat/completions", chat_handler(route))
    router.add_get(prefix + "/v1/models", models)
    router.add_post(prefix + "/v1/embeddings", embeddings.openai_handler(route, error_response))
