"""Opening one TCP connection: every address of a name, raced; tunnels through proxies.

A name may resolve to several addresses, IPv6 and IPv4; the first may be dead (a
``localhost`` resolving to ``::1`` with the server listening on IPv4 only, a host whose
IPv6 route is a black hole). :func:`connect` tries them all the Happy Eyeballs way
(RFC 8305): families interleaved, each attempt given a head start of :data:`STAGGER`
seconds before the next begins beside it, a failed attempt starting the next at once,
the first connected socket winning and the others closed.

:func:`open_connection` is what the pool calls: a name with a single address (an IP
literal, as most upstreams are given) has nothing to race, so the event loop connects
its own transport in one step, without a Python socket, a task per attempt or a wait
set. A burst of new upstream connections costs about half the CPU that way
(``benchmarks/results/optimisations.md``, issue 16).

:func:`tunnel` asks an HTTP proxy to ``CONNECT`` a connected socket through to an
upstream, before TLS starts on it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

P = TypeVar("P", bound=asyncio.BaseProtocol)

#: Seconds an attempt runs alone before the next address is tried beside it (RFC 8305's
#: "connection attempt delay": 250 ms is its recommended value).
STAGGER = 0.25

#: Longest answer head a proxy may send to ``CONNECT``.
TUNNEL_HEAD_LIMIT = 1 << 16

Address = tuple[int, Any]
"""One address to try: ``(family, sockaddr)`` as ``getaddrinfo`` gives them."""

Resolver = Callable[[str, int], Awaitable[Sequence[Address]]]
"""Turns ``(host, port)`` into the addresses to try, in the order to try them."""


class TunnelRefused(OSError):
    """The proxy did not open the tunnel (its status line says why)."""


async def resolve(host: str, port: int) -> list[Address]:
    """The addresses of ``host`` (an IP literal is its own only address)."""
    own = literal(host, port)
    if own is not None:
        return list(own)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


@functools.lru_cache(maxsize=256)
def literal(host: str, port: int) -> tuple[Address, ...] | None:
    """``host:port`` as its own only address when ``host`` is an IP literal, else None
    (kept: a pool asks about the same few upstreams over and over)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6:
        return ((socket.AF_INET6, (host, port, 0, 0)),)
    return ((socket.AF_INET, (host, port)),)


class SharedLookups:
    """A :data:`Resolver` for one pool: each name looked up once at a time.

    A burst of new connections to one upstream would otherwise ask the system's
    resolver the same question once per connection, each lookup a trip through the
    loop's thread pool (and, in a container, to a DNS server). Dials that ask while a
    lookup of the same name is running share its answer (or its failure); nothing is
    kept once it is given, so a name that moves is followed at the next lookup. An IP
    literal is its own address, without a lookup.
    """

    def __init__(self, resolver: Resolver = resolve) -> None:
        self._resolver = resolver
        self._running: dict[tuple[str, int], asyncio.Future[Sequence[Address]]] = {}

    async def __call__(self, host: str, port: int) -> Sequence[Address]:
        own = literal(host, port)
        if own is not None:
            return own
        key = (host, port)
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(self._resolver(host, port))
            self._running[key] = running
            running.add_done_callback(lambda done: self._settled(key, done))
        # shielded: a dial given up (its caller left) must not cancel the others' lookup
        return await asyncio.shield(running)

    def _settled(self, key: tuple[str, int], done: asyncio.Future[Sequence[Address]]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: every dial that waited may have left


def interleave(addresses: Sequence[Address]) -> list[Address]:
    """``addresses`` with families alternating, the first one's family first."""
    if not addresses:
        return []
    first = addresses[0][0]
    same = [a for a in addresses if a[0] == first]
    other = [a for a in addresses if a[0] != first]
    out: list[Address] = []
    for i in range(max(len(same), len(other))):
        out.extend(group[i] for group in (same, other) if i < len(group))
    return out


async def _attempt(family: int, sockaddr: Any) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _discard(task: asyncio.Task[socket.socket]) -> None:
    """Close the socket of an attempt that lost the race (or silence its failure)."""
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().close()


async def happy_eyeballs(
    addresses: Sequence[Address], *, stagger: float = STAGGER
) -> socket.socket:
    """The first of ``addresses`` to connect, tried in order with staggered starts.

    Raises:
        OSError: Every address failed (the first failure's reason is given).
    """
    queue = list(addresses)
    if not queue:
        raise OSError("the name resolved to no address")
    running: set[asyncio.Task[socket.socket]] = set()
    errors: list[BaseException] = []
    try:
        while queue or running:
            if queue:
                family, sockaddr = queue.pop(0)
                running.add(asyncio.ensure_future(_attempt(family, sockaddr)))
            done, _ = await asyncio.wait(
                running, timeout=stagger if queue else None, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                running.discard(task)
                exc = task.exception()
                if exc is None:
                    for other in done - {task}:
                        _discard(other)
                    return task.result()
                errors.append(exc)
        first = errors[0]
        raise OSError(getattr(first, "errno", None), _reason(first)) from first
    finally:
        for task in running:
            task.cancel()
            task.add_done_callback(_discard)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def connect(
    host: str, port: int, *, resolver: Resolver = resolve, stagger: float = STAGGER
) -> socket.socket:
    """A connected, non-blocking socket to ``host:port`` (every address raced)."""
    addresses = await resolver(host, port)
    return await happy_eyeballs(interleave(addresses), stagger=stagger)


def one_step(addresses: Sequence[Address]) -> tuple[int, str, int] | None:
    """``(family, ip, port)`` when there is exactly one address, plain enough for the
    loop to connect by itself (an IPv6 address with a flow or scope id is not).

    The pool asks this once per upstream of an IP literal's address and then opens
    each new connection to it with ``loop.create_connection`` alone
    (:meth:`meshkit.client.pool.Pool.connection`)."""
    if len(addresses) != 1:
        return None
    family, sockaddr = addresses[0]
    if family not in (socket.AF_INET, socket.AF_INET6) or any(sockaddr[2:]):
        return None
    return family, sockaddr[0], sockaddr[1]


async def open_connection(
    factory: Callable[[], P],
    host: str,
    port: int,
    *,
    resolver: Resolver = resolve,
    tls: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    stagger: float = STAGGER,
) -> P:
    """A protocol from ``factory`` connected to ``host:port`` (TLS on top with ``tls``).

    One address: the loop opens the connection itself. Several: they are raced
    (:func:`happy_eyeballs`) and the winning socket handed to the loop.

    Raises:
        OSError: No address could be connected (or :class:`ssl.SSLError` for TLS).
    """
    loop = asyncio.get_running_loop()
    addresses = await resolver(host, port)
    one = one_step(addresses)
    if one is not None:
        family, ip, ip_port = one
        _, protocol = await loop.create_connection(
            factory, ip, ip_port, family=family, ssl=tls, server_hostname=server_hostname
        )
        return protocol
    sock = await happy_eyeballs(interleave(addresses), stagger=stagger)
    try:
        _, protocol = await loop.create_connection(
            factory, sock=sock, ssl=tls, server_hostname=server_hostname
        )
    except BaseException:
        sock.close()
        raise
    return protocol


def _connect_request(host: str, port: int, authorization: str | None) -> bytes:
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {shown} HTTP/1.1", f"Host: {shown}"]
    if authorization:
        lines.append(f"Proxy-Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def tunnel(sock: socket.socket, host: str, port: int, authorization: str | None) -> None:
    """Ask the HTTP proxy at the other end of ``sock`` to connect it to ``host:port``.

    Returns once the proxy answered 2xx; the socket then carries bytes to and from the
    upstream. Raises :class:`TunnelRefused` with the proxy's status line otherwise.
    """
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, _connect_request(host, port, authorization))
    head = b""
    while b"\r\n\r\n" not in head:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise TunnelRefused("the proxy closed the connection instead of answering CONNECT")
        head += data
        if len(head) > TUNNEL_HEAD_LIMIT:
            raise TunnelRefused("the proxy's answer to CONNECT is over 64 KiB")
    status_line = head.partition(b"\r\n")[0]
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TunnelRefused(f"the proxy answered CONNECT with {status_line[:80]!r}")
    if not 200 <= int(parts[1]) < 300:
        raise TunnelRefused(f"the proxy answered CONNECT with {' '.join(parts[1:])}")
    if head.index(b"\r\n\r\n") + 4 != len(head):
        # The upstream speaks only after our TLS hello: bytes past the head are not ours.
        raise TunnelRefused("the proxy sent bytes after its answer to CONNECT")
