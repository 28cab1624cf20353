"""Pure framing for streamed bodies: server-sent events and NDJSON (bytes in, bytes out)."""

from __future__ import annotations

import random

from .types import Chunk

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


#: Marks the end of an upstream's stream in the chunks its line parser returns.
END = Chunk("", "__done__")
END_ONLY = (END,)
