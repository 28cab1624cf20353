"""`services.yaml` → validated, frozen specification objects.

Strings may use ``${VAR}``, ``${VAR:-default}`` (default when unset or empty) and
``${VAR-default}`` (default when unset); ``$$`` is a literal dollar. Interpolation runs
on parsed string values only, so the environment can never change the YAML's shape.
Every problem is collected with its path and reported at once in a :class:`SpecError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import yaml

from .errors import SpecError

SERVICE_TYPES = ("llm", "embedding", "retriever", "reranker", "guardrail", "prompt", "custom")
DIALECTS = ("openai", "ollama")
_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\})")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_EDGE = re.compile(r"^\s*([^\s>-][^\s>]*)\s*->\s*([^\s>]+)\s*$")

T = TypeVar("T")


@attrs.frozen
class LocalSpec:
    """How meshkit runs the embedded model server when an LLM has no endpoint."""

    model_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    threads: int = 2


@attrs.frozen
class ServiceSpec:
    """One service (a graph node) as declared under ``services:``."""

    name: str
    type: str
    endpoints: tuple[str, ...] = ()
    api: str = "openai"
    path: str | None = None
    model: str | None = None
    timeout: float = 60.0
    connect_timeout: float = 5.0
    idle_timeout: float = 60.0
    api_key: str | None = attrs.field(default=None, repr=False)
    class_path: str | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)
    optional: bool = False
    local: LocalSpec | None = None
    total_timeout: float | None = None
    retries: int = 2
    fallback: str | None = None
    balancer: str = "least_inflight"
    health_interval: float = 5.0
    max_connections: int = 1000
    max_response_body: int = 64 * 1024 * 1024


@attrs.frozen
class EdgeSpec:
    """``src -> dst``, with an optional condition in meshkit's expression form."""

    src: str
    dst: str
    when: str | None = None


@attrs.frozen
class PipelineSpec:
    """A named graph over the declared services."""

    name: str
    nodes: tuple[str, ...]
    edges: tuple[EdgeSpec, ...] = ()


@attrs.frozen
class RouteSpec:
    """A dialect's endpoints mounted under ``prefix``, answering from ``pipeline``."""

    dialect: str
    pipeline: str
    prefix: str = ""
    model: str | None = None
    embeddings: str | None = None


@attrs.frozen
class GatewaySpec:
    """Where and how the gateway listens."""

    host: str = "0.0.0.0"
    port: int = 8008
    routes: tuple[RouteSpec, ...] = ()
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    max_inflight: int = 0
    max_body: int = 8 * 1024 * 1024
    shutdown_grace: float = 10.0
    send_timeout: float = 60.0


@attrs.frozen
class MeshSpec:
    """The whole file: services, pipelines, gateway."""

    services: Mapping[str, ServiceSpec]
    pipelines: Mapping[str, PipelineSpec]
    gateway: GatewaySpec
    source: str = "<string>"


# -- interpolation ----------------------------------------------------------------------


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


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(item, env) for key, item in node.items()}
    return node


def variables(text: str) -> set[str]:
    """Names of the environment variables a YAML text reads."""
    return {m.group(1) for m in _VAR.finditer(text) if m.group(1)}


# -- loading ----------------------------------------------------------------------------


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> MeshSpec:
    """Read and validate a ``services.yaml`` file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"{file}: cannot read ({exc.strerror})"]) from exc
    return loads(text, env, source=str(file))


def loads(text: str, env: Mapping[str, str] | None = None, *, source: str = "<string>") -> MeshSpec:
    """Validate a YAML document given as text (``env`` defaults to ``os.environ``)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([f"{source}: not valid YAML: {exc}"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError([f"{source}: the top level must be a mapping"])
    checker = _Checker()
    tree = _interpolate_tree(raw, os.environ if env is None else env)
    spec = checker.mesh(tree, source)
    if checker.problems:
        raise SpecError(checker.problems)
    assert spec is not None
    return spec


class _Checker:
    """Walks the raw tree, building specs and collecting every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, node: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, dict):
            self.fail(path, "must be a mapping")
            return {}
        for key in node:
            if key not in allowed:
                self.fail(f"{path}.{key}", f"unknown key (expected one of: {', '.join(allowed)})")
        return node

    def get(
        self,
        node: Mapping[str, Any],
        key: str,
        path: str,
        convert: Callable[[Any], T],
        default: T,
        what: str,
    ) -> T:
        value = node.get(key)
        if value is None or value == "":
            return default
        try:
            return convert(value)
        except (TypeError, ValueError):
            self.fail(f"{path}.{key}", f"must be {what}, not {value!r}")
            return default

    def mesh(self, raw: dict[str, Any], source: str) -> MeshSpec | None:
        top = self.mapping(raw, source, ("services", "pipelines", "gateway", "version"))
        services: dict[str, ServiceSpec] = {}
        for name, node in self.mapping(
            top.get("services"), "services", tuple(top.get("services") or {})
        ).items():
            spec = self.service(str(name), node)
            if spec is not None:
                services[spec.name] = spec
        if not services:
            self.fail("services", "declare at least one service")
        pipelines: dict[str, PipelineSpec] = {}
        raw_pipes = top.get("pipelines") or {}
        for name, node in self.mapping(raw_pipes, "pipelines", tuple(raw_pipes)).items():
            pipe = self.pipeline(str(name), node, services)
            if pipe is not None:
                pipelines[pipe.name] = pipe
        gateway = self.gateway(top.get("gateway"), services, pipelines)
        self.fallbacks(services)
        return MeshSpec(services, pipelines, gateway, source)

    def service(self, name: str, raw: Any) -> ServiceSpec | None:
        path = f"services.{name}"
        if not _NAME.match(name):
            self.fail(path, "names use letters, digits, '_', '-' and '.'")
        node = self.mapping(
            raw,
            path,
            (
                "type",
                "endpoint",
                "api",
                "path",
                "model",
                "timeout",
                "connect_timeout",
                "idle_timeout",
                "api_key",
                "class",
                "params",
                "optional",
                "local",
                "total_timeout",
                "retries",
                "fallback",
                "balancer",
                "health_interval",
                "max_connections",
                "max_response_body",
            ),
        )
        kind = node.get("type")
        if kind not in SERVICE_TYPES:
            self.fail(f"{path}.type", f"must be one of {', '.join(SERVICE_TYPES)}, not {kind!r}")
            kind = "custom"
        endpoints = self.endpoints(node.get("endpoint"), f"{path}.endpoint")
        api = str(node.get("api") or "openai")
        if kind == "llm" and api not in ("openai", "ollama"):
            self.fail(f"{path}.api", f"must be 'openai' or 'ollama', not {api!r}")
        url_path = node.get("path")
        if url_path is not None and not str(url_path).startswith("/"):
            self.fail(f"{path}.path", f"must start with '/', not {url_path!r}")
        timeout = self.get(node, "timeout", path, _positive, 60.0, "a positive number of seconds")
        connect = self.get(
            node,
            "connect_timeout",
            path,
            _positive,
            min(5.0, timeout),
            "a positive number of seconds",
        )
        idle = self.get(
            node,
            "idle_timeout",
            path,
            _positive,
            max(timeout, 30.0),
            "a positive number of seconds",
        )
        class_path = node.get("class")
        if kind == "custom" and class_path is None and not endpoints:
            self.fail(path, "a custom service needs 'class' (module:Class) or 'endpoint'")
        if class_path is not None and not re.match(r"^[\w.]+:[\w.]+$", str(class_path)):
            self.fail(
                f"{path}.class", f"must look like 'package.module:ClassName', not {class_path!r}"
            )
        params = node.get("params") or {}
        if not isinstance(params, dict):
            self.fail(f"{path}.params", "must be a mapping")
            params = {}
        local = self.local(node.get("local"), f"{path}.local") if "local" in node else None
        if kind in ("llm", "embedding") and not endpoints and local is None and class_path is None:
            self.fail(f"{path}.endpoint", "is required (a base URL such as http://host:11434)")
        optional = self.get(node, "optional", path, _boolean, False, "true or false")
        total = self.get(
            node, "total_timeout", path, _positive, None, "a positive number of seconds"
        )
        retries = self.get(node, "retries", path, _count, 2, "a whole number from 0 to 10")
        balancer = str(node.get("balancer") or "least_inflight")
        if balancer not in ("least_inflight", "round_robin"):
            self.fail(
                f"{path}.balancer", f"must be 'least_inflight' or 'round_robin', not {balancer!r}"
            )
        health = self.get(
            node,
            "health_interval",
            path,
            _seconds_or_zero,
            5.0,
            "a number of seconds (0 turns probes off)",
        )
        max_connections = self.get(
            node, "max_connections", path, _positive_int, 1000, "a positive whole number"
        )
        max_response_body = self.get(
            node,
            "max_response_body",
            path,
            _size,
            64 * 1024 * 1024,
            "a size in bytes (such as 1048576, 512KiB or 64MiB)",
        )
        fallback = str(node["fallback"]) if node.get("fallback") else None
        if fallback == name:
            self.fail(f"{path}.fallback", "a service cannot fall back to itself")
        return ServiceSpec(
            name=name,
            type=str(kind),
            endpoints=endpoints,
            api=api,
            path=str(url_path) if url_path is not None else None,
            model=str(node["model"]) if node.get("model") not in (None, "") else None,
            timeout=timeout,
            connect_timeout=connect,
            idle_timeout=idle,
            api_key=str(node["api_key"]) if node.get("api_key") else None,
            class_path=str(class_path) if class_path is not None else None,
            params=params,
            optional=optional,
            local=local,
            total_timeout=total,
            retries=retries,
            fallback=fallback,
            balancer=balancer,
            health_interval=health,
            max_connections=max_connections,
            max_response_body=max_response_body,
        )

    def endpoints(self, raw: Any, path: str) -> tuple[str, ...]:
        if raw in (None, ""):
            return ()
        items = raw if isinstance(raw, list) else str(raw).split(",")
        out = []
        for item in items:
            url = str(item).strip()
            if not url:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                self.fail(path, f"not a URL: {url!r} (expected http://host:port)")
                continue
            out.append(url.rstrip("/"))
        return tuple(out)

    def local(self, raw: Any, path: str) -> LocalSpec:
        node = self.mapping(raw, path, ("model_path", "host", "port", "threads"))
        return LocalSpec(
            model_path=str(node["model_path"]) if node.get("model_path") else None,
            host=str(node.get("host") or "127.0.0.1"),
            port=self.get(node, "port", path, _port_or_zero, 0, "a port number"),
            threads=self.get(node, "threads", path, _positive_int, 2, "a positive integer"),
        )

    def pipeline(
        self, name: str, raw: Any, services: Mapping[str, ServiceSpec]
    ) -> PipelineSpec | None:
        path = f"pipelines.{name}"
        node = self.mapping(raw, path, ("nodes", "edges"))
        nodes: list[str] = []
        raw_nodes = node.get("nodes") or []
        if not isinstance(raw_nodes, list):
            self.fail(f"{path}.nodes", "must be a list of service names")
            raw_nodes = []
        for item in raw_nodes:
            if str(item) not in nodes:
                nodes.append(str(item))
        edges: list[EdgeSpec] = []
        raw_edges = node.get("edges") or []
        if not isinstance(raw_edges, list):
            self.fail(f"{path}.edges", "must be a list")
            raw_edges = []
        for i, item in enumerate(raw_edges):
            edge = self.edge(item, f"{path}.edges[{i}]")
            if edge is None:
                continue
            edges.append(edge)
            for end in (edge.src, edge.dst):
                if end not in nodes:
                    nodes.append(end)
        if not nodes:
            self.fail(path, "declare 'nodes' or 'edges'")
        for n in nodes:
            if n not in services:
                self.fail(path, f"unknown service {n!r}")
        return PipelineSpec(name, tuple(nodes), tuple(edges))

    def edge(self, raw: Any, path: str) -> EdgeSpec | None:
        if isinstance(raw, str):
            match = _EDGE.match(raw)
            if not match:
                self.fail(path, f"write edges as 'a -> b', not {raw!r}")
                return None
            return EdgeSpec(match.group(1), match.group(2))
        node = self.mapping(raw, path, ("from", "to", "when"))
        if not node.get("from") or not node.get("to"):
            self.fail(path, "an edge needs 'from' and 'to'")
            return None
        when = node.get("when")
        return EdgeSpec(str(node["from"]), str(node["to"]), str(when) if when else None)

    def gateway(
        self,
        raw: Any,
        services: Mapping[str, ServiceSpec],
        pipelines: Mapping[str, PipelineSpec],
    ) -> GatewaySpec:
        node = self.mapping(
            raw,
            "gateway",
            (
                "host",
                "port",
                "routes",
                "api_keys",
                "api_keys_file",
                "max_inflight",
                "max_body",
                "shutdown_grace",
                "send_timeout",
            ),
        )
        host = str(node.get("host") or "0.0.0.0")
        port = self.get(node, "port", "gateway", _port, 8008, "a port number (1-65535)")
        routes: list[RouteSpec] = []
        raw_routes = node.get("routes") or []
        if not isinstance(raw_routes, list):
            self.fail("gateway.routes", "must be a list")
            raw_routes = []
        for i, item in enumerate(raw_routes):
            path = f"gateway.routes[{i}]"
            route = self.mapping(
                item, path, ("dialect", "pipeline", "prefix", "model", "embeddings")
            )
            dialect = route.get("dialect")
            if dialect not in DIALECTS:
                self.fail(
                    f"{path}.dialect", f"must be one of {', '.join(DIALECTS)}, not {dialect!r}"
                )
            pipeline = str(route.get("pipeline") or "")
            if pipeline not in pipelines:
                self.fail(f"{path}.pipeline", f"unknown pipeline {pipeline!r}")
            prefix = str(route.get("prefix") or "").rstrip("/")
            if prefix and not prefix.startswith("/"):
                self.fail(f"{path}.prefix", f"must start with '/', not {prefix!r}")
            embeddings = route.get("embeddings")
            if embeddings and embeddings not in services:
                self.fail(f"{path}.embeddings", f"unknown service {embeddings!r}")
            routes.append(
                RouteSpec(
                    dialect=str(dialect),
                    pipeline=pipeline,
                    prefix=prefix,
                    model=str(route["model"]) if route.get("model") else None,
                    embeddings=str(embeddings) if embeddings else None,
                )
            )
        seen: set[tuple[str, str]] = set()
        for i, r in enumerate(routes):
            if (r.dialect, r.prefix) in seen:
                self.fail(
                    f"gateway.routes[{i}]", f"{r.dialect} is mounted twice at {r.prefix or '/'!r}"
                )
            seen.add((r.dialect, r.prefix))
        return GatewaySpec(host, port, tuple(routes), *self.gateway_limits(node))

    def gateway_limits(
        self, node: Mapping[str, Any]
    ) -> tuple[tuple[str, ...], int, int, float, float]:
        """``api_keys`` (inline and from ``api_keys_file``), ``max_inflight``,
        ``max_body``, ``shutdown_grace``, ``send_timeout``."""
        raw_keys = node.get("api_keys") or ()
        if isinstance(raw_keys, str):
            raw_keys = raw_keys.split(",")
        if not isinstance(raw_keys, list | tuple):
            self.fail("gateway.api_keys", "must be a list or a comma-separated string")
            raw_keys = ()
        keys = [str(k).strip() for k in raw_keys if str(k).strip()]
        key_file = node.get("api_keys_file")
        if key_file:
            try:
                for line in Path(str(key_file)).read_text(encoding="utf-8").splitlines():
                    key = line.split("#", 1)[0].strip()
                    if key:
                        keys.append(key)
            except OSError as exc:
                self.fail("gateway.api_keys_file", f"cannot read {key_file!r} ({exc.strerror})")
        inflight = self.get(
            node, "max_inflight", "gateway", _count_any, 0, "a whole number (0: no limit)"
        )
        max_body = self.get(
            node,
            "max_body",
            "gateway",
            _size,
            8 * 1024 * 1024,
            "a size in bytes (such as 1048576, 512KiB or 8MiB)",
        )
        grace = self.get(
            node, "shutdown_grace", "gateway", _seconds_or_zero, 10.0, "a number of seconds"
        )
        send_timeout = self.get(
            node,
            "send_timeout",
            "gateway",
            _seconds_or_zero,
            60.0,
            "a number of seconds (0: no limit)",
        )
        return tuple(keys), inflight, max_body, grace, send_timeout

    def fallbacks(self, services: Mapping[str, ServiceSpec]) -> None:
        """Every ``fallback`` names a service, and following them never loops."""
        for name, spec in services.items():
            seen = [name]
            target = spec.fallback
            while target is not None:
                if target not in services:
                    self.fail(f"services.{seen[-1]}.fallback", f"unknown service {target!r}")
                    break
                if target in seen:
                    if target == name and len(seen) > 1:
                        self.fail(
                            f"services.{name}.fallback",
                            f"fallbacks loop: {' -> '.join([*seen, target])}",
                        )
                    break
                seen.append(target)
                target = services[target].fallback


def _positive(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    number = float(value)
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)) or int(float(value)) < 1:
        raise ValueError
    return int(float(value))


def _count(value: Any) -> int:
    number = _count_any(value)
    if number > 10:
        raise ValueError
    return number


def _count_any(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)) or int(float(value)) < 0:
        raise ValueError
    return int(float(value))


def _seconds_or_zero(value: Any) -> float:
    if str(value).strip() in ("0", "0.0"):
        return 0.0
    return _positive(value)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1:
        raise ValueError
    return size


def _port(value: Any) -> int:
    port = _positive_int(value)
    if port > 65535:
        raise ValueError
    return port


def _port_or_zero(value: Any) -> int:
    if str(value).strip() == "0":
        return 0
    return _port(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError
