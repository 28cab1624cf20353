"""The outbound layer: the only code in meshkit that opens connections.

One pool of keep-alive connections (:mod:`meshkit.pool`, :mod:`meshkit.h1`) per
process, owned by whoever serves (the gateway's ``cleanup_ctx`` or an orchestrator used
as a library), with a timeout on every call and upstream failures turned into
:mod:`meshkit.errors`. Per service it bounds the connections in use and the size of an
answer read whole (:class:`Limits`); a request written on a pooled connection the
upstream had just closed is sent again once on a new one, unseen by the caller.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import structlog

from .. import _json
from .._lifecycle import Resource
from ..errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from . import dial, h1
from .limits import ConnectionsBusy, Gate, IdleWatch, Limits, Timeouts
from .pool import Key, Pool, Route
from .proxy import Proxies
from .upstream import HOP_BY_HOP, forwardable, redact, retry_after, status_error, too_large

log = structlog.get_logger(__name__)

__all__ = [
    "HOP_BY_HOP",
    "ConnectionsBusy",
    "HttpClient",
    "IdleWatch",
    "Limits",
    "Timeouts",
    "forwardable",
    "redact",
    "retry_after",
]


class HttpClient(Resource):
    """A pooled HTTP client with meshkit's error mapping.

    Use ``async with HttpClient() as client`` or :meth:`open`/:meth:`close`. It keeps
    one :class:`~meshkit.pool.Pool` of keep-alive connections (health probes use fresh
    connections instead: a probe must tell a dead host from a live pooled socket) and
    the responses being read, so a shutting-down gateway can end them
    (:meth:`abort_streams`).

    Args:
        limit: Idle connections kept per upstream.
        keepalive: Seconds an idle connection is kept.
        tls: Context ``https`` upstreams are verified with (default: the system's CAs).
        proxies: Which upstreams are reached through a proxy (default: what
            ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` say when the client opens).
        resolver: Turns a host name into addresses (default: the system's).
        limits: Each service's :class:`Limits` unless :meth:`set_limits` says otherwise.
    """

    def __init__(
        self,
        *,
        limit: int = 1024,
        keepalive: float = 30.0,
        tls: ssl.SSLContext | None = None,
        proxies: Proxies | None = None,
        resolver: dial.Resolver = dial.resolve,
        limits: Limits | None = None,
    ) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._tls = tls
        self._proxies = proxies
        self._resolver = resolver
        self._default_limits = limits or Limits()
        self._limits: dict[str, Limits] = {}
        self._gates: dict[str, Gate] = {}
        self._pool: Pool | None = None
        self._live: dict[h1.Response, Gate] = {}
        #: Request heads made once per (method, URL, fixed headers, body or not).
        self._heads: dict[tuple[Any, ...], bytes] = {}
        self.aborting = False

    async def open(self) -> None:
        """Create the connection pool (idempotent).

        Raises:
            ValueError: A proxy variable in the environment is not an http:// URL.
        """
        if self._pool is None or self._pool.closed:
            proxies = Proxies.from_env() if self._proxies is None else self._proxies
            if proxies:
                log.info(
                    "meshkit.client.proxies",
                    http=proxies.http.name if proxies.http else None,
                    https=proxies.https.name if proxies.https else None,
                    no_proxy=",".join(proxies.no_proxy),
                )
            self._heads.clear()  # a new pool may route differently (proxies from env)
            self._pool = Pool(
                keepalive=self._keepalive,
                max_idle=self._limit,
                tls=self._tls,
                proxies=proxies,
                resolver=self._resolver,
            )
            self.aborting = False

    def set_limits(self, service: str, limits: Limits) -> None:
        """Bound what ``service`` may take (before its first request)."""
        self._limits[service] = limits
        self._gates.pop(service, None)

    def _gate(self, service: str) -> Gate:
        limits = self._limits_of(service)
        gate = self._gates[service] = Gate(limits.max_connections, limits.max_body)
        return gate

    def _limits_of(self, service: str) -> Limits:
        return self._limits.get(service, self._default_limits)

    async def close(self) -> None:
        """Close the pool and every connection in it."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @property
    def pool(self) -> Pool:
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
            if isinstance(exc, ConnectionsBusy):
                raise
            raise UpstreamTimeout(
                f"{service}: no {what} within {timeouts.first_byte:g} s", service=service
            ) from exc
        except h1.BodyTooLarge as exc:
            raise too_large(service, exc) from exc
        except h1.H1Error as exc:
            raise UpstreamError(f"{service}: {type(exc).__name__}", service=service) from exc

    async def read_whole(self, response: h1.Response, *, service: str) -> bytes:
        """``response``'s whole body, within the service's ``max_body``.

        Raises:
            UpstreamError: The body is over ``max_body`` (other failures are the
                :class:`~meshkit.h1.H1Error` reading raised).
        """
        try:
            return await response.read()
        except h1.BodyTooLarge as exc:
            raise too_large(service, exc) from exc

    async def start(
        self,
        method: str,
        url: str,
        *,
        service: str,
        timeouts: Timeouts,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        more_headers: Mapping[str, str] | None = None,
        secrets: tuple[str, ...] = (),
        bounded: bool = False,
        answer_by: float | None = None,
    ) -> h1.Response:
        """Send one request; return the response once its status is known to be good.

        The caller must hand the response to :meth:`finish` however it ends
        (``try``/``finally``); :meth:`request` does that as a context manager.

        Raises ``UpstreamConnectError`` when no connection could be used (refused,
        unreachable, connect timeout, a proxy that would not connect us),
        ``UpstreamTimeout`` when headers do not arrive within ``timeouts.first_byte``
        (``ConnectionsBusy`` when the service's ``max_connections`` stayed in use that
        long), ``UpstreamOverloaded`` for 429/503 (with the upstream's ``Retry-After``),
        ``UpstreamRejected`` for another 4xx and ``UpstreamError`` for a 5xx, a redirect
        (never followed) or a head that is malformed or over 64 KiB.
        ``timeouts.total`` bounds the whole call, body included. Gaps between reads are
        left to the caller (a whole-body read is bounded by :meth:`fetch`, a stream by
        :class:`IdleWatch`). Any of ``secrets``
        found in an upstream's error message is masked. ``bounded=True`` says the caller
        already bounds the wait for headers (one timer per call instead of two).
        ``answer_by`` (loop time) bounds the wait for headers and whatever the caller
        reads after them until it calls ``response.in_time()``; it implies ``bounded``.
        A request written on a reused connection that ends before any byte of an answer
        (the upstream closed it while idle) is sent again at once on a new connection.
        ``more_headers`` says ``headers`` are the same on every call to this URL (a
        node's fixed ones): the request's line and those headers are then rendered
        once and kept, and only ``more_headers`` (the request's own) are rendered per
        call, after them.
        """
        if self._pool is None:
            await self.open()
        pool = self.pool
        data = body if body is None or isinstance(body, bytes) else _json.dumps(body)
        key, path, host = h1.target(url)
        route = pool.route(key)
        if more_headers is not None:
            fixed = tuple(headers.items()) if headers else ()
            head = self._heads.get((method, url, fixed, data is None))
            if head is None:
                head = self._head(method, url, fixed, data is None, route)
            wire = h1.complete_request(head, more_headers, data)
        else:
            all_headers = {"Content-Type": "application/json"} if data is not None else {}
            if headers:
                all_headers.update(headers)
            wire = _encode(route, method, path, host, all_headers, data)
        gate = self._gates.get(service) or self._gate(service)
        if not gate.take():
            await self._queue(gate, service, timeouts, answer_by)
        try:
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
                raise UpstreamConnectError(f"{service}: {exc}", service=service) from exc
            except h1.ClosedEarly as exc:
                # The connection died before any answer: a reset, or a new connection
                # closed at once. No response means the request was not served.
                raise UpstreamConnectError(
                    f"{service}: connection lost before an answer ({type(exc).__name__})",
                    service=service,
                ) from exc
            except h1.BrokenBody as exc:
                raise UpstreamUnavailable(f"{service}: {exc}", service=service) from exc
            except h1.H1Error as exc:
                raise UpstreamUnavailable(
                    f"{service}: connection failed ({type(exc).__name__})", service=service
                ) from exc
        except BaseException:
            gate.give()
            raise
        self._live[response] = gate
        response.max_size = gate.max_body
        if timeouts.total is not None:
            response.timer = asyncio.get_running_loop().call_later(
                timeouts.total,
                response.fail,
                TimeoutError(f"{service}: the call took longer than {timeouts.total:g} s"),
            )
        if response.status >= 300:
            try:
                err = await status_error(response, service, secrets, route)
            finally:
                self.finish(response, ok=False)
            raise err
        return response

    def _head(
        self, method: str, url: str, fixed: tuple[tuple[str, str], ...], bare: bool, route: Route
    ) -> bytes:
        """The kept head of requests to ``url`` with the ``fixed`` headers (``bare``:
        without a body); the routes of a client never change, so neither does it."""
        if len(self._heads) >= _MAX_HEADS:
            self._heads.clear()  # callers varying their fixed headers: start over
        _, path, host = h1.target(url)
        headers = dict(fixed) if bare else {"Content-Type": "application/json", **dict(fixed)}
        head = self._heads[(method, url, fixed, bare)] = h1.encode_head(
            method, *_target(route, path, host, headers)
        )
        return head

    async def _queue(
        self, gate: Gate, service: str, timeouts: Timeouts, answer_by: float | None
    ) -> None:
        """Wait for one of the service's connections, within the first-token budget."""
        loop = asyncio.get_running_loop()
        when = loop.time() + timeouts.first_byte if answer_by is None else answer_by
        try:
            async with asyncio.timeout_at(when):
                await gate.wait()
        except TimeoutError as exc:
            raise ConnectionsBusy(
                f"{service}: all {gate.limit} connections (max_connections) stayed busy "
                f"for the whole {timeouts.first_byte:g} s budget",
                service=service,
            ) from exc

    @staticmethod
    async def _send(
        pool: Pool,
        key: Key,
        wire: bytes,
        connect: float,
        answer_by: float | None,
    ) -> h1.Response:
        """Write ``wire`` on a pooled (or new) connection and wait for the answer's head.

        A reused connection that ends before any byte of the answer (the upstream
        closed it while it sat idle, as servers with a short keep-alive do) is
        replaced once, at once, by a new one: the upstream never answered.
        """
        reuse = True
        while True:
            conn = pool.idle_connection(key) if reuse else None
            if conn is None:
                try:
                    conn = await pool.connection(key, within=connect, reuse=False)
                except TimeoutError as exc:
                    raise _ConnectTimeout from exc
            try:
                response = conn.send(wire)
            except h1.ClosedEarly:
                pool.forget(conn)  # closed before a byte was written: nothing to wait for
                if not (reuse and conn.reused):
                    raise
                reuse = False
                continue
            if answer_by is not None:
                response.expire_at(answer_by, "no answer in time")
            try:
                await response.head()
            except h1.ClosedEarly:
                response.close()
                if not (reuse and conn.reused) or response.begun:
                    raise
                log.debug("meshkit.upstream.stale_connection", upstream=f"{key[1]}:{key[2]}")
                reuse = False
                continue
            except BaseException:
                response.close()
                raise
            return response

    def finish(self, response: h1.Response, *, ok: bool) -> None:
        """Done with a response from :meth:`start`: back to the pool when ``ok`` (and
        read whole), else its connection is closed. Its connection slot is given back."""
        gate = self._live.pop(response, None)
        if gate is not None:
            gate.give()
        if ok:
            response.release()
        else:
            response.close()

    async def probe(self, url: str, *, within: float, headers: Mapping[str, str]) -> str | None:
        """Probe ``GET url`` on a fresh connection: None when it answers 2xx within
        ``within`` seconds, else why not."""
        key, path, host = h1.target(url)
        pool = self.pool
        wire = _encode(pool.route(key), "GET", path, host, headers, None)
        response: h1.Response | None = None
        try:
            async with asyncio.timeout(within):
                conn = await pool.connection(key, within=within, fresh=True)
                response = conn.send(wire)
                await response.head()
                await response.read()
                return None if response.status < 300 else f"answered {response.status}"
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


#: Most request heads a client keeps (one per upstream URL and node in practice).
_MAX_HEADS = 256


def _target(
    route: Route, path: bytes, host: bytes, headers: Mapping[str, str]
) -> tuple[bytes, bytes, Mapping[str, str]]:
    """Path, host and headers of a request for ``route``: a forwarding proxy gets the
    absolute URL and the proxy's credentials."""
    if route.forward:
        path = b"http://" + host + path
        if route.authorization:
            headers = {**headers, "Proxy-Authorization": route.authorization}
    return path, host, headers


def _encode(
    route: Route,
    method: str,
    path: bytes,
    host: bytes,
    headers: Mapping[str, str],
    body: bytes | None,
) -> bytes:
    """A request's bytes for ``route``."""
    path, host, headers = _target(route, path, host, headers)
    return h1.encode_request(method, path, host, headers, body)
