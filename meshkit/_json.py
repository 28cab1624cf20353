"""JSON in one place: orjson when installed (``meshkit[fast]``), the stdlib otherwise."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

try:  # pragma: no cover - depends on the environment
    import orjson

    # orjson's own functions, not wrappers around them: no Python frame per call (a
    # stream's start parses and serialises several times).
    #: Serialise to compact UTF-8 bytes.
    dumps: Callable[[Any], bytes] = orjson.dumps
    #: Parse JSON text.
    loads: Callable[[bytes | bytearray | memoryview | str], Any] = orjson.loads

    JSONDecodeError: type[ValueError] = orjson.JSONDecodeError

except ImportError:  # pragma: no cover

    def _dumps(obj: Any) -> bytes:
        """Serialise to compact UTF-8 bytes."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def _loads(data: bytes | bytearray | memoryview | str) -> Any:
        """Parse JSON text."""
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)

    dumps = _dumps
    loads = _loads
    JSONDecodeError = json.JSONDecodeError

__all__ = ["JSONDecodeError", "dumps", "loads"]
