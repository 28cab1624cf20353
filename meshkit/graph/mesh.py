"""`Mesh`: a loaded ``services.yaml`` — its services built, its pipelines wired."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import attrs
import structlog

from .. import spec as spec_mod
from .._lifecycle import Resource
from ..client.http import HttpClient, Limits
from ..errors import GraphError, MeshError, SpecError
from ..nodes.base import MicroService
from ..nodes.registry import ServiceRegistry
from ..spec import MeshSpec, PipelineSpec, ServiceSpec
from .embedded import DEFAULT_MODEL_NAME, LocalServer
from .orchestrator import ServiceOrchestrator

log = structlog.get_logger(__name__)


class Mesh(Resource):
    """Services and pipelines built from a :class:`~meshkit.spec.MeshSpec`.

    Building checks every graph (unknown nodes, cycles, a single final node, edge
    conditions, port types on every edge, services a node refers to by name) and
    reports all problems together as a :class:`SpecError`, each with its YAML path.
    :meth:`open` starts what the services need (one shared HTTP client, the embedded
    model server where an LLM has no endpoint, embedders before the retrievers that
    load their corpus through them) and :meth:`close` stops it.
    """

    def __init__(self, spec: MeshSpec, *, registry: ServiceRegistry | None = None) -> None:
        spec, self.local = plan_local(spec)
        self.spec = spec
        self.registry = registry or ServiceRegistry()
        problems: list[str] = []
        self.services: dict[str, MicroService] = {}
        for name, service_spec in spec.services.items():
            try:
                self.services[name] = self.registry.build(service_spec)
            except SpecError as exc:
                problems.extend(exc.problems)
            except (MeshError, ValueError, TypeError) as exc:
                problems.append(f"services.{name}: {exc}")
        base = Path(spec.source).parent if Path(spec.source).is_file() else None
        for name, service in self.services.items():
            bind = getattr(service, "bind", None)
            if bind is None:
                continue
            try:
                bind(self.services, base)
            except ValueError as exc:
                problems.append(f"services.{name}.{exc}")
        self.pipelines: dict[str, ServiceOrchestrator] = {}
        for name, pipe in spec.pipelines.items():
            if any(n not in self.services for n in pipe.nodes):
                continue
            orchestrator = self._pipeline(name, pipe, problems)
            if orchestrator is not None:
                self.pipelines[name] = orchestrator
        if problems:
            raise SpecError(problems)
        self._client: HttpClient | None = None
        self._stack: AsyncExitStack | None = None

    def _pipeline(
        self, name: str, pipe: PipelineSpec, problems: list[str]
    ) -> ServiceOrchestrator | None:
        """Wire one pipeline; append its problems (with their paths) to ``problems``."""
        path = f"pipelines.{name}"
        orchestrator = ServiceOrchestrator(name)
        for node in pipe.nodes:
            orchestrator.add(self.services[node], optional=self.spec.services[node].optional)
        failed = False
        for i, edge in enumerate(pipe.edges):
            try:
                orchestrator.flow_to(edge.src, edge.dst, when=edge.when)
            except GraphError as exc:
                detail = exc.message.removeprefix(f"{name}: ")
                detail = detail.removeprefix(f"edge {edge.src} -> {edge.dst}: ")
                where = f"{path}.edges[{i}]" + (".when" if edge.when else "")
                problems.append(f"{where}: {edge.src} -> {edge.dst}: {detail}")
                failed = True
        if failed:
            return None
        found = orchestrator.problems()
        problems.extend(f"{path}: {problem}" for problem in found)
        return None if found else orchestrator

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Mesh:
        """Load, validate and build ``path``, reporting every problem of the file at
        once: the graph checks run on every pipeline whose services are sound even when
        other parts of the file are broken."""
        checked = spec_mod.read(path, env)
        if checked.spec is None or not checked.problems:
            return cls(checked.valid())
        try:
            cls(checked.spec)
        except SpecError as exc:
            # A node naming a broken service finds it missing; that one is reported.
            missing = tuple(f"unknown service {name!r}" for name in checked.broken)
            more = [p for p in exc.problems if not any(m in p for m in missing)]
            raise SpecError([*checked.problems, *more]) from None
        raise SpecError(list(checked.problems))

    @property
    def client(self) -> HttpClient:
        """The shared outbound client (after :meth:`open`)."""
        if self._client is None:
            raise RuntimeError("mesh is not open")
        return self._client

    async def open(self, client: HttpClient | None = None) -> None:
        """Start local model servers, open the shared client and every service."""
        stack = AsyncExitStack()
        try:
            if self.local is not None:
                await stack.enter_async_context(self.local.server())
            if client is None:
                client = HttpClient()
                await client.open()
                stack.push_async_callback(client.close)
            self._client = client
            for name, spec in self.spec.services.items():
                client.set_limits(name, Limits(spec.max_connections, spec.max_response_body))
            for service in self._open_order():
                await service.open(client)
                stack.push_async_callback(service.close)
            for orchestrator in self.pipelines.values():
                orchestrator.attach(client)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    def _open_order(self) -> list[MicroService]:
        """Services with what they depend on first (an embedder before its retriever)."""
        order: list[MicroService] = []

        def visit(service: MicroService) -> None:
            if service in order:
                return
            for dep in getattr(service, "depends_on", ()):
                if dep in self.services:
                    visit(self.services[dep])
            order.append(service)

        for service in self.services.values():
            visit(service)
        return order

    async def close(self) -> None:
        """Stop everything :meth:`open` started, in reverse order."""
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        self._client = None

    async def ready(self) -> dict[str, bool]:
        """Readiness of every service that is part of a routed pipeline."""
        status: dict[str, bool] = {}
        for name, service in self.services.items():
            try:
                status[name] = await service.ready(self.client)
            except MeshError:
                status[name] = False
        return status


@attrs.frozen
class LocalPlan:
    """Where the embedded model server runs, decided before any service is built."""

    host: str
    port: int
    model_path: str | None
    threads: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def server(self) -> LocalServer:
        """The managed child process (an async context manager)."""
        return LocalServer(
            host=self.host, port=self.port, model=self.model_path, threads=self.threads
        )


def wanting_local(spec: MeshSpec) -> list[ServiceSpec]:
    """The LLM and embedding services that would use the embedded model: ``local:`` and
    no endpoint (a ``class:`` service decides for itself)."""
    return [
        s
        for s in spec.services.values()
        if s.type in ("llm", "embedding")
        and not s.endpoints
        and s.local is not None
        and s.class_path is None
    ]


def plan_local(spec: MeshSpec) -> tuple[MeshSpec, LocalPlan | None]:
    """Point every LLM and embedding service that has ``local:`` but no endpoint at one
    shared embedded model server, and give them its model name as their default (unless
    theirs is one it answers to). Nothing starts here; :meth:`Mesh.open` starts it."""
    wanting = wanting_local(spec)
    if not wanting:
        return spec, None
    first = wanting[0].local
    assert first is not None
    port = first.port or _free_port(first.host)
    plan = LocalPlan(first.host, port, first.model_path, first.threads)
    if first.model_path:
        name = Path(first.model_path).stem
        accepted = {name}
    else:
        name = DEFAULT_MODEL_NAME
        accepted = {name, name + "-q4_k_m"}
    services = dict(spec.services)
    for s in wanting:
        model = s.model if s.model in accepted else name
        services[s.name] = attrs.evolve(s, endpoints=(plan.url,), model=model)
    return attrs.evolve(spec, services=services), plan


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
