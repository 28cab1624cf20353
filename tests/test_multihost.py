"""Gateway and two LLM replicas on three network "hosts" (namespaces); cut one's link.

Topology (made and removed by the test; addresses used only inside its namespaces)::

    [mk-gw: gateway, load]  g1 10.213.1.1/30 ── r1 10.213.1.2/30  [mk-r1: fake LLM "r1"]
                            g2 10.213.2.1/30 ── r2 10.213.2.2/30  [mk-r2: fake LLM "r2"]

Steady load runs from inside the gateway's namespace. The replica's link is cut with
``ip link set down`` on its side (a silent loss: no reset reaches the gateway), then
brought back. Each fake streams its own name as the first token, so every answer says
which replica served it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import until

ROOT = Path(__file__).resolve().parent.parent
TAG = f"{os.getpid() % 100000}"
GW, R1, R2 = f"mkgw{TAG}", f"mkr1{TAG}", f"mkr2{TAG}"
REPLICAS = {"r1": ("10.213.1.1", "10.213.1.2", R1), "r2": ("10.213.2.1", "10.213.2.2", R2)}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 (`ip`) to create network namespaces",
)

#: The load generator, run inside the gateway's namespace: WORKERS streams at a time,
#: one JSON line per finished request, until its stdin closes.
LOADGEN = r"""
import asyncio, json, sys, time
import aiohttp

URL = "http://127.0.0.1:8008/v1/chat/completions"
BODY = {"model": "llama3.2:1b", "stream": True,
        "messages": [{"role": "user", "content": "hi"}]}

async def one(session):
    start = time.monotonic()
    out = {"start": start, "replica": None, "outcome": None, "first": None}
    try:
        async with session.post(URL, json=BODY) as resp:
            if resp.status != 200:
                out["outcome"] = f"status:{resp.status}"
                return out
            buf = b""
            async for data in resp.content.iter_any():
                buf += data
            events = [b[6:] for b in buf.decode().split("\n\n") if b.startswith("data: ")]
            for e in events:
                if e != "[DONE]":
                    obj = json.loads(e)
                    for c in obj.get("choices") or ():
                        text = (c.get("delta") or {}).get("content")
                        if text and out["replica"] is None:
                            out["replica"] = text.strip()
            if events and events[-1] == "[DONE]":
                out["outcome"] = "ok"
            elif events and "error" in json.loads(events[-1]):
                out["outcome"] = "error_event"
            else:
                out["outcome"] = "truncated"
    except Exception as exc:
        out["outcome"] = f"exc:{type(exc).__name__}"
    finally:
        out["end"] = time.monotonic()
    return out

async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.read() or stop.set())
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def worker():
            while not stop.is_set():
                print(json.dumps(await one(session)), flush=True)
        await asyncio.gather(*(worker() for _ in range(int(sys.argv[1]))))

asyncio.run(main())
"""


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=20)


def make_network() -> None:
    ip("netns", "add", GW)
    ip("-n", GW, "link", "set", "lo", "up")
    for name, (gw_addr, addr, ns) in REPLICAS.items():
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
        gw_if, r_if = f"g{name[1]}{TAG}", f"{name}{TAG}"
        ip("link", "add", gw_if, "netns", GW, "type", "veth", "peer", "name", r_if, "netns", ns)
        ip("-n", GW, "addr", "add", f"{gw_addr}/30", "dev", gw_if)
        ip("-n", ns, "addr", "add", f"{addr}/30", "dev", r_if)
        ip("-n", GW, "link", "set", gw_if, "up")
        ip("-n", ns, "link", "set", r_if, "up")


def remove_network() -> None:
    for ns in (GW, R1, R2):
        ip("netns", "del", ns, check=False)


class Proc:
    """A process in a namespace, its output in a file."""

    def __init__(self, ns: str, args: list[str], log: Path, **kwargs: Any) -> None:
        self.log = log
        self._file = log.open("wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MESHKIT_LOG_LEVEL": "warning"}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, *args],
            stdout=kwargs.pop("stdout", self._file),
            stderr=self._file,
            cwd=ROOT,
            env=env,
            **kwargs,
        )

    async def wait_for(self, text: str, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while text not in self.log.read_text(errors="replace"):
                assert self.proc.poll() is None, self.log.read_text()
                await asyncio.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()
        return self.proc.returncode


@pytest.fixture
async def network() -> AsyncIterator[None]:
    remove_network()
    make_network()
    try:
        yield
    finally:
        remove_network()


async def test_cut_replica_link_under_load(network: None, tmp_path: Path) -> None:
    procs: list[Proc] = []
    try:
        for name, (_, addr, ns) in REPLICAS.items():
            tokens = ",".join([name] + [f"t{i}" for i in range(9)])
            fake = Proc(
                ns,
                [
                    "-m",
                    "meshkit.testing",
                    "--host",
                    addr,
                    "--port",
                    "8000",
                    "--tokens",
                    tokens,
                    "--delay",
                    "0.05",
                ],
                tmp_path / f"{name}.log",
            )
            procs.append(fake)
            await fake.wait_for("fake LLM on")
        config = tmp_path / "services.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "services": {
                        "llm": {
                            "type": "llm",
                            "model": "llama3.2:1b",
                            "endpoint": ",".join(
                                f"http://{a}:8000" for _, a, _ in REPLICAS.values()
                            ),
                            "timeout": 10,
                            "connect_timeout": 1,
                            "idle_timeout": 1.5,
                            "health_interval": 0.5,
                        }
                    },
                    "pipelines": {"chat": {"nodes": ["llm"]}},
                    "gateway": {"host": "127.0.0.1", "port": 8008, "shutdown_grace": 2},
                }
            )
        )
        gateway = Proc(GW, ["-m", "meshkit", "serve", str(config)], tmp_path / "gw.log")
        procs.append(gateway)
        await gateway.wait_for("ready on")

        results: list[dict[str, Any]] = []
        load = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            GW,
            sys.executable,
            "-c",
            LOADGEN,
            "6",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

        async def collect() -> None:
            assert load.stdout is not None
            async for line in load.stdout:
                results.append(json.loads(line))

        collector = asyncio.create_task(collect())

        def served(name: str, after: float = 0.0) -> int:
            return sum(1 for r in results if r["replica"] == name and r["start"] > after)

        # Both replicas take part of the traffic.
        await until(lambda: served("r1") >= 10 and served("r2") >= 10, 30)
        assert all(r["outcome"] == "ok" for r in results), results

        ip("-n", R1, "link", "set", f"r1{TAG}", "down")
        # Taken once the link is down: a stream that started while `ip` ran may still
        # have gone to r1 and been cut, and counts as started before the cut.
        cut = time.monotonic()
        await until(lambda: sum(1 for r in results if r["start"] > cut + 0.1) >= 40, 60)
        back = time.monotonic()
        ip("-n", R1, "link", "set", f"r1{TAG}", "up")
        # The replica that comes back takes traffic again within 30 s.
        await until(lambda: served("r1", after=back) >= 3, 30)
        assert load.stdin is not None
        load.stdin.close()
        async with asyncio.timeout(60):
            await collector
            await load.wait()

        during = [r for r in results if cut < r["start"] < back]
        lost = [r for r in results if r["outcome"] != "ok"]
        print(f"total={len(results)} during_cut={len(during)} lost={len(lost)}")
        assert during, "no request started while the link was down"
        for r in results:
            if r["outcome"] == "ok":
                continue
            # Only streams already running on the cut replica are lost, with a clean
            # final error event.
            assert r["start"] < cut and r["replica"] == "r1", r
            assert r["outcome"] == "error_event", r
        assert all(r["replica"] == "r2" for r in during if r["start"] > cut + 0.1)
        assert len(lost) <= 6  # at most the streams in flight at the cut
        assert gateway.stop() == 0, gateway.log.read_text()
    finally:
        for proc in reversed(procs):
            proc.stop()
