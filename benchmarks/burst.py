"""The burst client of scenario 6: N streams whose connects all leave in one pass.

Bare non-blocking sockets driven by event-loop callbacks, with no task, transport or
HTTP parser per stream, so that the generator's own cost per connection stays far
below any gateway's. One plain loop creates each socket and issues its ``connect``
right after the previous one: the burst is as simultaneous as one process can make
it, and each stream's clock starts at its own ``connect``. Requests carry
``Connection: close``; a stream ends when the server closes.

A stream's reading pauses once its first token arrived, and all paused streams are
read to their end when every stream has its first token (or failed), or at the latest
``RESUME_AFTER`` seconds into the burst, so one stalled stream cannot hold the others
past their end (and be counted against them): the rest of
each answer, a few KiB, waits in the kernel's socket buffer, so the server's writes
are not slowed, and the generator spends the first-token phase on nothing but
connects and first reads. Only times and raw bytes are kept; the HTTP framing is
decoded afterwards (:func:`decode`), outside the measured window.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

#: paused streams are read on at the latest this long after the burst began (seconds)
RESUME_AFTER = 10.0


class Record(Protocol):
    """What the burst fills in for each stream (``loadgen.Outcome``)."""

    start: float
    connect: float | None
    ttft: float | None
    total: float | None
    raw: bytes
    error: str | None


def request_bytes(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """Host, port and the raw HTTP/1.1 request (``Connection: close``) for ``url``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return host, port, "\r\n".join(lines).encode() + body


def decode_http(raw: bytes) -> tuple[str | None, bytes]:
    """Split a raw HTTP/1.1 response into (error or None, body without chunked framing)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return "no response head", raw
    status = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"200":
        return f"status {status[1].decode(errors='replace') if len(status) > 1 else '?'}", rest
    if b"transfer-encoding: chunked" not in head.lower():
        return None, rest  # Content-Length or close-delimited: the rest is the body
    body: list[bytes] = []
    pos = 0
    while True:
        eol = rest.find(b"\r\n", pos)
        if eol < 0:
            return "truncated chunked body", b"".join(body)
        try:
            size = int(rest[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            return f"bad chunk size {rest[pos:eol][:20]!r}", b"".join(body)
        if size == 0:
            return None, b"".join(body)
        body.append(rest[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2
        if pos > len(rest):
            return "truncated chunked body", b"".join(body)


class _Stream:
    """One connection's callbacks: connected → send the request → read until closed."""

    __slots__ = ("burst", "out", "parts", "paused", "sock")

    def __init__(self, burst: _Burst, out: Record) -> None:
        self.burst = burst
        self.out = out
        self.sock: socket.socket | None = None
        self.parts: list[bytes] = []
        self.paused = False

    def connect(self, addr: tuple[str, int]) -> None:
        sock = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.out.start = time.perf_counter()
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            self.finish(errno.errorcode.get(err, str(err)))
            return
        self.burst.loop.add_writer(sock, self.connected)

    def connected(self) -> None:
        sock = self.sock
        assert sock is not None
        self.burst.loop.remove_writer(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.finish(errno.errorcode.get(err, str(err)))
            return
        self.out.connect = time.perf_counter() - self.out.start
        try:
            sent = sock.send(self.burst.request)  # a few hundred bytes: one send
        except OSError as exc:
            self.finish(type(exc).__name__)
            return
        if sent != len(self.burst.request):
            self.finish("short send")
            return
        self.burst.loop.add_reader(sock, self.readable)

    def readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.finish(type(exc).__name__)
            return
        if not data:
            self.finish(None)
            return
        self.parts.append(data)
        out = self.out
        if out.ttft is None and self.burst.token(data):
            out.ttft = time.perf_counter() - out.start
            self.paused = True
            self.burst.loop.remove_reader(self.sock)
            self.burst.first_done()

    def resume(self) -> None:
        """Read the rest of the answer (after every stream's first token)."""
        if self.paused and self.sock is not None:
            self.paused = False
            self.burst.loop.add_reader(self.sock, self.readable)

    def finish(self, error: str | None) -> None:
        """Close the socket, note the end and any error; once only."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        self.out.total = time.perf_counter() - self.out.start
        self.out.error = self.out.error or error
        loop = self.burst.loop
        loop.remove_writer(sock)
        loop.remove_reader(sock)
        sock.close()
        self.out.raw = b"".join(self.parts)
        if self.out.ttft is None:
            self.burst.first_done()
        self.burst.ended()


class _Burst:
    """Shared state of one burst: loop, request, token test, streams still open."""

    def __init__(self, request: bytes, token: Callable[[bytes], object], n: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.request = request
        self.token = token
        self.open = n
        self.before_first = n  # streams with neither a first token nor an end yet
        self.streams: list[_Stream] = []
        self.all_ended: asyncio.Future[None] = self.loop.create_future()

    def first_done(self) -> None:
        """A stream got its first token or ended; the last one resumes the paused."""
        self.before_first -= 1
        if self.before_first == 0:
            self.resume_all()

    def resume_all(self) -> None:
        """Read every paused stream on to its end."""
        for stream in self.streams:
            stream.resume()

    def ended(self) -> None:
        self.open -= 1
        if self.open == 0 and not self.all_ended.done():
            self.all_ended.set_result(None)


async def run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    outcomes: list[Record],
    limit_s: float,
    token: Callable[[bytes], object],
    resume_after: float = RESUME_AFTER,
) -> None:
    """Open one connection per outcome in a single pass; return when all ended.

    Streams still open after ``limit_s`` are closed and marked ``TimeoutError``. Each
    outcome's ``raw`` is the whole HTTP response: :func:`decode` it afterwards.
    """
    host, port, request = request_bytes(url, body, headers)
    burst = _Burst(request, token, len(outcomes))
    streams = burst.streams = [_Stream(burst, out) for out in outcomes]
    for stream in streams:  # the burst itself: no await between two connects
        stream.connect((host, port))
    late = burst.loop.call_later(resume_after, burst.resume_all)
    try:
        await asyncio.wait_for(asyncio.shield(burst.all_ended), limit_s)
    except TimeoutError:
        for stream in streams:
            stream.finish("TimeoutError")
    finally:
        late.cancel()


def decode(outcomes: list[Record], token: Callable[[bytes], object]) -> None:
    """After the load: strip each raw answer to its body, note bad ones, late first tokens."""
    for out in outcomes:
        error, out.raw = decode_http(out.raw)
        out.error = out.error or error
        if out.error is None and out.ttft is None and token(out.raw):
            out.ttft = out.total  # a first token split across two reads
