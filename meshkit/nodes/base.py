"""The node contract: `MicroService`, its `ServiceType`, and the per-request `Context`."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from ..protocol.wire import new_id
from .probe import NOOP, RequestObserver

if TYPE_CHECKING:
    from ..client.http import HttpClient


class ServiceType(enum.StrEnum):
    """What kind of work a node does; decides its default ports and its YAML ``type``."""

    LLM = "llm"
    EMBEDDING = "embedding"
    RETRIEVER = "retriever"
    RERANKER = "reranker"
    GUARDRAIL = "guardrail"
    PROMPT = "prompt"
    CUSTOM = "custom"


@attrs.define
class Context:
    """State of one request as it travels through a graph.

    Nodes read the request id, the caller's headers (for routing decisions), the
    deadline, and make outbound calls only through ``client``.
    """

    client: HttpClient
    request_id: str = attrs.field(factory=new_id)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    deadline: float | None = None
    trace: list[str] = attrs.field(factory=list)
    meta: dict[str, Any] = attrs.field(factory=dict)
    #: The request the graph is running for (set by the orchestrator), for nodes and
    #: edge conditions that look at the caller's question or model.
    request: Any = None
    #: Told what runs and how it ends (metrics, traces, the access log).
    observer: RequestObserver = NOOP

    def remaining(self, default: float) -> float:
        """Seconds left before the deadline, capped at ``default``."""
        if self.deadline is None:
            return default
        return max(0.0, min(default, self.deadline - time.monotonic()))


class MicroService:
    """A typed node of a pipeline graph.

    Subclass it and override :meth:`process` for work done in this process; use a
    built-in subclass (``RemoteLLM`` and friends) for a remote endpoint. A node knows
    nothing about HTTP: to serve pipelines on a port, mount them on a
    :class:`meshkit.App`.

    Args:
        name: Unique name of the node within a graph.
        service_type: What the node does; defaults to the class's ``service_type``.
        params: Free-form node parameters from the YAML (``top_k``, templates, ...).
        timeout: Seconds this node may take before its first output; None for a
            node that enforces its own timeouts (remote services do).
    """

    service_type: ClassVar[ServiceType] = ServiceType.CUSTOM

    def __init__(
        self,
        name: str,
        *,
        service_type: ServiceType | str | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        self.name = name
        if service_type is not None:
            self.service_type = ServiceType(service_type)  # type: ignore[misc]
        self.params: Mapping[str, Any] = dict(params or {})
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.service_type.value})>"

    async def process(self, data: Any, ctx: Context) -> Any:
        """Do this node's work on ``data`` and return its output.

        ``data`` is the predecessor's output (the request itself for a first node, a
        dict keyed by node name where several predecessors join). Return a value, a
        :class:`~meshkit.protocol.Completion`, or an async iterator of
        :class:`~meshkit.protocol.Chunk` to stream.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    async def open(self, client: HttpClient) -> None:
        """Acquire resources before the first request (called once by the owner)."""

    async def close(self) -> None:
        """Release what :meth:`open` acquired."""

    async def ready(self, client: HttpClient) -> bool:
        """Whether this node can serve now (used by ``/readyz``)."""
        return True

    async def models(self, client: HttpClient) -> Sequence[str]:
        """Model names this node can serve, for ``/v1/models`` and ``/api/tags``."""
        return ()


def base_urls(endpoint: str | Sequence[str]) -> tuple[str, ...]:
    """One or several base URLs, without trailing slashes."""
    endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    return tuple(e.rstrip("/") for e in endpoints)


def bearer(api_key: str | None) -> dict[str, str]:
    """The header that carries an upstream credential (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
