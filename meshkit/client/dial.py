"""Opening one TCP connection: every address of a name, raced; tunnels through proxies.

A name may resolve to several addresses, IPv6 and IPv4; the first may be dead (a
``localhost`` resolving to ``::1`` with the server listening on IPv4 only, a host whose
IPv6 route is a black hole). :func:`connect` tries them all the Happy Eyeballs way
(RFC 8305): families interleaved, each attempt given a head start of :data:`STAGGER`
seconds before the next begins beside it, a failed attempt starting the next at once,
the first connected socket winning and the others closed.

:func:`tunnel` asks an HTTP proxy to ``CONNECT`` a connected socket through to an
upstream, before TLS starts on it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

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
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    if ip.version == 6:
        return [(socket.AF_INET6, (host, port, 0, 0))]
    return [(socket.AF_INET, (host, port))]


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
