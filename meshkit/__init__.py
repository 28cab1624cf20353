"""meshkit: compose GenAI microservices into streaming graphs.

Declare services and pipelines in ``services.yaml`` (or in code with
:class:`ServiceOrchestrator`), then serve them over HTTP in the OpenAI and Ollama
dialects with ``meshkit serve``.
"""

from __future__ import annotations

from ._version import __version__
from .client import HttpClient, Timeouts
from .errors import (
    BadRequest,
    GraphError,
    MeshError,
    NodeError,
    NodeTimeout,
    NotFound,
    SpecError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .gateway import App, build_app, build_service_app, pipeline_handler
from .graph.mesh import Mesh
from .graph.orchestrator import ServiceOrchestrator
from .nodes import Context, MicroService, RemoteLLM, ServiceRegistry, ServiceType
from .protocol import (
    ChatRequest,
    Chunk,
    ChunkStream,
    Completion,
    EmbeddingRequest,
    Embeddings,
    Message,
    Part,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .spec import MeshSpec, load

__all__ = [
    "App",
    "BadRequest",
    "ChatRequest",
    "Chunk",
    "ChunkStream",
    "Completion",
    "Context",
    "EmbeddingRequest",
    "Embeddings",
    "GraphError",
    "HttpClient",
    "Mesh",
    "MeshError",
    "MeshSpec",
    "Message",
    "MicroService",
    "NodeError",
    "NodeTimeout",
    "NotFound",
    "Part",
    "RemoteLLM",
    "ServiceOrchestrator",
    "ServiceRegistry",
    "ServiceType",
    "SpecError",
    "Timeouts",
    "ToolCall",
    "ToolCallDelta",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Usage",
    "__version__",
    "build_app",
    "build_service_app",
    "load",
    "pipeline_handler",
]
