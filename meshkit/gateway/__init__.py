"""The HTTP edge: dialects, routes, health; the only layer that knows status codes."""

from __future__ import annotations

from .app import MESH, build_app, pipeline_handler
from .standalone import build_routes_app, build_service_app, run_service

__all__ = [
    "MESH",
    "build_app",
    "build_routes_app",
    "build_service_app",
    "pipeline_handler",
    "run_service",
]
