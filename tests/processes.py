"""Real processes for end-to-end tests: ``meshkit serve`` and a Prometheus server.

Each is an async context manager that starts the process on a free loopback port,
waits (bounded) until it answers, and stops it at the end of the block, however the
block ends.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import pytest
import yaml

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


async def wait_http(url: str, proc: asyncio.subprocess.Process, within: float = 60.0) -> None:
    """Wait until ``url`` answers 200 (bounded), failing early if ``proc`` dies."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(within):
        while True:
            assert proc.returncode is None, f"{url}: the process exited"
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class Meshkit:
    """``meshkit serve FILE`` of this worktree, stderr kept in :attr:`lines`.

    Args:
        services: The services file's content.
        workdir: Where to write it.
        env: Extra environment (``OTEL_*``, ``MESHKIT_LOG_FORMAT``, ...).
    """

    def __init__(self, services: str, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.file = workdir / f"services-{self.port}.yaml"
        self.file.write_text(services)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self.env = {
            **clean,
            "PYTHONPATH": str(ROOT),
            "MESHKIT_LOG_LEVEL": "info",
            **(env or {}),
        }
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Meshkit:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshkit",
            "serve",
            str(self.file),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            env=self.env,
            cwd=str(ROOT),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        try:
            await wait_http(self.url + "/healthz", self.proc)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    async def stop(self) -> None:
        """Stop the process and read what it wrote to the end."""
        if self.proc is not None:
            await _stop(self.proc)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class Prometheus:
    """Debian's ``prometheus`` scraping ``targets`` every ``interval``, with a temporary
    configuration and data directory.

    Args:
        targets: ``host:port`` of each target (job ``meshkit``).
        workdir: Where its configuration and data live.
        interval: Scrape interval (a Prometheus duration).
    """

    def __init__(self, targets: list[str], workdir: Path, interval: str = "250ms") -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: `make test-deps` installs Debian's package")
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.data = workdir / "prometheus-data"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": interval, "scrape_timeout": interval},
                    "scrape_configs": [
                        {"job_name": "meshkit", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Prometheus:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await wait_http(self.url + "/-/ready", self.proc)
        except BaseException:
            await _stop(self.proc)
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            await _stop(self.proc)

    async def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/{path}", params=params) as resp,
        ):
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> dict[frozenset[tuple[str, str]], float]:
        """An instant query's vector, by labels (without ``job`` and ``instance``)."""
        data = await self.api("query", query=expr)
        out: dict[frozenset[tuple[str, str]], float] = {}
        for item in data["result"]:
            labels = {
                k: v for k, v in item["metric"].items() if k not in ("job", "instance", "__name__")
            }
            out[frozenset(labels.items())] = float(item["value"][1])
        return out

    async def scraped_after(self, when: float, within: float = 30.0) -> None:
        """Wait (bounded) until every target was scraped, successfully, after the Unix
        time ``when``."""
        async with asyncio.timeout(within):
            while True:
                targets = (await self.api("targets"))["activeTargets"]
                if targets and all(
                    t["health"] == "up" and _unix(t["lastScrape"]) > when for t in targets
                ):
                    return
                await asyncio.sleep(0.1)


def _unix(rfc3339: str) -> float:
    """Unix time of an RFC 3339 stamp as Prometheus writes it (nanosecond fractions)."""
    match = re.fullmatch(r"(.{19})(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert match is not None, rfc3339
    head, frac, zone = match.groups()
    whole = datetime.fromisoformat(head + ("+00:00" if zone == "Z" else zone)).timestamp()
    return whole + float("0." + (frac or "0"))
