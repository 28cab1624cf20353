"""JSON in one place: orjson when installed (``meshkit[fast]``), the stdlib otherwise."""

from __future__ import annotations

import json
from typing import Any

try:  # pragma: no cover - depends on the environment
    import orjson

    def dumps(obj: Any) -> bytes:
        """Serialise to compact UTF-8 bytes."""
        return orjson.dumps(obj)

    def loads(data: bytes | bytearray | memoryview | str) -> Any:
        """Parse JSON text."""
        return orjson.loads(data)

    JSONDecodeError: type[ValueError] = orjson.JSONDecodeError

except ImportError:  # pragma: no cover

    def dumps(obj: Any) -> bytes:
        """Serialise to compact UTF-8 bytes."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(data: bytes | bytearray | memoryview | str) -> Any:
        """Parse JSON text."""
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)

    JSONDecodeError = json.JSONDecodeError

__all__ = ["JSONDecodeError", "dumps", "loads"]
