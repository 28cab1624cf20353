"""CPU per new upstream connection: meshkit's pool against the bare event loop.

A burst opens one upstream connection per stream. This opens ``--n`` at once, several
times over, each way in turn, and prints the client process's CPU (user + system) per
connection, so what is meshkit's own (pool, dial, timers) stands apart from what the
loop and the kernel cost anyway:

- ``loop``: ``loop.create_connection`` to the IP literal with a bare protocol (the
  floor: uvloop and the kernel's loopback handshake);
- ``pool``: ``Pool.connection(key, within=..., reuse=False)``, as a call that finds no
  idle connection opens one;
- ``client``: a whole ``HttpClient.start`` of a ``POST`` on a new connection, answered
  by the listener with a 200 and an empty body, then ``finish``.

The listener runs in a child process (pinned with ``--server-cpu``); the dialer is
pinned with ``--cpu``. Usage::

    python benchmarks/dial_cost.py --n 1000 --reps 5
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import statistics

import uvloop

from meshkit.client.http import HttpClient
from meshkit.client.limits import Timeouts
from meshkit.client.pool import Pool

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: application/json\r\n\r\n"


class _Answer(asyncio.Protocol):
    """Answers every request head with an empty 200 (keep-alive)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.transport.write(ANSWER)  # type: ignore[attr-defined]


def _serve(sock: socket.socket, cpu: int) -> None:
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Answer, sock=sock, backlog=4096)
        await server.serve_forever()

    uvloop.run(main())


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _loop_way(port: int, n: int) -> float:
    loop = asyncio.get_running_loop()
    start = _cpu()
    pairs = await asyncio.gather(
        *(loop.create_connection(asyncio.Protocol, "127.0.0.1", port) for _ in range(n))
    )
    spent = _cpu() - start
    for transport, _ in pairs:
        transport.close()
    return spent


async def _pool_way(port: int, n: int) -> float:
    pool = Pool()
    key = ("http", "127.0.0.1", port)
    start = _cpu()
    await asyncio.gather(*(pool.connection(key, within=5.0, reuse=False) for _ in range(n)))
    spent = _cpu() - start
    pool.close()
    return spent


async def _client_way(port: int, n: int) -> float:
    client = HttpClient()
    await client.open()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    timeouts = Timeouts()
    loop = asyncio.get_running_loop()

    async def one() -> None:
        response = await client.start(
            "POST",
            url,
            service="bench",
            timeouts=timeouts,
            body=b"{}",
            headers={"Authorization": "Bearer x"},
            more_headers={"X-Request-ID": "r"},
            answer_by=loop.time() + 60,
        )
        response.in_time()
        client.finish(response, ok=True)

    start = _cpu()
    # All start in one pass of the loop, before any connection is made: each opens
    # its own, as in a cold burst.
    await asyncio.gather(*(one() for _ in range(n)))
    spent = _cpu() - start
    await client.close()
    return spent


WAYS = {"loop": _loop_way, "pool": _pool_way, "client": _client_way}


async def _run(port: int, n: int, reps: int, ways: list[str]) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(2):  # warm-up: imports, caches, the listener's first accepts
        for way in ways:
            await WAYS[way](port, min(n, 100))
    for rep in range(reps):
        order = ways[rep % len(ways) :] + ways[: rep % len(ways)]
        for way in order:
            await asyncio.sleep(0.2)  # the previous round's closes settle
            got[way].append(await WAYS[way](port, n) / n * 1e6)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--ways", default="loop,pool,client")
    args = parser.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(
        target=_serve, args=(listener, args.server_cpu), daemon=True
    )
    server.start()
    listener.close()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    try:
        got = uvloop.run(_run(port, args.n, args.reps, args.ways.split(",")))
    finally:
        server.terminate()
        server.join()
    for way, figures in got.items():
        print(
            f"{way:7s} µs CPU per connection: median {statistics.median(figures):6.1f}"
            f"  ({min(figures):.1f}…{max(figures):.1f}, {len(figures)} reps)"
        )


if __name__ == "__main__":
    main()
