"""Keep-alive connections per upstream, opened the way each upstream must be reached.

A :class:`Pool` keeps idle :class:`~meshkit.client.connection.Connection` objects per
``(scheme, host, port)`` and opens new ones: directly (every address of the name raced,
:mod:`meshkit.client.dial`), through an HTTP proxy that forwards absolute-form requests,
or through a ``CONNECT`` tunnel with TLS to the upstream inside it
(:mod:`meshkit.client.proxy`).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable

import attrs

from . import dial
from .connection import Connection as Connection
from .h1 import ConnectFailed
from .limits import Deadlines, Dials
from .proxy import Proxies, Proxy

Key = tuple[str, str, int]


@attrs.frozen
class Route:
    """How requests to one upstream travel.

    Attributes:
        proxy: The proxy in between, or None (direct).
        forward: Requests go to ``proxy`` in absolute form (an ``http://`` upstream);
            otherwise a proxied connection is a ``CONNECT`` tunnel.
    """

    proxy: Proxy | None = None
    forward: bool = False

    @property
    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` a forwarded request carries."""
        return self.proxy.authorization if self.forward and self.proxy else None


DIRECT = Route()


@attrs.frozen
class _Step:
    """A new connection the loop opens in one step (see :meth:`Pool._one_step`)."""

    factory: Callable[[], Connection]
    family: int
    ip: str
    port: int
    tls: ssl.SSLContext | None
    server_hostname: str | None
    #: What a failure's reason is prefixed with (the proxy it went through).
    where: str


class Pool:
    """Idle keep-alive connections per ``(scheme, host, port)``.

    ``keepalive`` is how long an idle connection is kept; one sweeper per pool closes
    the older ones, armed only while some connection is idle. ``https`` upstreams are
    verified with ``tls``, by default the system's trusted CAs
    (:func:`ssl.create_default_context`, which honours ``SSL_CERT_FILE``). ``proxies``
    says which upstreams are reached through a proxy (default: none); ``resolver``
    turns a name into addresses (default: the system's, :func:`meshkit.client.dial.resolve`),
    asked once at a time per name however many connections are being opened
    (:class:`~meshkit.client.dial.SharedLookups`).
    """

    def __init__(
        self,
        *,
        keepalive: float = 30.0,
        max_idle: int = 256,
        tls: ssl.SSLContext | None = None,
        proxies: Proxies | None = None,
        resolver: dial.Resolver = dial.resolve,
    ) -> None:
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._idle: dict[Key, list[Connection]] = {}
        self._busy: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._tls = tls
        self._proxies = proxies or Proxies()
        self._routes: dict[Key, Route] = {}
        self._resolver = dial.SharedLookups(resolver)
        self._steps: dict[Key, _Step | None] = {}
        self._dials = Dials()
        #: When each connection's awaited answer must have begun (Connection.expire_at).
        self.deadlines: Deadlines[Connection] = Deadlines(Connection.overdue)
        self.closed = False

    @property
    def in_use(self) -> int:
        """Connections carrying a request now."""
        return len(self._busy)

    @property
    def idle(self) -> int:
        """Connections kept open for reuse now, over every upstream."""
        return sum(len(conns) for conns in self._idle.values())

    def route(self, key: Key) -> Route:
        """How requests to ``key`` travel (decided once per upstream)."""
        route = self._routes.get(key)
        if route is None:
            scheme, host, port = key
            proxy = self._proxies.for_upstream(scheme, host, port)
            route = DIRECT if proxy is None else Route(proxy, forward=scheme == "http")
            self._routes[key] = route
        return route

    async def connection(
        self, key: Key, *, within: float, fresh: bool = False, reuse: bool = True
    ) -> Connection:
        """An idle pooled connection to ``key``, or a new one opened within ``within`` s.

        ``reuse=False`` always opens a new one; ``fresh=True`` also leaves it out of
        the pool's accounting (a health probe's own connection, closed after use).

        Raises:
            TimeoutError: No connection within ``within`` s.
            ConnectFailed: The connection could not be opened.
        """
        if self.closed:
            raise RuntimeError("the connection pool is closed")
        if reuse and not fresh:
            conn = self.idle_connection(key)
            if conn is not None:
                return conn
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("Pool.connection must be called in a task")
        cancelling = task.cancelling()
        dials = self._dials
        dials.add(task, loop.time() + within)
        try:
            try:
                step = self._steps[key]
            except KeyError:
                step = self._one_step(key)
            if step is None:
                conn = await self._open(key)
            else:
                try:
                    _, conn = await loop.create_connection(
                        step.factory,
                        step.ip,
                        step.port,
                        family=step.family,
                        ssl=step.tls,
                        server_hostname=step.server_hostname,
                    )
                except OSError as exc:  # ssl.SSLError is one too
                    raise ConnectFailed(key[1], key[2], step.where + _why(exc)) from exc
        except asyncio.CancelledError as exc:
            if dials.done(task, cancelling):
                raise TimeoutError from exc
            raise
        except BaseException:
            dials.done(task, cancelling)
            raise
        dials.done(task, cancelling)
        if not fresh:
            self._busy.add(conn)
        return conn

    def idle_connection(self, key: Key) -> Connection | None:
        """An idle pooled connection to ``key``, now taken (None: none is open).

        Raises:
            RuntimeError: The pool is closed.
        """
        if self.closed:
            raise RuntimeError("the connection pool is closed")
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                self._busy.add(conn)
                return conn
        return None

    def _one_step(self, key: Key) -> _Step | None:
        """How the loop opens a new connection to ``key`` by itself, or None: the
        name must be resolved (and its addresses raced), or a tunnel set up first.

        Decided once per upstream: an IP literal (most upstreams are given as one)
        reached directly or through a forwarding proxy given as one is a single
        ``create_connection``, without a lookup or a coroutine of meshkit's.
        """
        scheme, host, port = key
        route = self.route(key)
        proxy = route.proxy
        step: _Step | None = None
        if proxy is None or route.forward:
            to_host, to_port = (host, port) if proxy is None else (proxy.host, proxy.port)
            one = dial.one_step(dial.literal(to_host, to_port) or ())
            if one is not None:
                tls = self._context() if scheme == "https" else None
                step = _Step(
                    functools.partial(Connection, self, key),
                    *one,
                    tls,
                    host if tls else None,
                    f"through proxy {proxy.name}: " if proxy else "",
                )
        self._steps[key] = step
        return step

    def _context(self) -> ssl.SSLContext:
        """The TLS context ``https`` upstreams are verified with (made on first use)."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def _open(self, key: Key) -> Connection:
        scheme, host, port = key
        route = self.route(key)
        proxy = route.proxy
        tls = self._context() if scheme == "https" else None
        factory = lambda: Connection(self, key)  # noqa: E731
        if proxy is None or route.forward:
            # Straight to the upstream, or to a proxy taking absolute-form requests: one
            # step, as no tunnel has to be set up before the first byte of HTTP.
            to_host, to_port = (host, port) if proxy is None else (proxy.host, proxy.port)
            try:
                return await dial.open_connection(
                    factory,
                    to_host,
                    to_port,
                    resolver=self._resolver,
                    tls=tls,
                    server_hostname=host if tls else None,
                )
            except OSError as exc:  # ssl.SSLError is one too
                where = f"through proxy {proxy.name}: " if proxy else ""
                raise ConnectFailed(host, port, where + _why(exc)) from exc
        try:
            sock = await dial.connect(proxy.host, proxy.port, resolver=self._resolver)
        except OSError as exc:
            raise ConnectFailed(host, port, f"through proxy {proxy.name}: {_why(exc)}") from exc
        try:
            await dial.tunnel(sock, host, port, proxy.authorization)
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(
                factory, sock=sock, ssl=tls, server_hostname=host if tls else None
            )
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError):
                raise ConnectFailed(host, port, f"through proxy {proxy.name}: {_why(exc)}") from exc
            raise
        return conn

    def put_back(self, conn: Connection) -> None:
        """``conn`` finished its request and may carry another one."""
        self._busy.discard(conn)
        idle = self._idle.setdefault(conn.key, [])
        if self.closed or len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.keepalive / 2, self._sweep)

    def forget(self, conn: Connection) -> None:
        """``conn`` is closing: it is neither busy nor idle any more."""
        self._busy.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self.keepalive
        left = False
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since <= oldest]:
                idle.remove(conn)
                conn.close()
            left = left or bool(idle)
        if left:
            self._sweeper = loop.call_later(self.keepalive / 2, self._sweep)

    def close(self) -> None:
        """Close every connection, idle or busy."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            if conn.response is not None:
                conn.response.close()
            conn.close()
        self._busy.clear()


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or "certificate verify failed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
