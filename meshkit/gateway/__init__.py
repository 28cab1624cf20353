"""The serving layer: pipelines on a port, in the OpenAI and Ollama dialects.

It owns everything HTTP: the aiohttp application (:class:`App`, :func:`build_app`),
routes and their dialect handlers, request validation and admission, errors in each
dialect's own shape (the only layer that knows status codes), health and readiness,
the playground, and the lifecycle of what it serves (opening and closing every node and
the client pool). A single ``MicroService`` served on its own port is this layer serving
a one-node pipeline.
"""

from __future__ import annotations

from .app import MESH, build_app, pipeline_handler
from .serve import App, build_service_app

__all__ = [
    "MESH",
    "App",
    "build_app",
    "build_service_app",
    "pipeline_handler",
]
