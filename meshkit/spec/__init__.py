"""The spec layer: ``services.yaml`` → validated, frozen attrs objects, and its JSON Schema.

It owns the file format and nothing that runs: the classes a file becomes
(:class:`MeshSpec`, :class:`ServiceSpec`, ...; :mod:`.model`, each key declared once
with its kind, default and the service types that use it), ``${VAR}`` interpolation
(:mod:`.interpolation`), structuring through cattrs with every problem kept with its
path (:mod:`.structure`), the checks across keys (:mod:`.checks`), loading
(:mod:`.loading`) and the JSON Schema generated from the same declarations
(:mod:`.schema`, printed by ``meshkit schema``). Graph checks (port types, cycles,
fan-in) need the nodes and live in :mod:`meshkit.graph`.
"""

from __future__ import annotations

from .interpolation import interpolate, variables
from .loading import Checked, check, load, loads, read
from .model import (
    DIALECTS,
    SERVICE_TYPES,
    EdgeSpec,
    GatewaySpec,
    LocalSpec,
    MeshSpec,
    PipelineSpec,
    RouteSpec,
    ServiceSpec,
)
from .schema import json_schema

__all__ = [
    "DIALECTS",
    "SERVICE_TYPES",
    "Checked",
    "EdgeSpec",
    "GatewaySpec",
    "LocalSpec",
    "MeshSpec",
    "PipelineSpec",
    "RouteSpec",
    "ServiceSpec",
    "check",
    "interpolate",
    "json_schema",
    "load",
    "loads",
    "read",
    "variables",
]
