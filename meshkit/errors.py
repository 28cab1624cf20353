"""One exception tree for meshkit.

Every error knows the HTTP status it maps to and a short machine code, so that the
gateway can render it in either dialect without knowing where it came from.
"""

from __future__ import annotations

import asyncio


class MeshError(Exception):
    """Root of every error meshkit raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    kind: str = "server_error"
    #: Seconds the caller should wait before trying again (sent as ``Retry-After``).
    retry_after: float | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class SpecError(MeshError, ValueError):
    """The YAML specification is invalid; carries every problem found."""

    code = "invalid_spec"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class GraphError(MeshError, ValueError):
    """A pipeline graph is malformed (cycle, unknown node, bad connection)."""

    code = "invalid_graph"


class BadRequest(MeshError, ValueError):
    """The caller sent something we cannot accept."""

    status = 400
    code = "invalid_request"
    kind = "invalid_request_error"


class NotFound(MeshError, LookupError):
    """No such route, model or resource."""

    status = 404
    code = "not_found"
    kind = "invalid_request_error"


class UpstreamError(MeshError):
    """A remote service failed; carries the node name and, where known, its status."""

    status = 502
    code = "upstream_error"
    kind = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.upstream_status = upstream_status


class UpstreamUnavailable(UpstreamError, ConnectionError):
    """The remote service refused or dropped the connection."""

    code = "upstream_unavailable"


class UpstreamConnectError(UpstreamUnavailable):
    """No connection could be made (refused, unreachable, connect timeout, stale socket);
    the upstream never saw the request, so it is safe to try again."""


class UpstreamOverloaded(UpstreamError):
    """The remote service answered 429 or 503 (it asked to be retried later).

    A 429 is passed on as 429 (the caller should slow down), a 503 as 502 like any
    other upstream failure; the upstream's ``Retry-After`` is passed on with both.
    """

    code = "upstream_overloaded"

    def __init__(
        self,
        message: str,
        *,
        service: str | None,
        upstream_status: int,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, service=service, upstream_status=upstream_status)
        self.status = 429 if upstream_status == 429 else 502
        self.retry_after = retry_after


class CircuitOpen(UpstreamUnavailable):
    """Every replica of a service is out (failing, or cooling down after failures)."""

    code = "upstream_circuit_open"


class UpstreamTimeout(UpstreamError, asyncio.TimeoutError):
    """The remote service did not answer in time."""

    status = 504
    code = "upstream_timeout"


class UpstreamRejected(UpstreamError):
    """The remote service answered with a 4xx of its own; its status is passed on."""

    kind = "invalid_request_error"

    def __init__(self, message: str, *, service: str | None, upstream_status: int) -> None:
        super().__init__(message, service=service, upstream_status=upstream_status)
        self.status = upstream_status
        self.code = "model_not_found" if upstream_status == 404 else "upstream_rejected"


class NodeError(MeshError):
    """A node in a pipeline raised; names the node."""

    code = "node_error"

    def __init__(self, message: str, *, node: str) -> None:
        super().__init__(message)
        self.node = node


class NodeTimeout(NodeError, asyncio.TimeoutError):
    """A node took longer than its timeout."""

    status = 504
    code = "node_timeout"


class Unauthorized(MeshError, PermissionError):
    """The request carries no valid API key."""

    status = 401
    code = "invalid_api_key"
    kind = "invalid_request_error"


class Overloaded(MeshError):
    """The gateway is at its bound of concurrent requests."""

    status = 429
    code = "rate_limit_exceeded"
    kind = "requests"


class ShuttingDown(MeshError):
    """The gateway is shutting down; the request or stream was ended early."""

    status = 503
    code = "shutting_down"


class PayloadTooLarge(MeshError):
    """The request body is over the gateway's limit."""

    status = 413
    code = "payload_too_large"
    kind = "invalid_request_error"


class MethodNotAllowed(MeshError):
    """The path exists but not for this method."""

    status = 405
    code = "method_not_allowed"
    kind = "invalid_request_error"


class InternalError(MeshError):
    """Something unexpected broke inside meshkit; details stay in the log."""
