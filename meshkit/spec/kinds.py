"""Kinds of YAML values: how each becomes a Python value, and its JSON Schema.

A :class:`Kind` is declared once per kind of value (a positive number of seconds, a
port, a list of base URLs) and used three ways: the structure hook that converts a
YAML value (raising :class:`Invalid` with the message shown after the value's path),
the attrs validator that checks values given in code, and the JSON Schema fragment
that ``meshkit schema`` prints. Values are converted after interpolation, so numbers
and booleans may arrive as strings (``${PORT:-8008}``); the schema accepts any string
holding ``${VAR}`` where a number or a choice is expected, since only the environment
can tell what it becomes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs


class Invalid(ValueError):
    """A value that does not fit its kind; each message is reported after its path."""

    def __init__(self, *messages: str) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


@attrs.frozen
class Kind:
    """One kind of YAML value: its conversion and its JSON Schema.

    Attributes:
        what: The kind in words, for messages ("must be <what>, not 'x'").
        parse: Converts a YAML value; raises ``ValueError``/``TypeError`` (reported
            with ``what``) or :class:`Invalid` (reported as it is).
        schema: JSON Schema of the value as written, interpolation aside.
        wrap: Whether the schema gets a branch for a string holding ``${VAR}``: not
            where ``schema`` takes every string already, nor where a variable cannot
            stand for the whole value (a list, a mapping).
        record: For a nested section (or a list of them, with ``many``): its class.
    """

    what: str
    parse: Callable[[Any], Any] | None = None
    schema: Mapping[str, Any] = attrs.field(factory=dict)
    wrap: bool = True
    record: type | None = None
    many: bool = False

    def convert(self, value: Any) -> Any:
        """``value`` as its Python value, or :class:`Invalid` saying what is wrong."""
        assert self.parse is not None
        try:
            return self.parse(value)
        except Invalid:
            raise
        except (TypeError, ValueError, OverflowError):
            raise Invalid(f"must be {self.what}, not {value!r}") from None

    def validator(self, _instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        """attrs validator: a value given in code must be one the YAML could give."""
        if value is None or self.parse is None:
            return
        try:
            self.convert(value)
        except Invalid as exc:
            raise ValueError(f"{attribute.name}: {exc}") from None

    def schema_branches(self) -> list[dict[str, Any]]:
        """The alternatives a value of this kind may take, an interpolated string included
        (a flat list, for an ``anyOf`` that editors report well)."""
        branches = list(self.schema.get("anyOf", [self.schema]))
        if self.wrap:
            branches.append({"$ref": "#/$defs/interpolated"})
        return [dict(b) for b in branches]


def record(cls: type) -> Kind:
    """A nested section (a mapping structured into ``cls``)."""
    return Kind(f"a {cls.__name__} mapping", record=cls)


def records(cls: type) -> Kind:
    """A list of sections, each structured into ``cls``."""
    return Kind(f"a list of {cls.__name__}", record=cls, many=True)


def _scalar(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError
    return str(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError
    number = float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


def _whole(value: Any) -> int:
    number = _number(value)
    if number != int(number):
        raise ValueError
    return int(number)


def _ranged(convert: Callable[[Any], Any], low: float, high: float | None = None) -> Any:
    def parse(value: Any) -> Any:
        number = convert(value)
        if number < low or (high is not None and number > high):
            raise ValueError
        return number

    return parse


def _positive(value: Any) -> float:
    number = _number(value)
    if not number > 0:
        raise ValueError
    return number


_DECIMAL = r"^\s*[0-9]+(\.[0-9]+)?\s*$"
_INTEGER = r"^\s*[0-9]+(\.0+)?\s*$"


def _numeric(kind: str, **bounds: Any) -> dict[str, Any]:
    """A number (``kind``: integer or number) within ``bounds``, or one written as text."""
    return {
        "anyOf": [
            {"type": kind, **bounds},
            {"type": "string", "pattern": _INTEGER if kind == "integer" else _DECIMAL},
        ]
    }


def _any_case(words: Sequence[str]) -> str:
    """ECMA-262 alternatives matching any of ``words`` in any letter case (it has no
    inline flags)."""
    return "|".join(
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word) for word in words
    )


TEXT = Kind("text", _scalar, {"type": ["string", "number"]}, wrap=False)
SECONDS = Kind("a positive number of seconds", _positive, _numeric("number", exclusiveMinimum=0))
SECONDS_OR_ZERO = Kind("a number of seconds", _ranged(_number, 0), _numeric("number", minimum=0))
PROBE_SECONDS = attrs.evolve(SECONDS_OR_ZERO, what="a number of seconds (0 turns probes off)")
PORT = Kind(
    "a port number (1-65535)",
    _ranged(_whole, 1, 65535),
    _numeric("integer", minimum=1, maximum=65535),
)
PORT_OR_ZERO = Kind(
    "a port number (0: any free port)",
    _ranged(_whole, 0, 65535),
    _numeric("integer", minimum=0, maximum=65535),
)
POSITIVE_INT = Kind("a positive integer", _ranged(_whole, 1), _numeric("integer", minimum=1))
RETRIES = Kind(
    "a whole number from 0 to 10",
    _ranged(_whole, 0, 10),
    _numeric("integer", minimum=0, maximum=10),
)
UNLIMITED_COUNT = Kind(
    "a whole number (0: no limit)", _ranged(_whole, 0), _numeric("integer", minimum=0)
)

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _scalar(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


BOOLEAN = Kind(
    "true or false",
    _boolean,
    {
        "anyOf": [
            {"type": "boolean"},
            {"enum": [0, 1]},
            {"type": "string", "pattern": rf"^\s*({_any_case(_TRUE + _FALSE)})\s*$"},
        ]
    },
)

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2}
_UNITS |= {"mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def _size(value: Any) -> int:
    match = _SIZE.fullmatch(_scalar(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1:
        raise ValueError
    return size


SIZE = Kind(
    "a size in bytes (such as 1048576, 512KiB or 8MiB)",
    _size,
    {
        "anyOf": [
            {"type": "integer", "minimum": 1},
            {
                "type": "string",
                "pattern": rf"^\s*[0-9]+(\.[0-9]+)?\s*({_any_case(sorted(_UNITS))})\s*$",
            },
        ]
    },
)


def choice(*values: str) -> Kind:
    """One of ``values``, written exactly."""

    def parse(value: Any) -> str:
        if value not in values:
            raise Invalid(f"must be one of {', '.join(values)}, not {value!r}")
        return str(value)

    return Kind(f"one of {', '.join(values)}", parse, {"enum": list(values)})


def _url_path(value: Any) -> str:
    text = _scalar(value)
    if not text.startswith("/"):
        raise Invalid(f"must start with '/', not {text!r}")
    return text


URL_PATH = Kind("a path starting with '/'", _url_path, {"type": "string", "pattern": "^/"})


def _prefix(value: Any) -> str:
    text = _scalar(value).rstrip("/")
    if text and not text.startswith("/"):
        raise Invalid(f"must start with '/', not {text!r}")
    return text


PREFIX = Kind("a path starting with '/'", _prefix, {"type": "string", "pattern": "^(/.*)?$"})

_CLASS = re.compile(r"^[\w.]+:[\w.]+$")


def _class_path(value: Any) -> str:
    text = _scalar(value)
    if not _CLASS.match(text):
        raise Invalid(f"must look like 'package.module:ClassName', not {text!r}")
    return text


CLASS_PATH = Kind(
    "package.module:ClassName",
    _class_path,
    {"type": "string", "pattern": r"^[A-Za-z0-9_.]+:[A-Za-z0-9_.]+$"},
)


def _items(value: Any) -> list[str]:
    """A list, or a comma-separated string, as its non-empty items."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise TypeError
    return [item for item in (_scalar(v).strip() for v in value) if item]


def _urls(value: Any) -> tuple[str, ...]:
    urls, problems = [], []
    for url in _items(value):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"not a URL: {url!r} (expected http://host:port)")
        else:
            urls.append(url.rstrip("/"))
    if problems:
        raise Invalid(*problems)
    return tuple(urls)


_URL = r"https?://[^\s,/]+[^\s,]*"
URLS = Kind(
    "a base URL, or several (a list or comma-separated)",
    _urls,
    {
        "anyOf": [
            {"type": "string", "pattern": rf"^\s*({_URL})?(\s*,\s*({_URL})?)*\s*$"},
            {"type": "array", "items": {"type": "string", "pattern": rf"^\s*{_URL}\s*$"}},
        ]
    },
)
KEYS = Kind(
    "a list or a comma-separated string",
    lambda value: tuple(_items(value)),
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": ["string", "number"]}}]},
    wrap=False,
)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError
    names: list[str] = []
    for item in value:
        name = _scalar(item)
        if name not in names:
            names.append(name)
    return tuple(names)


NAMES = Kind(
    "a list of service names",
    _names,
    {"type": "array", "items": {"type": ["string", "number"]}},
    wrap=False,
)


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise Invalid("must be a mapping")
    return value


PARAMS = Kind("a mapping", _mapping, {"type": "object"}, wrap=False)
