"""Pure framing for streamed bodies: server-sent events and NDJSON (bytes in, bytes out)."""

from __future__ import annotations

import random

SSE_DONE = b"[DONE]"

_random = random.Random()


def new_id() -> str:
    """A random 128-bit hex id for requests and completions.

    Not for secrets: ids only need to be unique, and this costs a tenth of ``uuid4``
    on the per-request path.
    """
    return f"{_random.getrandbits(128):032x}"


def sse_event(data: bytes) -> bytes:
    """Frame one ``data:`` event."""
    return b"data: " + data + b"\n\n"


def ndjson_line(data: bytes) -> bytes:
    """Frame one NDJSON record."""
    return data + b"\n"


def sse_data(line: bytes) -> bytes | None:
    """The payload of one SSE line if it is a ``data:`` field, else None.

    Comments (``:``), ``event:``/``id:``/``retry:`` fields and blank separators give None;
    a multi-line event's data lines are returned one by one, which is enough for the
    JSON-per-event streams LLM servers send.
    """
    if not line.startswith(b"data:"):
        return None
    payload = line[5:]
    if payload[:1] == b" ":
        payload = payload[1:]
    return payload.rstrip(b"\r\n")


class LineSplitter:
    """Split a byte stream into lines across arbitrary chunk boundaries."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete lines (without their newline)."""
        buf = self._buf + data if self._buf else data
        if b"\n" not in buf:
            self._buf = buf
            return []
        *lines, self._buf = buf.split(b"\n")
        return [line.rstrip(b"\r") for line in lines]

    def flush(self) -> bytes:
        """Whatever remains after the last newline."""
        rest, self._buf = self._buf, b""
        return rest
