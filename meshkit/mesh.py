"""`Mesh`: a loaded ``services.yaml`` — its services built, its pipelines wired."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

import attrs
import structlog

from . import spec as spec_mod
from .client import HttpClient
from .errors import GraphError, MeshError, SpecError
from .nodes.base import MicroService
from .nodes.registry import ServiceRegistry
from .orchestrator import ServiceOrchestrator
from .spec import LocalSpec, MeshSpec, PipelineSpec, ServiceSpec

log = structlog.get_logger(__name__)


class Mesh:
    """Services and pipelines built from a :class:`~meshkit.spec.MeshSpec`.

    Building checks every graph (unknown nodes, cycles, a single final node, edge
    conditions, port types on every edge, services a node refers to by name) and
    reports all problems together as a :class:`SpecError`, each with its YAML path.
    :meth:`open` starts what the services need (one shared HTTP client, the embedded
    model server where an LLM has no endpoint, embedders before the retrievers that
    load their corpus through them) and :meth:`close` stops it.
    """

    def __init__(self, spec: MeshSpec, *, registry: ServiceRegistry | None = None) -> None:
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
        """Load, validate and build ``path``."""
        return cls(spec_mod.load(path, env))

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
            for name, service_spec in self.spec.services.items():
                if (
                    service_spec.type == "llm"
                    and not service_spec.endpoints
                    and (service_spec.class_path is None)
                ):
                    await self._start_local(stack, self.services[name], service_spec)
            if client is None:
                client = HttpClient()
                await client.open()
                stack.push_async_callback(client.close)
            self._client = client
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

    async def _start_local(
        self, stack: AsyncExitStack, service: MicroService, spec: ServiceSpec
    ) -> None:
        """Run the embedded model server for an LLM without an endpoint, and point the
        service at it; its default model becomes the local model unless it serves the
        configured one."""
        from .local.process import LocalServer

        local = spec.local or LocalSpec()
        server = LocalServer(
            host=local.host, port=local.port, model=local.model_path, threads=local.threads
        )
        await stack.enter_async_context(server)
        async with HttpClient() as probe:
            remote = self.registry.build(attrs.evolve(spec, endpoints=(server.url,)))
            names = list(await remote.models(probe))
        model = spec.model if spec.model in names else (names[0] if names else spec.model)
        replacement = self.registry.build(attrs.evolve(spec, endpoints=(server.url,), model=model))
        self.services[spec.name] = replacement
        for orchestrator in self.pipelines.values():
            if orchestrator.services.get(spec.name) is service:
                orchestrator.services[spec.name] = replacement
        log.info("meshkit.local.ready", service=spec.name, url=server.url, model=model)

    async def close(self) -> None:
        """Stop everything :meth:`open` started, in reverse order."""
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        self._client = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def ready(self) -> dict[str, bool]:
        """Readiness of every service that is part of a routed pipeline."""
        status: dict[str, bool] = {}
        for name, service in self.services.items():
            try:
                status[name] = await service.ready(self.client)
            except MeshError:
                status[name] = False
        return status
