"""The ``meshkit`` command: ``serve``, ``validate``, ``graph``, ``schema``, ``export``.

Only it configures logging.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

import stamina
import structlog

from .errors import SpecError
from .graph.mesh import Mesh
from .observability.access_log import direct, renderer


def configure_logging(level: str | None = None, fmt: str | None = None) -> bool:
    """Logs to stderr at ``level`` (default ``$MESHKIT_LOG_LEVEL`` or info), as key/value
    text for a person or, with ``fmt`` (default ``$MESHKIT_LOG_FORMAT``) ``json``, one
    JSON object per line (the standard library's records too). True for JSON."""
    fmt = (fmt or os.environ.get("MESHKIT_LOG_FORMAT") or "console").strip().lower()
    render = renderer(fmt)
    name = (level or os.environ.get("MESHKIT_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    stamp = structlog.processors.TimeStamper(fmt="iso")
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=render, foreign_pre_chain=[structlog.stdlib.add_log_level, stamp]
            )
        )
        logging.basicConfig(level=numeric, handlers=[handler])
    else:
        logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    chain = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamp,
        structlog.processors.format_exc_info,
        render,
    ]
    structlog.configure(
        processors=chain,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    direct(chain, sys.stderr, level=numeric)  # the access line skips the generic dispatch
    # meshkit reports each retry itself (meshkit.llm.retry and the retries metric);
    # stamina's default hooks would log it again and count it in prometheus_client's
    # process-wide registry, which /metrics does not serve.
    stamina.instrumentation.set_on_retry_hooks(())
    return fmt == "json"


#: Connections the kernel may hold completed for ``serve`` before it accepts them: a
#: burst of new clients must not overflow it (a dropped SYN is retried after ~1 s).
BACKLOG = 4096
#: Where Linux caps every listen backlog.
SOMAXCONN = "/proc/sys/net/core/somaxconn"


def backlog_capped(backlog: int = BACKLOG, path: str = SOMAXCONN) -> int | None:
    """The kernel's cap on listen backlogs when it is below ``backlog`` (else None, also
    where there is no such setting to read)."""
    try:
        with open(path) as f:
            cap = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return cap if cap < backlog else None


def _load(path: str) -> Mesh | None:
    try:
        return Mesh.from_file(path)
    except SpecError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a services file; print every problem; exit 1 if there are any."""
    mesh = _load(args.file)
    if mesh is None:
        return 1
    spec = mesh.spec
    print(
        f"{args.file}: ok ({len(spec.services)} services, {len(spec.pipelines)} pipelines, "
        f"{len(spec.gateway.routes)} routes)"
    )
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    """Print pipelines as Mermaid (default) or DOT, with node types and edge conditions."""
    from .graph.drawing import to_dot, to_mermaid

    mesh = _load(args.file)
    if mesh is None:
        return 1
    names = [args.pipeline] if args.pipeline else list(mesh.pipelines)
    unknown = [n for n in names if n not in mesh.pipelines]
    if unknown:
        print(
            f"{args.file}: no pipeline named {unknown[0]!r} (known: {', '.join(mesh.pipelines)})",
            file=sys.stderr,
        )
        return 1
    draw = to_dot if args.format == "dot" else to_mermaid
    for i, name in enumerate(names):
        if len(names) > 1:
            mark = "%%" if args.format == "mermaid" else "//"
            print(("\n" if i else "") + f"{mark} pipeline {name}")
        print(draw(mesh.pipelines[name]), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of services.yaml (for editors and CI checks)."""
    import json

    from .spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway until interrupted."""
    from .gateway import build_app
    from .gateway.intake_serve import run_app

    try:
        as_json = configure_logging(args.log_level)
    except ValueError as exc:
        print(f"meshkit: {exc}", file=sys.stderr)
        return 2
    mesh = _load(args.file)
    if mesh is None:
        return 1
    host = args.host or mesh.spec.gateway.host
    port = args.port or mesh.spec.gateway.port
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    app = build_app(mesh)
    # Everything loaded so far lives as long as the process: keep it out of the cyclic
    # collector's way. A young generation of 5 000 (Python: 700) cut a 1000-stream
    # burst's CPU by ~15 %, for young collections of ~3 ms instead of ~0.5 (50 000 made
    # them ~10 ms, hitting 1 % of requests at concurrency 1: optimisations.md, row 10;
    # 5 000: row 25).
    gc.collect()
    gc.freeze()
    gc.set_threshold(5000, *gc.get_threshold()[1:])

    cap = backlog_capped()
    if cap is not None:
        structlog.get_logger(__name__).warning(
            "meshkit.gateway.backlog_capped",
            backlog=BACKLOG,
            somaxconn=cap,
            hint=f"more than {cap} clients connecting at once wait ~1 s for a SYN retry; "
            f"raise net.core.somaxconn to {BACKLOG}",
        )

    def ready() -> None:
        url = f"http://{host}:{port}"
        if as_json:
            structlog.get_logger(__name__).info("meshkit.gateway.ready", url=url)
        else:
            print(f"meshkit gateway ready on {url}", file=sys.stderr, flush=True)

    # SIGTERM: the app drains for gateway.shutdown_grace itself (on_shutdown), then
    # ends open streams with a final error event; the servers' own wait only mops up.
    # The chat endpoints are read by the lean intake (gateway.intake), the rest by
    # aiohttp; both behind the same listening socket.
    run_app(
        app,
        host=host,
        port=port,
        handler_cancellation=True,
        ready=ready,
        access_log=None,
        loop=loop,
        shutdown_timeout=3.0,
        backlog=BACKLOG,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshkit`` console script."""
    parser = argparse.ArgumentParser(prog="meshkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway for a services file")
    serve.add_argument("file", nargs="?", default="services.yaml")
    serve.add_argument("--host", help="interface to bind (default: gateway.host)")
    serve.add_argument("--port", type=int, help="port to bind (default: gateway.port)")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.set_defaults(func=cmd_serve)
    validate = sub.add_parser("validate", help="check a services file and list its problems")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_validate)
    graph = sub.add_parser("graph", help="print pipelines as Mermaid or DOT")
    graph.add_argument("file", nargs="?", default="services.yaml")
    graph.add_argument("--pipeline", help="only this pipeline (default: all)")
    graph.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    graph.set_defaults(func=cmd_graph)
    schema = sub.add_parser("schema", help="print the JSON Schema of services.yaml")
    schema.set_defaults(func=cmd_schema)
    from .export.command import add_parser as add_export_parser

    add_export_parser(sub)
    args = parser.parse_args(argv)
    # Like `python -m`, let services.yaml name classes of the project it runs in.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
