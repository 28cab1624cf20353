"""Streaming load generator: many concurrent OpenAI-dialect streams, verified afterwards.

Runs as its own process (pinned beside the upstream) and prints one JSON object. While
the load runs it only records times and keeps the raw bytes; parsing and checking
happen after the last stream ended, so verification costs the shared core nothing
during the measurement.

Each stream is timed from the request being sent to the first received piece that
contains a token (time to first token, TTFT) and to the end of the body. A stream is
*complete* when its tokens carry the sequence numbers ``0..chunks-1`` in order and it
had exactly ``chunks`` SSE events with a token in them.

``--burst`` opens every stream at the same instant, each on its own new connection
(``Connection: close``), and TTFT counts from that client's connect. The default
burst client (``burst.py``) drives bare sockets from event-loop callbacks and issues
every connect in one pass, so the generator's own cost per connection stays far below
any gateway's; ``--burst-client aiohttp`` uses aiohttp instead (no keep-alive, no pool
limit, every task released by one gate), for comparison.

Run: ``python benchmarks/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions
--concurrency 100 --requests 500 --chunks 64 --gap-ms 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import burst

#: With a real model (``--prompt``) a token is any event with non-empty content.
CONTENT = re.compile(rb'"content":\s*"(?!")')
FirstToken = Callable[[bytes], object]  # truthy when the bytes hold a token


def sequences(raw: bytes) -> list[int]:
    """Sequence numbers of the tokens (a letter, five digits, a bar: ``s00017|``) in ``raw``.

    A C-speed scan for the bar, then a look at the six bytes before it: a regular
    expression starting with a character class costs ~100 ns per byte here, which
    the generator would pay on every read while it measures.
    """
    found = []
    i = raw.find(b"|", 6)
    while i >= 0:
        digits = raw[i - 5 : i]
        if digits.isdigit() and raw[i - 6 : i - 5].isalpha():
            found.append(int(digits))
        i = raw.find(b"|", i + 1)
    return found


def has_token(data: bytes) -> bool:
    """True when ``data`` holds at least one token."""
    i = data.find(b"|", 6)
    while i >= 0:
        if data[i - 5 : i].isdigit() and data[i - 6 : i - 5].isalpha():
            return True
        i = data.find(b"|", i + 1)
    return False


_EVENT_SPLIT = re.compile(rb"\r?\n\r?\n")


class Outcome:
    """What happened to one request."""

    __slots__ = ("connect", "error", "raw", "start", "total", "ttft")

    def __init__(self) -> None:
        self.start = 0.0
        self.connect: float | None = None  # burst mode: seconds from start to connected
        self.ttft: float | None = None
        self.total: float | None = None
        self.raw = b""
        self.error: str | None = None


async def one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    client_timeout: aiohttp.ClientTimeout,
    token: FirstToken = has_token,
) -> Outcome:
    """Send one request and read the whole answer, noting the first token's time."""
    out = Outcome()
    perf = time.perf_counter
    out.start = start = perf()
    parts: list[bytes] = []
    try:
        async with session.post(url, data=body, headers=headers, timeout=client_timeout) as resp:
            if resp.status != 200:
                out.error = f"status {resp.status}"
                out.raw = await resp.read()
                return out
            async for data in resp.content.iter_any():
                if out.ttft is None and token(data):
                    out.ttft = perf() - start
                parts.append(data)
            out.total = perf() - start
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        out.error = type(exc).__name__
    out.raw = b"".join(parts)
    if out.ttft is None and out.error is None and out.total is not None:
        # a first token split across two reads is only found in the joined body
        out.ttft = out.total if token(out.raw) else None
    return out


async def burst_aiohttp(
    url: str, body: bytes, headers: dict[str, str], n: int, limit_s: float, token: FirstToken
) -> list[Outcome]:
    """Open ``n`` streams at the same instant with aiohttp, no keep-alive, no pool limit."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True, ttl_dns_cache=None)
    client_timeout = aiohttp.ClientTimeout(total=limit_s)
    gate = Gate()
    outcomes: list[Outcome] = []

    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def stream() -> None:
            await gate.wait()
            outcomes.append(await one(session, url, body, headers, client_timeout, token))

        await _release(gate, [stream() for _ in range(n)])
    return outcomes


class Gate:
    """A starting gate: tasks wait on it, and it opens for all of them in one step."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiting = 0

    async def wait(self) -> None:
        """Wait until the gate opens."""
        self.waiting += 1
        await self.event.wait()


async def _release(gate: Gate, coros: list[Any]) -> None:
    """Start every task, let each reach the gate, then open it for all at once."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    for _ in range(1000):  # one pass normally suffices: every task runs to its first await
        if gate.waiting >= len(tasks):
            break
        await asyncio.sleep(0)
    gate.event.set()
    await asyncio.gather(*tasks)


def verify(raw: bytes, chunks: int, expected_events: int) -> tuple[bool, bool, int]:
    """Return (complete, in_order, events_with_tokens) for one answer body.

    A JSON answer is one "event"; a stream has one SSE event per token.
    """
    seqs = sequences(raw)
    in_order = seqs == list(range(chunks))
    events = sum(1 for ev in _EVENT_SPLIT.split(raw) if has_token(ev))
    return in_order and events == expected_events, in_order, events


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Drive the load and return the summary."""
    prompt = args.prompt or f"bench chunks={args.chunks} gap_ms={args.gap_ms} word=s"
    payload = {
        "model": args.model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": not args.no_stream,
    }
    if args.max_tokens:
        payload["max_tokens"] = args.max_tokens
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.api_key}"}
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    results: list[Outcome] = []
    budget = args.requests
    deadline = time.perf_counter() + args.deadline
    token: FirstToken = CONTENT.search if args.prompt else has_token

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal budget
        for _ in range(args.warmup):  # untimed: opens and warms this worker's connection
            await one(session, args.url, body, headers, timeout, token)
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            results.append(await one(session, args.url, body, headers, timeout, token))

    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    if args.burst and args.burst_client == "raw":
        results = [Outcome() for _ in range(args.requests)]
        await burst.run(args.url, body, headers, list(results), args.timeout, token)
    elif args.burst:
        results = await burst_aiohttp(args.url, body, headers, args.requests, args.timeout, token)
    else:
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
    wall = time.perf_counter() - wall0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    if args.burst and args.burst_client == "raw":
        burst.decode(list(results), token)
    return summarise(results, args, wall, cpu)


def summarise(
    results: list[Outcome], args: argparse.Namespace, wall: float, cpu: float
) -> dict[str, Any]:
    """Check every answer and reduce the outcomes to figures."""
    errors: dict[str, int] = {}
    ttfts: list[float] = []
    totals: list[float] = []
    rates: list[float] = []
    complete = in_order = events = 0
    first_bad = None
    for out in results:
        if out.error is not None:
            errors[out.error] = errors.get(out.error, 0) + 1
            first_bad = first_bad or out.raw[:300].decode("utf-8", "replace")
            continue
        if out.ttft is not None:
            ttfts.append(out.ttft * 1000.0)
        if out.total is not None:
            totals.append(out.total * 1000.0)
        if args.chunks and not args.no_verify:
            ok, ordered, n = verify(out.raw, args.chunks, 1 if args.no_stream else args.chunks)
            complete += ok
            in_order += ordered
            events += n
            if not ok and first_bad is None:
                first_bad = out.raw[:300].decode("utf-8", "replace")
        else:
            n = sum(
                1 for ev in _EVENT_SPLIT.split(out.raw) if b"data:" in ev and b"[DONE]" not in ev
            )
            events += n
        if out.ttft is not None and out.total is not None and out.total > out.ttft and n > 1:
            rates.append((n - 1) / (out.total - out.ttft))  # events after the first, per second
    ok_count = len(results) - sum(errors.values())
    starts = [out.start for out in results] if args.burst else []
    connects = [out.connect * 1000.0 for out in results if out.connect is not None]
    return {
        "requests": len(results),
        "ok": ok_count,
        "errors": errors,
        "complete": complete,
        "in_order": in_order,
        "events": events,
        "expected_events": (len(results) if args.no_stream else args.chunks * len(results))
        if args.chunks
        else None,
        "ttft_ms": {
            "p50": percentile(ttfts, 50),
            "p99": percentile(ttfts, 99),
            "max": max(ttfts) if ttfts else None,
            "n": len(ttfts),
        },
        "total_ms": {
            "p50": percentile(totals, 50),
            "p99": percentile(totals, 99),
            "max": max(totals) if totals else None,
        },
        "events_per_s_p50": percentile(rates, 50),
        # burst mode: how long after the first stream's connect the last one began, and
        # how long connecting took (raw client only)
        "start_spread_ms": (max(starts) - min(starts)) * 1000.0 if starts else None,
        "connect_ms": {"p50": percentile(connects, 50), "p99": percentile(connects, 99)},
        "ttft_samples_ms": ttfts if args.samples else None,
        "wall_s": wall,
        "cpu_s": cpu,
        "first_bad": first_bad,
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print the JSON summary on stdout."""
    parser = argparse.ArgumentParser(description="streaming load generator")
    parser.add_argument("--url", required=True, help="full URL of the chat completions route")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=10, help="total requests (bounded)")
    parser.add_argument("--chunks", type=int, default=64, help="0 = do not verify (real model)")
    parser.add_argument("--gap-ms", type=float, default=5.0)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--api-key", default="sk-bench")
    parser.add_argument("--prompt", default=None, help="override the prompt (real model)")
    parser.add_argument("--max-tokens", type=int, default=0)
    parser.add_argument("--no-stream", action="store_true", help="ask for one JSON answer")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed requests per worker before the measured ones"
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="open all --requests streams at the same instant, each on a new connection",
    )
    parser.add_argument(
        "--burst-client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="burst client: bare sockets on loop callbacks (default) or aiohttp, no keep-alive",
    )
    parser.add_argument("--samples", action="store_true", help="include every TTFT")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument(
        "--deadline",
        type=float,
        default=300.0,
        help="no new request starts after this many seconds",
    )
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        summary = uvloop.run(run(args))
    except ImportError:  # pragma: no cover - depends on the environment
        summary = asyncio.run(run(args))
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
