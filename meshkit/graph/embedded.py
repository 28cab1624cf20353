"""`LocalServer`: the local model as a managed child process (``python -m meshkit.local``).

``meshkit serve`` enters it before the gateway reports ready: it starts the child,
relays its progress lines, waits until the child's ``/healthz`` answers, and on exit
stops it (SIGTERM, then SIGKILL after a grace period). The child also exits by itself
when its stdin closes, so it never outlives a parent that was killed outright.

This module needs neither llama.cpp nor the model: only the child loads them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping

import attrs
import structlog
import yarl

from .._lifecycle import Resource
from ..client.http import HttpClient
from ..client.proxy import Proxies
from ..errors import MeshError

DEFAULT_MODEL_NAME = "gemma-3-270m"
"""Name the bundled model answers to (its file stem is accepted too)."""

log = structlog.get_logger(__name__)

READY_PREFIX = "ready on "  # starts the line the child prints once it serves


class LocalServerError(MeshError, RuntimeError):
    """The local model server could not be started."""

    code = "local_server_failed"


def _print_line(line: str) -> None:
    print(f"local-llm | {line}", file=sys.stderr, flush=True)


@attrs.define
class LocalServer(Resource):
    """Run ``python -m meshkit.local`` for as long as the ``async with`` block lasts.

    Args:
        host: Interface the child binds.
        port: Port the child binds; 0 picks a free one (learned from its ready line).
        model: GGUF file to serve; None for the bundled model.
        threads: llama.cpp CPU threads in the child.
        startup_timeout: Seconds to wait for health, generous for a first start that
            assembles the model; the child's death ends the wait at once.
        stop_timeout: Seconds between SIGTERM and SIGKILL on exit.
        on_line: Receives each progress line of the child (default: our stderr).
        env: Environment for the child (default: ours).
        python: Interpreter that runs the child.
    """

    host: str = "127.0.0.1"
    port: int = 0
    model: str | None = None
    threads: int = 2
    startup_timeout: float = 600.0
    stop_timeout: float = 10.0
    on_line: Callable[[str], None] = _print_line
    env: Mapping[str, str] | None = None
    python: str = sys.executable
    _proc: asyncio.subprocess.Process | None = attrs.field(default=None, init=False)
    _relay: asyncio.Task[None] | None = attrs.field(default=None, init=False)
    _url: asyncio.Future[str] | None = attrs.field(default=None, init=False)
    _tail: collections.deque[str] = attrs.field(
        factory=lambda: collections.deque(maxlen=20), init=False
    )

    @property
    def url(self) -> str:
        """Base URL of the running child, without ``/v1``."""
        if self._url is None or not self._url.done() or self._url.exception():
            raise RuntimeError("the local server is not running")
        return self._url.result()

    @property
    def pid(self) -> int | None:
        """Process id of the child while it runs."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The child's command line."""
        cmd = [self.python, "-m", "meshkit.local", "--host", self.host, "--port", str(self.port)]
        cmd += ["--threads", str(self.threads), "--watch-stdin"]
        if self.model:
            cmd += ["--model", self.model]
        return cmd

    async def open(self) -> None:
        """Start the child and return once it is healthy."""
        loop = asyncio.get_running_loop()
        self._url = loop.create_future()
        if self.port:
            self._url.set_result(_reachable(f"http://{self.host}:{self.port}"))
        env = dict(os.environ if self.env is None else self.env, PYTHONUNBUFFERED="1")
        started = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        log.info("meshkit.local.child_started", pid=self._proc.pid, cmd=self.command())
        self._relay = asyncio.create_task(self._relay_output(self._proc))
        try:
            await self._wait_healthy(self._proc)
        except BaseException:
            await self.close()
            raise
        log.info(
            "meshkit.local.child_ready",
            pid=self._proc.pid,
            url=self.url,
            seconds=round(time.monotonic() - started, 2),
        )

    async def close(self) -> None:
        """Stop the child: SIGTERM, then SIGKILL if it lingers past ``stop_timeout``."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except TimeoutError:
                log.warning("meshkit.local.child_killed", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            log.info("meshkit.local.child_stopped", pid=proc.pid, status=proc.returncode)
        relay, self._relay = self._relay, None
        if relay is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await relay

    async def _relay_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        with contextlib.suppress(ValueError):  # a line past the reader's limit ends the relay
            await self._relay_lines(proc.stdout)

    async def _relay_lines(self, stdout: asyncio.StreamReader) -> None:
        async for raw in stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            self.on_line(line)
            if line.startswith(READY_PREFIX) and self._url and not self._url.done():
                self._url.set_result(_reachable(line[len(READY_PREFIX) :].strip()))

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        exited = asyncio.ensure_future(proc.wait())
        healthy = asyncio.ensure_future(self._poll_health())
        try:
            done, _ = await asyncio.wait(
                {exited, healthy},
                timeout=self.startup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in (exited, healthy):
                task.cancel()
        if healthy in done:
            healthy.result()
            return
        if exited in done:
            if self._relay is not None:  # let the last lines explain the failure
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(self._relay, 2.0)
            tail = "\n".join(self._tail)
            raise LocalServerError(
                f"the local model server exited with status {proc.returncode} before it "
                f"was ready; its last output:\n{tail}"
            )
        raise LocalServerError(
            f"the local model server was not healthy after {self.startup_timeout:.0f} s"
        )

    async def _poll_health(self) -> None:
        assert self._url is not None
        base = await self._url
        # meshkit's one outbound client; the child is ours, never reached via a proxy.
        async with HttpClient(proxies=Proxies()) as client:
            while True:
                if await client.probe(f"{base}/healthz", within=5.0, headers={}) is None:
                    return
                await asyncio.sleep(0.2)


def _reachable(url: str) -> str:
    """``url`` with a wildcard bind address replaced by loopback, so it can be called."""
    parsed = yarl.URL(url)
    if parsed.host in ("0.0.0.0", "", None):
        parsed = parsed.with_host("127.0.0.1")
    elif parsed.host == "::":
        parsed = parsed.with_host("::1")
    return str(parsed).rstrip("/")
