"""YAML values → spec objects through cattrs, every problem kept with its path.

One cattrs converter structures each section (a service, a pipeline, the gateway and
what they contain) from the field declarations in :mod:`.model`: each key converted by
its kind, renamed keys (``endpoint``, ``class``, ``from``/``to``) read under their YAML
name, keys a service type does not use refused with the type named. cattrs' detailed
validation collects every failing field of a section at once; :func:`problems_of`
turns its exception groups into ``path: message`` lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override

from .kinds import Invalid
from .model import EDGE_SHORTHAND, EdgeSpec, ServiceSpec, Setting, keys_for, settings

#: Where the name a section is declared under (``services.<name>``) is handed in.
NAME_KEY = "<name>"
_EDGE = re.compile(EDGE_SHORTHAND)


class Where(str):
    """A note on a problem: where it sits under its section (``.key`` or ``[i]``)."""


def _at(step: str, exc: Exception) -> Exception:
    exc.add_note(Where(step))
    return exc


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _key_problem(cls: type, key: Any, section: Mapping[Any, Any]) -> Exception | None:
    """Why ``key`` may not appear in this section, or None when it may."""
    every = settings(cls)
    if key not in every:
        return Invalid(f"unknown key (expected one of: {', '.join(every)})")
    if cls is ServiceSpec:
        kind = section.get("type")
        allowed = keys_for(kind if isinstance(kind, str) else None, has_class="class" in section)
        if key not in allowed:
            return Invalid(
                f"{_article(str(kind))} service does not use this key "
                f"(its keys: {', '.join(allowed)})"
            )
    return None


class Structurer:
    """The cattrs converter for spec sections, one per file.

    Args:
        names: The names declared in the file, by section (``services``,
            ``pipelines``), so that a key naming one (``fallback``, a route's
            ``pipeline``, an edge's ends) is checked as it is read, whatever else in
            the file is broken.
    """

    def __init__(self, names: Mapping[str, Collection[str]]) -> None:
        self.names = names
        self.converter = cattrs.Converter(detailed_validation=True)
        self.converter.register_structure_hook_factory(attrs.has, self._section_hook)

    def structure(self, value: Any, cls: type[Any], name: str | None = None) -> Any:
        """``value`` as a ``cls``; raises exceptions that :func:`problems_of` reads."""
        if name is not None and isinstance(value, Mapping):
            value = {**value, NAME_KEY: name}
        elif name is not None and value is None:
            value = {NAME_KEY: name}
        return self.converter.structure(value, cls)

    def _field_hook(self, setting: Setting) -> Callable[[Any, Any], Any]:
        kind = setting.kind
        if setting.refers is not None:
            return lambda value, _: self._known(kind.convert(value), str(setting.refers))
        if kind.record is None:
            return lambda value, _: kind.convert(value)
        cls = kind.record
        if not kind.many:
            return lambda value, _: self.converter.structure(value, cls)
        return lambda value, _: self._many(value, cls)

    def _known(self, value: Any, section: str) -> Any:
        """``value`` (a name or a tuple of them) if every name is declared in ``section``."""
        known = self.names.get(section, ())
        unknown = [n for n in (value if isinstance(value, tuple) else (value,)) if n not in known]
        if unknown:
            raise Invalid(*(f"unknown {section[:-1]} {name!r}" for name in unknown))
        return value

    def _many(self, value: Any, cls: type[Any]) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise Invalid("must be a list")
        items, errors = [], []
        for i, item in enumerate(value):
            try:
                items.append(self.converter.structure(item, cls))
            except Exception as exc:
                errors.append(_at(f"[{i}]", exc))
        if errors:
            raise ExceptionGroup(f"in a list of {cls.__name__}", errors)
        return tuple(items)

    def _section_hook(self, cls: type[Any]) -> Callable[[Any, Any], Any]:
        overrides: dict[str, Any] = {}  # AttributeOverride each, by attribute name
        declared = settings(cls)
        for key, (field, setting) in declared.items():
            overrides[field.name] = override(rename=key, struct_hook=self._field_hook(setting))
        for field in attrs.fields(cls):
            if field.name not in overrides:  # the name a section is declared under
                overrides[field.name] = override(rename=NAME_KEY, struct_hook=lambda v, _: v)
        generated = make_dict_structure_fn(
            cls,
            self.converter,
            _cattrs_detailed_validation=True,
            _cattrs_use_linecache=False,  # one converter per file: keep no source per load
            **overrides,
        )
        # An empty value stands for the default, so that `${VAR:-}` means "not set";
        # an empty section (`local:`) is one with every default.
        sections = {k for k, (_, s) in declared.items() if s.kind.record and not s.kind.many}

        def hook(value: Any, _: Any) -> Any:
            if value is None or value == "":
                value = {}
            if cls is EdgeSpec and isinstance(value, str):
                edge = _edge(value)
                self._known((edge.src, edge.dst), "services")
                return edge
            if not isinstance(value, Mapping):
                raise Invalid("must be a mapping")
            errors: list[Exception] = []
            kept: dict[Any, Any] = {}
            for key, item in value.items():
                problem = None if key == NAME_KEY else _key_problem(cls, key, value)
                if problem is not None:
                    errors.append(_at(f".{key}", problem))
                elif (item is not None and item != "") or key in sections:
                    kept[key] = item
            try:
                result = generated(kept, cls)
            except ClassValidationError as exc:
                errors.extend(exc.exceptions)
            if errors:
                raise ClassValidationError(f"While structuring {cls.__name__}", errors, cls)
            return result

        return hook


def _edge(text: str) -> EdgeSpec:
    match = _EDGE.match(text)
    if not match:
        raise Invalid(f"write edges as 'a -> b', not {text!r}")
    return EdgeSpec(match.group(1), match.group(2))


def failing_keys(exc: BaseException, cls: type) -> set[str]:
    """The keys of a section that an exception from structuring it blames."""
    if not isinstance(exc, BaseExceptionGroup):
        return set()
    return {_step(sub, cls).lstrip(".").split("[")[0] for sub in exc.exceptions}


def problems_of(exc: BaseException, path: str) -> list[str]:
    """The ``path: message`` lines in an exception from :meth:`Structurer.structure`."""
    if isinstance(exc, BaseExceptionGroup):
        cls = getattr(exc, "cl", None)
        found: list[str] = []
        for sub in exc.exceptions:
            found.extend(problems_of(sub, path + _step(sub, cls)))
        return found
    if isinstance(exc, Invalid):
        return [f"{path}: {message}" for message in exc.messages]
    if isinstance(exc, KeyError):
        return [f"{path}: is required"]
    return [f"{path}: {exc}"]


def _step(exc: BaseException, cls: type | None) -> str:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, Where):
            return str(note)
        if isinstance(note, AttributeValidationNote) and cls is not None:
            for key, (field, _) in settings(cls).items():
                if field.name == note.name:
                    return f".{key}"
            return ""
        if isinstance(note, IterableValidationNote):
            return f"[{note.index}]"
    return ""
