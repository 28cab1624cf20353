"""The HTTP edge: dialects, routes, health; the only layer that knows status codes."""

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
