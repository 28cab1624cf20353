"""Soak: thousands of requests with mixed faults; the gateway's memory and open file
descriptors must come back to where they started.

Runs `meshkit serve` as a child process in front of three fake LLM replicas (one
healthy, one whose fault changes every few hundred requests, one that is down for the
middle third), drives it with concurrent streaming and whole requests in both dialects
(some clients leave mid-stream), then lets it settle and compares /proc numbers.

    python benchmarks/soak.py --requests 6000 --concurrency 32 --out benchmarks/results/soak.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshkit.testing import FakeLLM  # noqa: E402

FAULTS = [
    {},
    {"status": 503, "retry_after": 1},
    {"status": 429},
    {"status": 500},
    {"drop_after": 2},
    {"malformed_after": 2},
    {"error_after": 3},
    {"stall_after": 2},
    {"first_delay": 3.0},
    {"delay": 0.02},
]
CLEAR = {
    "status": None,
    "retry_after": None,
    "drop_after": None,
    "malformed_after": None,
    "error_after": None,
    "stall_after": None,
    "first_delay": 0.0,
    "delay": 0.0,
}


#: Seconds to let the gateway's idle pooled upstream connections close: aiohttp checks
#: every keep-alive period (30 s), so an idle one may live up to twice that.
KEEPALIVE = 62.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_stats(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def one(session: aiohttp.ClientSession, base: str, i: int, rng: random.Random) -> str:
    dialect = rng.choice(["openai", "ollama"])
    stream = rng.random() < 0.7
    body = {
        "model": "llama3.2:1b",
        "stream": stream,
        "messages": [{"role": "user", "content": f"soak {i}"}],
    }
    path = "/v1/chat/completions" if dialect == "openai" else "/api/chat"
    leave = stream and rng.random() < 0.05
    try:
        async with session.post(base + path, json=body) as resp:
            if resp.status != 200:
                return f"status {resp.status}"
            if leave:
                await resp.content.readany()
                resp.close()
                return "client left"
            raw = await resp.read()
            tail = raw.rstrip().rsplit(b"\n", 1)[-1]
            if b'"error"' in tail:
                return "200 + error event"
            return "200 ok"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"client error {type(exc).__name__}"


async def soak(requests: int, concurrency: int) -> dict[str, object]:
    rng = random.Random(5)
    healthy, flaky, dying = FakeLLM(delay=0.005), FakeLLM(delay=0.005), FakeLLM(delay=0.005)
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(f.serve()) for f in (healthy, flaky)]
        dying_port = free_port()
        dying_cm = dying.serve(port=dying_port)
        await dying_cm.__aenter__()
        dying_up = True
        port = free_port()
        config = {
            "services": {
                "llm": {
                    "type": "llm",
                    "model": "llama3.2:1b",
                    "timeout": 2,
                    "idle_timeout": 0.5,
                    "connect_timeout": 1,
                    "health_interval": 0.5,
                    "endpoint": ",".join([*urls, f"http://127.0.0.1:{dying_port}"]),
                }
            },
            "pipelines": {"chat": {"nodes": ["llm"]}},
            "gateway": {"host": "127.0.0.1", "port": port, "max_inflight": concurrency * 2},
        }
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(config, f)
        gateway = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshkit",
            "serve",
            f.name,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "MESHKIT_LOG_LEVEL": "error", "PYTHONPATH": str(ROOT)},
        )
        assert gateway.stderr is not None
        while b"ready on" not in await gateway.stderr.readline():
            pass
        drain = asyncio.create_task(gateway.stderr.read())
        base = f"http://127.0.0.1:{port}"
        outcomes: Counter[str] = Counter()
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for i in range(50):  # warm up: imports, pools, caches
                await one(session, base, i, rng)
        await asyncio.sleep(KEEPALIVE)  # idle pooled connections expire
        start_rss, start_fds = proc_stats(gateway.pid)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.monotonic()
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(requests):
                queue.put_nowait(i)

            async def worker() -> None:
                nonlocal dying_up
                while not queue.empty():
                    i = queue.get_nowait()
                    if i % 250 == 0:
                        for key, value in {**CLEAR, **FAULTS[(i // 250) % len(FAULTS)]}.items():
                            setattr(flaky, key, value)
                        flaky.release()
                    if dying_up and requests // 3 <= i < 2 * requests // 3:
                        dying_up = False
                        dying.crash()
                        await dying_cm.__aexit__(None, None, None)
                    outcomes[await one(session, base, i, rng)] += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.monotonic() - started
            peak_rss, peak_fds = proc_stats(gateway.pid)
            flaky.release()
            revived = FakeLLM()
            async with revived.serve(port=dying_port):
                for i in range(50):
                    await one(session, base, i, rng)
        await asyncio.sleep(KEEPALIVE)  # as at the start: idle pooled connections expire
        end_rss, end_fds = proc_stats(gateway.pid)
        gateway.terminate()
        code = await gateway.wait()
        await drain
        os.unlink(f.name)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "rate": round(requests / elapsed, 1),
        "outcomes": dict(outcomes.most_common()),
        "rss_kib": (start_rss, peak_rss, end_rss),
        "fds": (start_fds, peak_fds, end_fds),
        "exit": code,
    }


def report(r: dict[str, object]) -> str:
    rss = r["rss_kib"]
    fds = r["fds"]
    assert isinstance(rss, tuple) and isinstance(fds, tuple)
    outcomes = r["outcomes"]
    assert isinstance(outcomes, dict)
    lines = [
        "# Soak: mixed faults through the gateway",
        "",
        "`python benchmarks/soak.py` — `meshkit serve` in front of three fake replicas:",
        "one healthy; one whose fault changes every 250 requests (503 + Retry-After, 429,",
        "500, drop mid-stream, malformed SSE, in-stream error, stall, late first token,",
        "slow trickle); one killed for the middle third of the run and revived at the end.",
        "70 % streaming, both dialects, 5 % of streaming clients leave mid-stream.",
        "",
        f"- requests: {r['requests']} at concurrency {r['concurrency']}, "
        f"{r['seconds']} s ({r['rate']} req/s)",
        "",
        "Start and end are measured with no client connected, after the gateway's idle",
        "pooled connections expired (keep-alive 30 s, swept every 15 s: we wait 62 s).",
        "",
        "| gateway | start | peak | after settling |",
        "|---|---|---|---|",
        f"| RSS (MiB) | {rss[0] / 1024:.1f} | {rss[1] / 1024:.1f} | {rss[2] / 1024:.1f} |",
        f"| open fds | {fds[0]} | {fds[1]} | {fds[2]} |",
        "",
        "| outcome | count |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in outcomes.items()],
        "",
        f"Gateway exit status after SIGTERM: {r['exit']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = report(asyncio.run(soak(args.requests, args.concurrency)))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
