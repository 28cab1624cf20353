"""One structured access line per request, and the renderer for ``MESHKIT_LOG_FORMAT``.

The line (event ``meshkit.request``) carries only what the record derived: ids, labels,
status, timings, token counts and an error *type*. It never holds a header, a prompt, an
answer or a credential, so it is safe to ship to any log store. ``MESHKIT_LOG_FORMAT=json``
renders every log line as one JSON object; the default stays readable for a person.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

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


def line(**fields: Any) -> None:
    """Log the access line of one request (every field always present, None when not
    known, so a log store sees one shape)."""
    log.info("meshkit.request", **fields)


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
    parts.append(f"{name:<30}" if event else name)
    for key in sorted(event):
        value = event[key]
        parts.append(f"{key}={value if isinstance(value, str) else repr(value)}")
    text = " ".join(parts)
    if stack:
        text += "\n" + str(stack)
    if exc:
        text += "\n" + str(exc)
    return text
