"""Embeddings at the edge: OpenAI's ``/v1/embeddings`` and the call both dialects share.

A route answers embeddings through the service its ``embeddings`` names; the Ollama
dialect's ``/api/embed`` (see :mod:`.ollama_api`) reads its own body and calls
:func:`embed` the same way. Vectors go out as JSON floats, or — when the caller asks
with ``encoding_format: "base64"``, as the official OpenAI clients do — as base64 of
little-endian float32, the layout OpenAI itself sends.
"""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from ..errors import BadRequest, MeshError, NotFound
from ..nodes.base import Context
from ..protocol import fields as v
from ..protocol.types import EmbeddingRequest, Embeddings, Usage
from .dialect import Handler, json_response, request_id
from .route import Route

ENCODINGS = ("float", "base64")


async def embed(
    route: Route, request: web.Request, texts: tuple[str, ...], model: str | None, rid: str
) -> Embeddings:
    """Embed ``texts`` with the route's embedding service.

    Raises:
        NotFound: The route has no embedding service, or it cannot embed.
    """
    service = route.embeddings
    if service is None:
        raise NotFound("this route has no embedding service")
    method = getattr(service, "embed", None)
    if method is None:
        raise NotFound(f"service {service.name!r} cannot embed")
    ctx = Context(client=route.orchestrator.client, request_id=rid, headers=request.headers)
    result: Embeddings = await method(EmbeddingRequest(texts, model), ctx)
    return result


def default_model(route: Route) -> str | None:
    """The model an embedding request without one gets."""
    service = route.embeddings
    model = getattr(service, "model", None) if service is not None else None
    return str(model) if model else route.default_model()


def texts_of(value: Any, param: str) -> tuple[str, ...]:
    """A string or a non-empty array of strings, as a tuple."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        return tuple(value)
    raise BadRequest(f"'{param}' must be a string or a non-empty array of strings", param=param)


def float32_base64(vector: Sequence[float]) -> str:
    """``vector`` as base64 of little-endian float32 values."""
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def parse_openai(obj: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """The texts and the encoding of a ``/v1/embeddings`` body."""
    texts = texts_of(obj.get("input"), "input")
    encoding = obj.get("encoding_format", "float")
    if encoding is None:
        encoding = "float"
    if encoding not in ENCODINGS:
        raise BadRequest(
            f"'encoding_format' must be one of {', '.join(ENCODINGS)}, not {encoding!r}",
            param="encoding_format",
        )
    if obj.get("dimensions") is not None:
        # Shortening vectors is the model's job; cutting them here would change them.
        raise BadRequest("'dimensions' is not supported by meshkit", param="dimensions")
    return texts, str(encoding)


def openai_handler(route: Route, error_response: Callable[[MeshError], web.Response]) -> Handler:
    """The ``/v1/embeddings`` handler answering from ``route``'s embedding service."""

    async def embeddings(request: web.Request) -> web.Response:
        rid = request_id(request)
        try:
            if route.embeddings is None:
                raise NotFound("this route has no embedding service")
            obj = v.parse_object(await request.read())
            texts, encoding = parse_openai(obj)
            model = v.opt_str(obj, "model") or default_model(route)
            result = await embed(route, request, texts, model, rid)
        except MeshError as err:
            return error_response(err)
        usage = result.usage or Usage()
        encode = float32_base64 if encoding == "base64" else list
        return json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": encode(vec)}
                    for i, vec in enumerate(result.vectors)
                ],
                "model": result.model or model or "",
                "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
            },
            rid=rid,
        )

    return embeddings
