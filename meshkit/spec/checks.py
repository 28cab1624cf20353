"""Checks across keys and sections: what one field's kind cannot see alone.

A service's ``api`` against its type, the endpoint an LLM needs, names that refer to
other services or pipelines, fallback loops, routes mounted twice, the key file the
gateway reads. Each check appends ``path: message`` lines; none stops another.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import attrs

from .model import APIS, GatewaySpec, PipelineSpec, ServiceSpec


def service(spec: ServiceSpec, problems: list[str], blamed: Collection[str] = ()) -> None:
    """Keys of one service that only make sense together (``blamed``: keys already
    reported, left at their defaults here)."""
    path = f"services.{spec.name}"
    if spec.class_path is None and "class" not in blamed:
        apis = APIS.get(spec.type)
        if apis is not None and spec.api not in apis:
            problems.append(
                f"{path}.api: must be one of {', '.join(apis)} for {_a(spec.type)} service, "
                f"not {spec.api!r}"
            )
        needs_endpoint = spec.type in ("llm", "embedding") and spec.local is None
        if needs_endpoint and not spec.endpoints and not {"endpoint", "local"} & set(blamed):
            problems.append(f"{path}.endpoint: is required (a base URL such as http://host:11434)")
        if spec.type == "custom":
            problems.append(f"{path}: a custom service needs 'class' (package.module:ClassName)")
    if spec.fallback == spec.name:
        problems.append(f"{path}.fallback: a service cannot fall back to itself")


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def fallbacks(services: Mapping[str, ServiceSpec], problems: list[str]) -> None:
    """Following ``fallback`` from service to service never loops (names are checked as
    they are read)."""
    for name, spec in services.items():
        seen = [name]
        target = spec.fallback
        while target is not None:
            if target not in services:  # unknown or broken: reported already
                break
            if target in seen:
                if target == name and len(seen) > 1:
                    problems.append(
                        f"services.{name}.fallback: fallbacks loop: {' -> '.join([*seen, target])}"
                    )
                break
            seen.append(target)
            target = services[target].fallback


def pipeline(pipe: PipelineSpec, problems: list[str], blamed: Collection[str] = ()) -> PipelineSpec:
    """``pipe`` with every node its edges name (unknown names are reported as read)."""
    path = f"pipelines.{pipe.name}"
    nodes = list(pipe.nodes)
    for edge in pipe.edges:
        for end in (edge.src, edge.dst):
            if end not in nodes:
                nodes.append(end)
    if not nodes and not blamed:
        problems.append(f"{path}: declare 'nodes' or 'edges'")
    return attrs.evolve(pipe, nodes=tuple(nodes))


def gateway(spec: GatewaySpec, problems: list[str]) -> GatewaySpec:
    """No dialect mounted twice at one prefix; the keys of ``api_keys_file`` read in."""
    seen: set[tuple[str, str]] = set()
    for i, route in enumerate(spec.routes):
        path = f"gateway.routes[{i}]"
        if (route.dialect, route.prefix) in seen:
            problems.append(f"{path}: {route.dialect} is mounted twice at {route.prefix or '/'!r}")
        seen.add((route.dialect, route.prefix))
    if spec.api_keys_file is None:
        return spec
    keys = list(spec.api_keys)
    try:
        text = Path(spec.api_keys_file).read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(
            f"gateway.api_keys_file: cannot read {spec.api_keys_file!r} ({exc.strerror})"
        )
        return spec
    for line in text.splitlines():
        key = line.split("#", 1)[0].strip()
        if key:
            keys.append(key)
    return attrs.evolve(spec, api_keys=tuple(keys))
