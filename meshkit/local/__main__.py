"""``python -m meshkit.local``: serve the local model over the OpenAI dialect on its own port.

Prints its progress on stderr (assembling, loading, ``ready on http://host:port``) and
stops cleanly on SIGTERM or SIGINT. ``meshkit serve`` runs it as a managed child
process through :class:`~meshkit.local.process.LocalServer`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Sequence

import structlog

from ..graph.embedded import READY_PREFIX


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m meshkit.local",
        description="Serve a GGUF model (default: the bundled Gemma 3 270M) over HTTP.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8009, help="port to bind (0: any free)")
    parser.add_argument("--model", default=None, help="GGUF file (default: bundled Gemma)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp CPU threads")
    parser.add_argument("--context", type=int, default=4096, help="context window, tokens")
    parser.add_argument("--name", default="local-llm", help="node name in logs")
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when stdin closes (set by a parent process that manages this one)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the local model server until SIGTERM/SIGINT; return the exit status."""
    args = _parser().parse_args(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(args.log_level.upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    except (ImportError, OSError, ValueError) as exc:
        _say(f"error: {exc}")
        return 1


async def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..gateway import build_service_app
    from .service import LocalLLM

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.watch_stdin:
        _watch_stdin(loop, stop)

    service = LocalLLM(
        args.name,
        model=args.model,
        threads=args.threads,
        context=args.context,
        progress=_say,
    )
    try:
        if not await _until_stopped(service.open(), stop):
            _say("stopped before the model was ready")
            return 0
        app = build_service_app(service, embeddings=service)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, args.host, args.port)
            await site.start()
            port = _bound_port(runner, args.port)
            _say(f"{READY_PREFIX}http://{args.host}:{port}")
            await stop.wait()
            _say("stopping ...")
        finally:
            await runner.cleanup()
    finally:
        await service.close()
    return 0


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first; True if it finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _bound_port(runner: object, requested: int) -> int:
    addresses = getattr(runner, "addresses", [])
    for address in addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Stop when the parent closes our stdin, including when it dies without cleanup."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="meshkit-stdin-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
