"""The orchestration layer: pipelines of nodes, run per request.

It owns the graph's shape (:mod:`~meshkit.graph.topology`: edges, cycles, fan-in), the
conditions on edges (:mod:`~meshkit.graph.conditions`), one run of a pipeline
(:mod:`~meshkit.graph.execution`: streams teed to every successor, cancellation of every
node when the caller leaves), the :class:`ServiceOrchestrator` users build in code, and
the :class:`Mesh` that turns a validated ``services.yaml`` into orchestrators, including
the embedded model's child process (:mod:`~meshkit.graph.embedded`). It sits above the
nodes and the client and below the gateway: nothing here serves HTTP.
"""

from __future__ import annotations

from .mesh import Mesh
from .orchestrator import ServiceOrchestrator

__all__ = ["Mesh", "ServiceOrchestrator"]
