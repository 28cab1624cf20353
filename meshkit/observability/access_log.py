"""One structured access line per request, and the renderer for ``MESHKIT_LOG_FORMAT``.

The line (event ``meshkit.request``) carries only what the record derived: ids, labels,
status, timings, token counts and an error *type*. It never holds a header, a prompt, an
answer or a credential, so it is safe to ship to any log store. ``MESHKIT_LOG_FORMAT=json``
renders every log line as one JSON object; the default stays readable for a person.

A line per request is the costliest thing the gateway does for a request besides the
two HTTP exchanges: through structlog's generic dispatch it took ~45 µs (copying the
context, five processors, ``print`` under a lock). When the CLI configured logging,
:func:`direct` lets :func:`line` build the same event itself and hand it to the same
renderer and stream, skipping only the generic steps (~10 µs), and writes the lines
of one turn of the event loop together; whenever the configuration is no longer the
CLI's own (a test capturing logs, context variables bound), the line goes through
structlog as before.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import structlog

try:  # pragma: no cover - depends on the environment
    import orjson

    def _dumps(obj: Any, **_: Any) -> str:
        return orjson.dumps(obj, default=str).decode()

except ImportError:  # pragma: no cover

    def _dumps(obj: Any, **_: Any) -> str:
        return json.dumps(obj, default=str, ensure_ascii=False)


log = structlog.get_logger("meshkit.access")

FORMATS = ("console", "json")


EVENT = "meshkit.request"

Processor = Callable[[Any, str, MutableMapping[str, Any]], Any]


#: structlog's context variables by name (a private registry: when a structlog
#: without it is installed, the context itself is scanned instead).
_VARS: dict[str, contextvars.ContextVar[Any]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)


def _bound() -> bool:
    """Whether a structlog context variable holds a value here (it would join the line)."""
    if _VARS is None:  # pragma: no cover - depends on structlog's version
        return any(var.name.startswith("structlog_") for var in contextvars.copy_context())
    # Usually none was ever created: no scan of the context at all. A cleared one
    # holds ``...``, which structlog leaves out of a line too.
    return bool(_VARS) and any(var.get() is not Ellipsis for var in _VARS.values())


class _Direct:
    """The access line written without structlog's dispatch, for a configuration
    known to be the CLI's: the same fields, level, timestamp, renderer and stream."""

    __slots__ = ("chain", "console", "pending", "render", "stream")

    def __init__(self, chain: Sequence[Processor], stream: IO[str]) -> None:
        self.chain = list(chain)
        self.render = self.chain[-1]
        #: The renderer is this module's console layout (see :func:`request`).
        self.console = self.render is console
        self.stream = stream
        #: Lines rendered during this turn of the event loop, written at its end.
        self.pending: list[str] = []

    def applies(self) -> bool:
        """Whether structlog is still configured as when :func:`direct` was called
        and no structlog context variable is bound (those would join the line)."""
        # By content: ``capture_logs`` edits the configured list in place.
        if structlog.get_config()["processors"] != self.chain:
            return False
        return not _bound()

    def write(self, fields: dict[str, Any]) -> None:
        # The keys in the order structlog's chain would add them: the call's fields,
        # then the event, the level and the UTC ISO timestamp.
        fields["event"] = EVENT
        fields["level"] = "info"
        fields["timestamp"] = _clock.stamp()
        self.add(f"{self.render(None, 'info', fields)}\n")

    def add(self, text: str) -> None:
        """Hold a rendered line (ending in a newline) until the end of the loop's turn."""
        pending = self.pending
        pending.append(text)
        if len(pending) > 1:
            return
        # The lines of the requests that end in one turn of the loop go out in one
        # write (one system call instead of one per request under load).
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop: at once
            self.flush()

    def flush(self) -> None:
        """Write the pending lines."""
        if self.pending:
            text = "".join(self.pending)
            self.pending.clear()
            self.stream.write(text)
            self.stream.flush()


class _Clock:
    """UTC ISO timestamps as structlog's ``TimeStamper(fmt="iso")`` writes them
    (``2026-11-30T19:43:38.013872Z``; no fraction at a whole second), with the date
    and time of day formatted once per second instead of on every line."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def stamp(self) -> str:
        now = time.time()
        second = int(now)
        micros = int((now - second) * 1_000_000)
        if second != self.second:
            self.second = second
            self.prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self.prefix}.{micros:06d}Z" if micros else f"{self.prefix}Z"


_clock = _Clock()
_direct: _Direct | None = None
_enabled = True


def direct(chain: Sequence[Processor] | None, stream: IO[str] | None = None, *, level: int) -> None:
    """Write access lines directly while structlog's processors are ``chain`` (the
    CLI's: context variables, log level, ISO UTC timestamp, exception formatting,
    then a renderer of this module) and its output is ``stream``; None: always
    through structlog. ``level``: the logging level, below which no line is written.
    """
    global _direct, _enabled
    if _direct is not None:
        _direct.flush()
    _enabled = level <= 20  # logging.INFO: the line's level
    _direct = None if chain is None else _Direct(chain, stream or sys.stderr)
    if _direct is not None:
        atexit.register(_direct.flush)  # lines of the loop's very last turn


def line(**fields: Any) -> None:
    """Log the access line of one request (every field always present, None when not
    known, so a log store sees one shape)."""
    writer = _direct
    if writer is None:
        log.info(EVENT, **fields)
    elif not _enabled:
        return
    elif writer.applies():
        writer.write(fields)
    else:
        log.info(EVENT, **fields)


#: What the console layout puts between the timestamp and the fields of an access line.
_CONSOLE_EVENT = f" [{'info':<9}] {EVENT:<30} "


def request(
    *,
    request_id: str,
    trace_id: str | None,
    pipeline: str,
    dialect: str,
    route: str,
    model: str | None,
    status: int,
    stream: bool,
    ttft_ms: float | None,
    duration_ms: float,
    tokens_in: int | None,
    tokens_out: int | None,
    error: str | None,
    disconnected: bool,
) -> None:
    """:func:`line` with the access line's own fields, as a request's record ends.

    On the CLI's console layout the line is one formatted string, fields already in
    the sorted order :func:`console` would put them in: no dictionary, no sort, no
    call per field (a third of the line's cost). Every value is a string, a number,
    a boolean or None, whose ``str`` is the ``repr`` :func:`console` writes for a
    non-string: the text is the same.
    """
    writer = _direct
    if writer is not None and writer.console and _enabled and writer.applies():
        writer.add(
            f"{_clock.stamp()}{_CONSOLE_EVENT}dialect={dialect} disconnected={disconnected} "
            f"duration_ms={duration_ms} error={error} model={model} pipeline={pipeline} "
            f"request_id={request_id} route={route} status={status} stream={stream} "
            f"tokens_in={tokens_in} tokens_out={tokens_out} trace_id={trace_id} "
            f"ttft_ms={ttft_ms}\n"
        )
        return
    line(
        request_id=request_id,
        trace_id=trace_id,
        pipeline=pipeline,
        dialect=dialect,
        route=route,
        model=model,
        status=status,
        stream=stream,
        ttft_ms=ttft_ms,
        duration_ms=duration_ms,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        error=error,
        disconnected=disconnected,
    )


def renderer(fmt: str | None) -> Any:
    """The structlog processor that renders lines in ``fmt`` (``console`` or ``json``)."""
    name = (fmt or "console").strip().lower()
    if name == "json":
        return structlog.processors.JSONRenderer(serializer=_dumps)
    if name != "console":
        raise ValueError(f"MESHKIT_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return console


def console(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """structlog's colourless console layout (``time [level] event key=value ...``),
    written out directly: its own renderer costs ~40 µs a line, too much for a line
    per request."""
    stamp = event.pop("timestamp", None)
    level = event.pop("level", None)
    name = str(event.pop("event", ""))
    stack = event.pop("stack", None)
    exc = event.pop("exception", None)
    parts = [] if stamp is None else [str(stamp)]
    if level is not None:
        parts.append(f"[{level:<9}]")
    if event:
        parts.append(f"{name:<30}")
        # One comprehension, no call per field: this runs for every access line.
        parts += [
            f"{key}={value}" if isinstance(value, str) else f"{key}={value!r}"
            for key, value in sorted(event.items())
        ]
    else:
        parts.append(name)
    text = " ".join(parts)
    if stack:
        text += "\n" + str(stack)
    if exc:
        text += "\n" + str(exc)
    return text
