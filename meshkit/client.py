"""The outbound layer: the only code in meshkit that opens connections.

One pool of keep-alive connections (:mod:`meshkit.h1`) per process, owned by whoever
serves (the gateway's ``cleanup_ctx`` or an orchestrator used as a library), with a
timeout on every call and upstream failures turned into :mod:`meshkit.errors`.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import structlog

from . import _json, h1
from ._lifecycle import Resource
from .errors import (
    MeshError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = structlog.get_logger(__name__)

#: Longest upstream error body we read to build a message.
_ERROR_BODY_LIMIT = 4096

#: Headers that describe one connection, never forwarded to another hop (RFC 9110 7.6.1),
#: plus the caller's own credentials and the headers meshkit sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "host",
        "content-length",
        "authorization",
        "cookie",
    }
)


def forwardable(headers: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The subset of a caller's ``headers`` named in ``names`` that may go upstream.

    Hop-by-hop headers, ``Authorization`` and cookies never pass, whatever ``names``
    says; a node that wants to pass a caller header on must name it.
    """
    out: dict[str, str] = {}
    for name in names:
        if name.lower() in HOP_BY_HOP:
            continue
        value = headers.get(name)
        if value is not None:
            out[name] = value
    return out


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

    def within(self, seconds: float) -> Timeouts:
        """These timeouts shrunk so that none outlasts ``seconds`` (a deadline's rest)."""
        seconds = max(seconds, 0.001)
        total = seconds if self.total is None else min(self.total, seconds)
        return Timeouts(min(self.connect, seconds), min(self.first_byte, seconds), self.idle, total)


class HttpClient(Resource):
    """A pooled HTTP client with meshkit's error mapping.

    Use ``async with HttpClient() as client`` or :meth:`open`/:meth:`close`; ``tls`` is
    the context ``https`` upstreams are verified with (default: the system's CAs). It keeps
    one :class:`~meshkit.h1.Pool` of keep-alive connections (health probes use fresh
    connections instead: a probe must tell a dead host from a live pooled socket) and
    the set of responses being streamed, so a shutting-down gateway can end them
    (:meth:`abort_streams`).
    """

    def __init__(
        self, *, limit: int = 1024, keepalive: float = 30.0, tls: ssl.SSLContext | None = None
    ) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._tls = tls
        self._pool: h1.Pool | None = None
        self._live: set[h1.Response] = set()
        self.aborting = False

    async def open(self) -> None:
        """Create the connection pool (idempotent)."""
        if self._pool is None or self._pool.closed:
            self._pool = h1.Pool(keepalive=self._keepalive, max_idle=self._limit, tls=self._tls)
            self.aborting = False

    async def close(self) -> None:
        """Close the pool and every connection in it."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @property
    def pool(self) -> h1.Pool:
        """The underlying connection pool; opened on first use."""
        if self._pool is None or self._pool.closed:
            raise RuntimeError("HttpClient is not open; use 'async with' or open()")
        return self._pool

    @property
    def connections_in_use(self) -> int:
        """Connections currently checked out of the pool (zero when idle)."""
        return 0 if self._pool is None else self._pool.in_use

    @property
    def live_responses(self) -> int:
        """Responses currently open for reading (streams in progress)."""
        return len(self._live)

    def abort_streams(self) -> int:
        """Close every response being read, so its reader fails at once; return how many.

        Used by graceful shutdown once the grace period is over: readers see
        :attr:`aborting` and report a shutdown rather than an upstream failure.
        """
        self.aborting = True
        live = list(self._live)
        for response in live:
            response.close()
        return len(live)

    @asynccontextmanager
    async def request(self, method: str, url: str, **options: Any) -> AsyncIterator[h1.Response]:
        """Send one request; yield the response once its status is known to be good.

        Takes the options of :meth:`start`, which says what it raises. On exit the
        connection is returned to the pool when the body was read whole, and closed
        otherwise (so a cancelled stream never leaves a half-read connection behind).
        """
        response = await self.start(method, url, **options)
        ok = False
        try:
            yield response
            ok = True
        finally:
            self.finish(response, ok=ok)

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        service: str,
        timeouts: Timeouts,
        what: str = "answer",
        **options: Any,
    ) -> bytes:
        """Send one request and return its whole body, all within
        ``timeouts.first_byte``; a timeout or a broken body is an upstream error."""
        try:
            async with asyncio.timeout(timeouts.first_byte):
                async with self.request(
                    method, url, service=service, timeouts=timeouts, bounded=True, **options
                ) as response:
                    return await response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"{service}: no {what} within {timeouts.first_byte:g} s", service=service
            ) from exc
        except h1.H1Error as exc:
            raise UpstreamError(f"{service}: {type(exc).__name__}", service=service) from exc

    async def start(
        self,
        method: str,
        url: str,
        *,
        service: str,
        timeouts: Timeouts,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        secrets: tuple[str, ...] = (),
        bounded: bool = False,
        answer_by: float | None = None,
    ) -> h1.Response:
        """Send one request; return the response once its status is known to be good.

        The caller must hand the response to :meth:`finish` however it ends
        (``try``/``finally``); :meth:`request` does that as a context manager.

        Raises ``UpstreamConnectError`` when no connection could be used (refused,
        unreachable, connect timeout, a pooled socket the peer had closed),
        ``UpstreamTimeout`` when headers do not arrive within ``timeouts.first_byte``,
        ``UpstreamOverloaded`` for 429/503 (with the upstream's ``Retry-After``),
        ``UpstreamRejected`` for another 4xx and ``UpstreamError`` for a 5xx.
        ``timeouts.total`` bounds the whole call, body included. Gaps between reads are
        left to the caller (a whole-body read is bounded by :meth:`fetch`, a stream by
        :class:`IdleWatch`). Any of ``secrets``
        found in an upstream's error message is masked. ``bounded=True`` says the caller
        already bounds the wait for headers (one timer per call instead of two).
        ``answer_by`` (loop time) bounds the wait for headers and whatever the caller
        reads after them until it calls ``response.in_time()``; it implies ``bounded``.
        """
        if self._pool is None:
            await self.open()
        pool = self.pool
        data = body if body is None or isinstance(body, bytes) else _json.dumps(body)
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        if headers:
            all_headers.update(headers)
        key, path, host = h1.target(url)
        wire = h1.encode_request(method, path, host, all_headers, data)
        try:
            if bounded or answer_by is not None:
                response = await self._send(pool, key, wire, timeouts.connect, answer_by)
            else:
                async with asyncio.timeout(timeouts.first_byte):
                    response = await self._send(pool, key, wire, timeouts.connect, None)
        except _ConnectTimeout as exc:
            raise UpstreamConnectError(
                f"{service}: no connection within {timeouts.connect:g} s", service=service
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"{service}: no answer within {timeouts.first_byte:g} s", service=service
            ) from exc
        except h1.ConnectFailed as exc:
            raise UpstreamConnectError(
                f"{service}: cannot connect to {exc.host}:{exc.port}", service=service
            ) from exc
        except h1.ClosedEarly as exc:
            # The connection died before any answer: a pooled socket the peer had
            # closed, or a reset. No response means the request was not served.
            raise UpstreamConnectError(
                f"{service}: connection lost before an answer ({type(exc).__name__})",
                service=service,
            ) from exc
        except h1.H1Error as exc:
            raise UpstreamUnavailable(
                f"{service}: connection failed ({type(exc).__name__})", service=service
            ) from exc
        self._live.add(response)
        if timeouts.total is not None:
            response.timer = asyncio.get_running_loop().call_later(
                timeouts.total,
                response.fail,
                TimeoutError(f"{service}: the call took longer than {timeouts.total:g} s"),
            )
        if response.status >= 400:
            try:
                err = await _status_error(response, service, secrets)
            finally:
                self.finish(response, ok=False)
            raise err
        return response

    @staticmethod
    async def _send(
        pool: h1.Pool,
        key: tuple[str, str, int],
        wire: bytes,
        connect: float,
        answer_by: float | None,
    ) -> h1.Response:
        """Write ``wire`` on a pooled (or new) connection and wait for the answer's head."""
        try:
            conn = await pool.connection(key, within=connect)
        except TimeoutError as exc:
            raise _ConnectTimeout from exc
        response = conn.send(wire)
        if answer_by is not None:
            response.expire_at(answer_by, TimeoutError("no answer in time"))
        try:
            await response.head()
        except BaseException:
            response.close()
            raise
        return response

    def finish(self, response: h1.Response, *, ok: bool) -> None:
        """Done with a response from :meth:`start`: back to the pool when ``ok`` (and
        read whole), else its connection is closed."""
        self._live.discard(response)
        if ok:
            response.release()
        else:
            response.close()

    async def probe(self, url: str, *, within: float, headers: Mapping[str, str]) -> str | None:
        """Probe ``GET url`` on a fresh connection: None when it answers 2xx within
        ``within`` seconds, else why not."""
        key, path, host = h1.target(url)
        response: h1.Response | None = None
        try:
            async with asyncio.timeout(within):
                conn = await self.pool.connection(key, within=within, fresh=True)
                response = conn.send(h1.encode_request("GET", path, host, headers, None))
                await response.head()
                await response.read()
                return None if response.status < 400 else f"answered {response.status}"
        except TimeoutError:
            return f"no answer within {within:g} s"
        except h1.ConnectFailed as exc:
            return f"cannot connect to {exc.host}:{exc.port}"
        except (h1.H1Error, OSError) as exc:
            return f"connection failed ({type(exc).__name__})"
        finally:
            if response is not None:
                response.close()


class _ConnectTimeout(Exception):
    """No connection within the connect timeout (told apart from the head's timeout)."""


class IdleWatch:
    """Bounds each wait for data on a streamed response by ``idle`` seconds.

    The reader marks the wait (``reading = loop.time()`` before it, ``None`` after):
    two stores per read. One timer per stream checks the mark and re-arms itself only
    when it fires, instead of a read timer being cancelled and re-created on every
    read. A wait found older than ``idle`` fails the response with
    :class:`TimeoutError`. Time the reader spends elsewhere (writing to a slow caller)
    never counts. A response relayed by callbacks marks ``reading`` with the time of
    its last piece of data instead.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_response", "reading")

    def __init__(self, response: h1.Response, idle: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._response = response
        self._idle = idle
        #: Loop time the current wait for data began; None while not waiting.
        self.reading: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        if idle:
            self._handle = self._loop.call_at(self._loop.time() + idle, self._check)

    def _check(self) -> None:
        idle = self._idle
        assert idle
        started = self.reading
        now = self._loop.time()
        if started is not None and now - started >= idle:
            self._handle = None
            self._response.fail(TimeoutError("Timeout on reading data from socket"))
            return
        self._handle = self._loop.call_at((now if started is None else started) + idle, self._check)

    def cancel(self) -> None:
        """Stop watching (the stream ended)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, 86_400.0))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret (of four characters or more) masked."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


async def _status_error(
    response: h1.Response, service: str, secrets: tuple[str, ...] = ()
) -> MeshError:
    """Build the error for an upstream 4xx/5xx, with the upstream's own message."""
    try:
        raw = await asyncio.wait_for(response.read(_ERROR_BODY_LIMIT), 2.0)
    except (TimeoutError, h1.H1Error):
        raw = b""
    detail = redact(_error_message(raw) or response.reason or "error", secrets)
    status = response.status
    log.info("meshkit.upstream.status", service=service, status=status)
    if status in (429, 503):
        return UpstreamOverloaded(
            f"{service}: upstream answered {status}: {detail}",
            service=service,
            upstream_status=status,
            retry_after=retry_after(response.headers.get("Retry-After")),
        )
    if 400 <= status < 500 and status != 408:
        return UpstreamRejected(f"{service}: {detail}", service=service, upstream_status=status)
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
