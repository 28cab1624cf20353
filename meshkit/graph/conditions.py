"""Edge conditions: a small, safe expression language for ``when:`` in services.yaml.

An expression is parsed with :mod:`ast` and only a whitelist of node types is
accepted; it is compiled into a tree of closures and never handed to ``eval``.

Names:
    ``output``   the upstream node's output (documents, text, vectors, request, ...)
    ``request``  the caller's chat request (``request.model``, ``request.prompt``, ...)
    ``headers``  the caller's HTTP headers, case-insensitive (``headers["x-tier"]``);
                 a missing header or key reads as ``none``

Allowed: literals (strings, numbers, ``true``/``false``/``none`` and their Python
spellings, lists), ``and``/``or``/``not``, comparisons (``== != < <= > >= in not in``),
``+ - * /``, public attributes of meshkit's own value types, subscripts, and the
functions ``len lower upper str int float matches(text, regex)``.

Example::

    when: len(output) > 0 and output[0].score >= 0.3
    when: request.model == "llama3.2:1b" or headers["x-tier"] == "pro"
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ..nodes.base import Context
from ..nodes.ports import Document
from ..protocol.types import ChatRequest, Completion, Embeddings, Message, Usage

Env = Mapping[str, Any]
Compiled = Callable[[Env], Any]

NAMES = ("output", "request", "headers")
_CONSTANTS = {"true": True, "false": False, "none": None, "null": None}
_SAFE_TYPES = (ChatRequest, Completion, Document, Embeddings, Message, Usage)
_PROPERTIES = {"prompt", "total_tokens"}


class ConditionError(ValueError):
    """An expression is not valid meshkit condition syntax."""


def _matches(text: Any, pattern: Any) -> bool:
    return re.search(str(pattern), str(text)) is not None


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "str": str,
    "int": int,
    "float": float,
    "matches": _matches,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: b is not None and a in b,
    ast.NotIn: lambda a, b: b is None or a not in b,
}
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


@attrs.frozen
class Condition:
    """A compiled ``when:`` expression; call it with the upstream output and the context."""

    source: str
    uses_output: bool
    _fn: Compiled = attrs.field(repr=False, eq=False)

    def __call__(self, output: Any, ctx: Context) -> bool:
        env = {"output": output, "request": ctx.request, "headers": _Headers(ctx.headers)}
        return bool(self._fn(env))


class _Headers:
    """Case-insensitive, read-only header lookup that answers ``None`` when missing."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._lower = {k.lower(): v for k, v in headers.items()}

    def get(self, key: Any) -> Any:
        return self._lower.get(str(key).lower())


def compile_condition(source: str) -> Condition:
    """Parse and check ``source``; raise :class:`ConditionError` saying what is wrong."""
    if len(source) > 1000:
        raise ConditionError("condition is longer than 1000 characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConditionError(f"not a valid expression: {exc.msg}") from None
    used: set[str] = set()
    fn = _compile(tree.body, used)
    return Condition(source.strip(), "output" in used, fn)


def _compile(node: ast.AST, used: set[str]) -> Compiled:
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, (str, int, float, bool, type(None))):
            raise ConditionError(f"unsupported literal {node.value!r}")
        value = node.value
        return lambda env: value
    if isinstance(node, ast.Name):
        name = node.id
        if name.lower() in _CONSTANTS:
            constant = _CONSTANTS[name.lower()]
            return lambda env: constant
        if name in ("True", "False", "None"):
            constant = {"True": True, "False": False, "None": None}[name]
            return lambda env: constant
        if name not in NAMES:
            raise ConditionError(f"unknown name {name!r} (known: {', '.join(NAMES)})")
        used.add(name)
        return lambda env: env[name]
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_compile(e, used) for e in node.elts]
        return lambda env: tuple(f(env) for f in items)
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, used) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda env: all(p(env) for p in parts)
        return lambda env: any(p(env) for p in parts)
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand, used)
        if isinstance(node.op, ast.Not):
            return lambda env: not operand(env)
        if isinstance(node.op, ast.USub):
            return lambda env: -operand(env)
        raise ConditionError("only 'not' and '-' are allowed as unary operators")
    if isinstance(node, ast.BinOp):
        binary = _BINARY.get(type(node.op))
        if binary is None:
            raise ConditionError("only + - * / are allowed as arithmetic")
        left, right = _compile(node.left, used), _compile(node.right, used)
        return lambda env: binary(left(env), right(env))
    if isinstance(node, ast.Compare):
        return _compare(node, used)
    if isinstance(node, ast.Attribute):
        return _attribute(node, used)
    if isinstance(node, ast.Subscript):
        target, key = _compile(node.value, used), _compile(node.slice, used)
        return lambda env: _subscript(target(env), key(env))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise ConditionError(f"only these functions may be called: {', '.join(_FUNCTIONS)}")
        if node.keywords:
            raise ConditionError("functions take positional arguments only")
        func = _FUNCTIONS[node.func.id]
        args = [_compile(a, used) for a in node.args]
        return lambda env: func(*(a(env) for a in args))
    raise ConditionError(f"{type(node).__name__} is not allowed in a condition")


def _compare(node: ast.Compare, used: set[str]) -> Compiled:
    first = _compile(node.left, used)
    steps: list[tuple[Callable[[Any, Any], bool], Compiled]] = []
    for op, right in zip(node.ops, node.comparators, strict=True):
        fn = _COMPARE.get(type(op))
        if fn is None:
            raise ConditionError(f"comparison {type(op).__name__} is not allowed")
        steps.append((fn, _compile(right, used)))

    def compare(env: Env) -> bool:
        left = first(env)
        for fn, right in steps:
            value = right(env)
            if not fn(left, value):
                return False
            left = value
        return True

    return compare


def _attribute(node: ast.Attribute, used: set[str]) -> Compiled:
    name = node.attr
    if name.startswith("_"):
        raise ConditionError(f"attribute {name!r} is not allowed")
    target = _compile(node.value, used)

    def read(env: Env) -> Any:
        obj = target(env)
        if obj is None:
            return None
        fields = attrs.fields_dict(type(obj)) if isinstance(obj, _SAFE_TYPES) else {}
        if name in fields or (isinstance(obj, _SAFE_TYPES) and name in _PROPERTIES):
            return getattr(obj, name)
        if isinstance(obj, (Mapping, _Headers)):
            return _subscript(obj, name)
        raise ConditionError(f"{type(obj).__name__} has no readable attribute {name!r}")

    return read


def _subscript(obj: Any, key: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, _Headers):
        return obj.get(key)
    if isinstance(obj, Mapping):
        return obj.get(key)
    if isinstance(obj, (str, Sequence)) and isinstance(key, int) and not isinstance(key, bool):
        return obj[key] if -len(obj) <= key < len(obj) else None
    raise ConditionError(f"cannot index {type(obj).__name__} with {key!r}")
