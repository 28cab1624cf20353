"""The outbound layer: the only code in meshkit that opens connections.

One pooled :class:`aiohttp.ClientSession` per process, owned by whoever serves (the
gateway's ``cleanup_ctx`` or an orchestrator used as a library), with a timeout on
every call and upstream failures turned into :mod:`meshkit.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import aiohttp
import attrs
import structlog

from . import _json
from .errors import (
    MeshError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = structlog.get_logger(__name__)

#: Longest upstream error body we read to build a message.
_ERROR_BODY_LIMIT = 4096


@attrs.frozen
class Timeouts:
    """How long one outbound call may take, in seconds.

    ``first_byte`` bounds everything up to the first piece of the answer (for a
    non-streaming call, the whole answer); ``idle`` bounds each gap between chunks
    after that; ``total`` bounds the whole call when set.
    """

    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 60.0
    total: float | None = None


class HttpClient:
    """A pooled HTTP client with meshkit's error mapping.

    Use ``async with HttpClient() as client`` or :meth:`open`/:meth:`close`.
    """

    def __init__(self, *, limit: int = 1024, keepalive: float = 30.0) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the pooled session (idempotent)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=0, keepalive_timeout=self._keepalive
            )
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=lambda o: _json.dumps(o).decode()
            )

    async def close(self) -> None:
        """Close the session and every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The underlying session; opened on first use."""
        if self._session is None or self._session.closed:
            raise RuntimeError("HttpClient is not open; use 'async with' or open()")
        return self._session

    @property
    def connections_in_use(self) -> int:
        """Connections currently checked out of the pool (zero when idle)."""
        if self._session is None:
            return 0
        connector = self._session.connector
        acquired = getattr(connector, "_acquired", ())
        return len(acquired)

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        service: str,
        timeouts: Timeouts,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; yield the response once its status is known to be good.

        Raises ``UpstreamUnavailable`` when the connection fails, ``UpstreamTimeout``
        when headers do not arrive within ``timeouts.first_byte``, ``UpstreamRejected``
        for a 4xx and ``UpstreamError`` for a 5xx. On exit the connection is returned to
        the pool when the body was read whole, and closed otherwise (so a cancelled
        stream never leaves a half-read connection behind).
        """
        if self._session is None:
            await self.open()
        data = body if body is None or isinstance(body, bytes) else _json.dumps(body)
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        if headers:
            all_headers.update(headers)
        client_timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.idle
        )
        try:
            async with asyncio.timeout(timeouts.first_byte):
                response = await self.session.request(
                    method, url, data=data, headers=all_headers, timeout=client_timeout
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"{service}: no answer within {timeouts.first_byte:g} s", service=service
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(
                f"{service}: cannot connect to {exc.host}:{exc.port}", service=service
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(
                f"{service}: connection failed ({type(exc).__name__})", service=service
            ) from exc
        try:
            if response.status >= 400:
                raise await _status_error(response, service)
            yield response
        except BaseException:
            response.close()
            raise
        else:
            response.release()


async def _status_error(response: aiohttp.ClientResponse, service: str) -> MeshError:
    """Build the error for an upstream 4xx/5xx, with the upstream's own message."""
    try:
        raw = await asyncio.wait_for(response.content.read(_ERROR_BODY_LIMIT), 2.0)
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    detail = _error_message(raw) or response.reason or "error"
    status = response.status
    log.info("meshkit.upstream.status", service=service, status=status)
    if 400 <= status < 500 and status not in (408, 429):
        return UpstreamRejected(
            f"{service}: {detail}", service=service, upstream_status=status
        )
    return UpstreamError(
        f"{service}: upstream answered {status}: {detail}",
        service=service,
        upstream_status=status,
    )


def _error_message(raw: bytes) -> str:
    """Pull a human message out of an upstream error body in any common shape."""
    try:
        body = _json.loads(raw)
    except (ValueError, TypeError):
        return raw.decode("utf-8", "replace").strip()[:500]
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:500]
    return raw.decode("utf-8", "replace")[:500]
