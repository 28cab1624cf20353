"""The Ollama dialect: ``/api/generate``, ``/api/chat``, ``/api/tags`` (NDJSON streams).

Parsing and rendering live in :mod:`meshkit.protocol.ollama`; this module serves them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from ..errors import MeshError
from ..protocol.ollama import parse_chat, parse_generate
from ..protocol.ollama_ndjson import ChatEncoder, GenerateEncoder, error_body
from . import dialect, ollama_api
from .dialect import Handler, error_json, json_response
from .route import Route


def error_response(err: MeshError) -> web.Response:
    """An error as Ollama clients expect it."""
    return error_json(error_body(err), err)


def generate_handler(route: Route) -> Handler:
    """The ``/api/generate`` handler answering from ``route``'s pipeline."""
    return dialect.chat_handler(route, parse_generate, GenerateEncoder, error_body)


def chat_handler(route: Route) -> Handler:
    """The ``/api/chat`` handler answering from ``route``'s pipeline."""
    return dialect.chat_handler(route, parse_chat, ChatEncoder, error_body)


def add_routes(router: web.UrlDispatcher, route: Route) -> None:
    """Mount the Ollama endpoints for ``route``."""
    prefix = route.prefix

    async def tags(request: web.Request) -> web.Response:
        try:
            names = await route.model_names()
        except MeshError as err:
            return error_response(err)
        stamp = datetime.fromtimestamp(time.time(), UTC).isoformat().replace("+00:00", "Z")
        return json_response(
            {
                "models": [
                    {
                        "name": n,
                        "model": n,
                        "modified_at": stamp,
                        "size": 0,
                        "digest": "",
                        "details": {
                            "format": "",
                            "family": "",
                            "parameter_size": "",
                            "quantization_level": "",
                        },
                    }
                    for n in names
                ]
            }
        )

    router.add_post(prefix + "/api/generate", generate_handler(route))
    router.add_post(prefix + "/api/chat", chat_handler(route))
    router.add_get(prefix + "/api/tags", tags)
    ollama_api.add_routes(router, route, error_response)
