"""Reading a ``services.yaml``: parse, interpolate, structure, check — every problem kept.

:func:`check` never stops at the first problem: it structures each service, pipeline
and the gateway on its own, runs every cross check, and returns both the problems and
a *partial* spec holding the parts that are valid, so that the graph checks further up
(:class:`~meshkit.mesh.Mesh`) still run on every pipeline whose services are sound.
:func:`load` and :func:`loads` raise :class:`~meshkit.errors.SpecError` instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from ..errors import SpecError
from . import checks
from .interpolation import interpolate_tree
from .model import NAME_PATTERN, GatewaySpec, MeshSpec, PipelineSpec, ServiceSpec
from .structure import Structurer, failing_keys, problems_of

TOP_KEYS = ("services", "pipelines", "gateway", "version")
_NAME = re.compile(NAME_PATTERN)


@attrs.frozen
class Checked:
    """What :func:`check` found: the problems, and the spec's valid parts.

    ``spec`` is None only when the text is not a YAML mapping at all; otherwise it holds
    the services, pipelines and gateway that structured cleanly (a pipeline only when
    every service it names did), so later checks can run on them.
    """

    spec: MeshSpec | None
    problems: tuple[str, ...]
    #: Services declared but left out of ``spec`` because they are broken.
    broken: tuple[str, ...] = ()

    def valid(self) -> MeshSpec:
        """The spec, or :class:`SpecError` listing every problem."""
        if self.problems or self.spec is None:
            raise SpecError(list(self.problems))
        return self.spec


def read(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Checked:
    """:func:`check` the file at ``path``."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        return Checked(None, (f"{file}: cannot read ({exc.strerror})",))
    return check(text, env, source=str(file))


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> MeshSpec:
    """Read and validate a ``services.yaml`` file."""
    return read(path, env).valid()


def loads(text: str, env: Mapping[str, str] | None = None, *, source: str = "<string>") -> MeshSpec:
    """Validate a YAML document given as text (``env`` defaults to ``os.environ``)."""
    return check(text, env, source=source).valid()


def check(text: str, env: Mapping[str, str] | None = None, *, source: str = "<string>") -> Checked:
    """Every problem in a YAML document, and its valid parts."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return Checked(None, (f"{source}: not valid YAML: {exc}",))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return Checked(None, (f"{source}: the top level must be a mapping",))
    tree = interpolate_tree(raw, os.environ if env is None else env)
    problems: list[str] = []
    for key in tree:
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown key (expected one of: {', '.join(TOP_KEYS)})")
    raw_services = _section(tree.get("services"), "services", problems)
    raw_pipelines = _section(tree.get("pipelines"), "pipelines", problems)
    structurer = Structurer({"services": raw_services, "pipelines": raw_pipelines})
    services: dict[str, ServiceSpec] = {}
    for name, node in raw_services.items():
        if not _NAME.match(name):
            problems.append(f"services.{name}: names use letters, digits, '_', '-' and '.'")
        spec, blamed = _structure(structurer, node, ServiceSpec, f"services.{name}", name, problems)
        if spec is not None:
            checks.service(spec, problems, blamed)
            if not blamed:
                services[name] = spec
    if not raw_services:
        problems.append("services: declare at least one service")
    checks.fallbacks(services, problems)
    pipelines: dict[str, PipelineSpec] = {}
    for name, node in raw_pipelines.items():
        path = f"pipelines.{name}"
        pipe, blamed = _structure(structurer, node, PipelineSpec, path, name, problems)
        if pipe is not None:
            pipe = checks.pipeline(pipe, problems, blamed)
            if not blamed and pipe.nodes and all(n in services for n in pipe.nodes):
                pipelines[name] = pipe
    gateway, _ = _structure(structurer, tree.get("gateway"), GatewaySpec, "gateway", None, problems)
    gateway = checks.gateway(gateway or GatewaySpec(), problems)
    broken = tuple(name for name in raw_services if name not in services)
    return Checked(MeshSpec(services, pipelines, gateway, source), tuple(problems), broken)


def _section(node: Any, path: str, problems: list[str]) -> dict[str, Any]:
    """A top-level mapping of named sections (``services``, ``pipelines``)."""
    if node is None or node == "":
        return {}
    if not isinstance(node, dict):
        problems.append(f"{path}: must be a mapping")
        return {}
    return {str(name): item for name, item in node.items()}


def _structure(
    structurer: Structurer,
    node: Any,
    cls: type[Any],
    path: str,
    name: str | None,
    problems: list[str],
) -> tuple[Any, frozenset[str]]:
    """The section at ``path`` and the keys its problems blame (none: it is sound).

    A section with problems is structured once more without the keys they blame (so
    they take their defaults), for the checks across keys to run on the rest of it;
    its problems go to ``problems``.
    """
    try:
        return structurer.structure(node, cls, name), frozenset()
    except Exception as exc:  # every failure of a section is a problem to report
        problems.extend(problems_of(exc, path))
        blamed = frozenset(failing_keys(exc, cls)) or frozenset({""})
    if not isinstance(node, Mapping):
        return None, blamed
    try:
        rest = {k: v for k, v in node.items() if k not in blamed}
        return structurer.structure(rest, cls, name), blamed
    except Exception:  # what is left cannot stand on its own; its problems are listed
        return None, blamed
