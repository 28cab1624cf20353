"""Serving an app with the lean intake in front: the runner, the site, ``run_app``.

``meshkit serve``, :meth:`meshkit.App.run` and :func:`meshkit.testing.serve_app` serve
through :class:`IntakeRunner`: aiohttp's own runner (its server, the app's startup,
shutdown and cleanup) whose listening socket starts every connection on the lean
intake when the app has a gate (:data:`~meshkit.gateway.fastpath.GATE`), and on aiohttp
otherwise. Shutdown runs in aiohttp's order — stop listening and close idle
connections, the app's ``on_shutdown`` (the drain: in-flight counts include the lean
intake's requests), then the servers wait for what is left, at most
``shutdown_timeout``, and cancel it — before the app's cleanup closes the mesh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import structlog
from aiohttp import web

from .fastpath import GATE
from .intake import KEEPALIVE, Intake

log = structlog.get_logger(__name__)


class IntakeRunner(web.AppRunner):
    """aiohttp's app runner with the lean intake in front of its server when the app
    has a :data:`~meshkit.gateway.fastpath.GATE` that still fits it."""

    def __init__(
        self,
        app: web.Application,
        *,
        keepalive_timeout: float = KEEPALIVE,
        shutdown_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            app, keepalive_timeout=keepalive_timeout, shutdown_timeout=shutdown_timeout, **kwargs
        )
        self._keepalive = keepalive_timeout
        self._grace = shutdown_timeout
        self.intake: Intake | None = None

    async def setup(self) -> None:
        await super().setup()
        gate = self.app.get(GATE)
        if gate is None:
            return
        if not gate.fits(self.app):
            log.info("meshkit.gateway.intake_off", reason="the app's middlewares were changed")
            return
        assert self.server is not None
        self.intake = Intake(gate, self.server, keepalive_timeout=self._keepalive)

    async def shutdown(self) -> None:
        await super().shutdown()  # the app's on_shutdown: the drain
        if self.intake is not None:
            await self.intake.shutdown(self._grace)

    def site(self, host: str, port: int, *, backlog: int = 128) -> web.BaseSite:
        """A TCP site on ``host:port``: the lean intake's, or aiohttp's when it has none."""
        if self.intake is None:
            return web.TCPSite(self, host, port, backlog=backlog)
        return IntakeSite(self, self.intake, host, port, backlog=backlog)


class IntakeSite(web.BaseSite):
    """A listening TCP socket whose connections start on the lean intake."""

    def __init__(
        self, runner: IntakeRunner, intake: Intake, host: str, port: int, *, backlog: int
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._intake = intake
        self._host = host
        self._port = port
        self._backlog_size = backlog

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._intake, self._host, self._port, backlog=self._backlog_size, reuse_address=True
        )

    async def stop(self) -> None:
        self._intake.close_idle()
        await super().stop()


def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    backlog: int = 128,
    ready: Callable[[], None] | None = None,
    shutdown_timeout: float = 60.0,
    handle_signals: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
    **server: Any,
) -> None:
    """Serve ``app`` until interrupted, as ``web.run_app`` does, with the lean intake
    in front when the app has one; ``ready`` is called once the port listens."""
    loop = loop or asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(
        _serve_forever(app, host, port, backlog, ready, shutdown_timeout, handle_signals, server)
    )
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with suppress(asyncio.CancelledError):
            loop.run_until_complete(main)
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve_forever(
    app: web.Application,
    host: str,
    port: int,
    backlog: int,
    ready: Callable[[], None] | None,
    shutdown_timeout: float,
    handle_signals: bool,
    server: dict[str, Any],
) -> None:
    runner = IntakeRunner(
        app, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout, **server
    )
    await runner.setup()
    try:
        await runner.site(host, port, backlog=backlog).start()
        if ready is not None:
            ready()
        await asyncio.Event().wait()  # until cancelled (a signal, or the caller)
    finally:
        await runner.cleanup()
