"""Small typed readers for JSON request bodies; each failure names its field.

The dialect modules (:mod:`.openai`, :mod:`.ollama`) read client requests with them.
"""

from __future__ import annotations

import math
from typing import Any

from .. import _json
from ..errors import BadRequest
from .types import ROLES


def parse_object(body: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object."""
    try:
        obj = _json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        # Only a body that fails to parse is looked at again (no copy of every body).
        if not body.strip():
            raise BadRequest("request body is empty; send a JSON object") from None
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # the stdlib parser on absurd nesting (orjson says so)
        raise BadRequest("request body is nested too deeply") from exc
    if not isinstance(obj, dict):
        raise BadRequest(f"request body must be a JSON object, not {_kind(obj)}")
    return obj


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def opt_str(obj: dict[str, Any], key: str, *, param: str | None = None) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(
            f"'{param or key}' must be a string, not {_kind(value)}", param=param or key
        )
    return value


def opt_bool(obj: dict[str, Any], key: str, default: bool, *, param: str | None = None) -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(
            f"'{param or key}' must be a boolean, not {_kind(value)}", param=param or key
        )
    return value


def opt_number(
    obj: dict[str, Any],
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    param: str | None = None,
) -> float | None:
    name = param or key
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a number, not {_kind(value)}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g}, not {value}", param=name)
    return float(value)


def opt_int(
    obj: dict[str, Any], key: str, *, low: int | None = None, param: str | None = None
) -> int | None:
    name = param or key
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer, not {_kind(value)}", param=name)
    if low is not None and value < low:
        raise BadRequest(f"'{name}' must be at least {low}, not {value}", param=name)
    return value


def opt_stop(obj: dict[str, Any], key: str, *, param: str | None = None) -> tuple[str, ...]:
    name = param or key
    value = obj.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise BadRequest(f"'{name}' must be a string or an array of strings", param=name)


def opt_object(obj: dict[str, Any], key: str, *, param: str | None = None) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(
            f"'{param or key}' must be an object, not {_kind(value)}", param=param or key
        )
    return value


def opt_list(obj: dict[str, Any], key: str, *, param: str | None = None) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(
            f"'{param or key}' must be an array, not {_kind(value)}", param=param or key
        )
    return value


def objects(value: list[Any], where: str) -> list[dict[str, Any]]:
    """``value`` (an array at ``where``), checked to hold only objects."""
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadRequest(
                f"'{where}[{i}]' must be an object, not {_kind(item)}", param=f"{where}[{i}]"
            )
    return value


def message_list(obj: dict[str, Any], key: str = "messages") -> list[dict[str, Any]]:
    """The request's non-empty array of message objects."""
    value = obj.get(key)
    if value is None:
        raise BadRequest(f"'{key}' is required", param=key)
    if not isinstance(value, list):
        raise BadRequest(f"'{key}' must be an array of messages, not {_kind(value)}", param=key)
    if not value:
        raise BadRequest(f"'{key}' must contain at least one message", param=key)
    return objects(value, key)


def role(item: dict[str, Any], where: str) -> str:
    """A message's role, one of :data:`ROLES`."""
    value = item.get("role")
    if not isinstance(value, str) or value not in ROLES:
        raise BadRequest(
            f"'{where}.role' must be one of {', '.join(sorted(ROLES))}", param=f"{where}.role"
        )
    return value
