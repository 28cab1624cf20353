"""``${VAR}`` interpolation of parsed YAML values.

Strings may use ``${VAR}``, ``${VAR:-default}`` (default when unset or empty) and
``${VAR-default}`` (default when unset); ``$$`` is a literal dollar. Interpolation runs
on parsed string values only, so the environment can never change the YAML's shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\})")

#: What an interpolated value looks like, for the JSON Schema (ECMA-262 syntax): a
#: string holding at least one ``${VAR...}`` may become anything once expanded.
INTERPOLATED_PATTERN = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\}"


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``$$`` in ``value``."""

    def expand(match: re.Match[str]) -> str:
        name, op, default = match.groups()
        if name is None:
            return "$"
        current = env.get(name)
        if op == ":-" and not current:
            return default
        if op == "-" and current is None:
            return default
        return current or ""

    return _VAR.sub(expand, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """``node`` with every string in it (at any depth) interpolated; keys stay as written."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(item, env) for key, item in node.items()}
    return node


def variables(text: str) -> set[str]:
    """Names of the environment variables a YAML text reads."""
    return {m.group(1) for m in _VAR.finditer(text) if m.group(1)}
