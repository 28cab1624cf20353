"""`Mesh`: a loaded ``services.yaml`` — its services built, its pipelines wired."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import structlog

from . import spec as spec_mod
from .client import HttpClient
from .errors import GraphError, MeshError, SpecError
from .nodes.base import MicroService
from .nodes.registry import ServiceRegistry
from .orchestrator import ServiceOrchestrator
from .spec import MeshSpec, ServiceSpec

log = structlog.get_logger(__name__)


class Mesh:
    """Services and pipelines built from a :class:`~meshkit.spec.MeshSpec`.

    Building checks every graph (unknown nodes, cycles, a single final node) and
    reports all problems together as a :class:`SpecError`. :meth:`open` starts what the
    services need (one shared HTTP client, the embedded model server where an LLM has no
    endpoint) and :meth:`close` stops it.
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
        self.pipelines: dict[str, ServiceOrchestrator] = {}
        for name, pipe in spec.pipelines.items():
            if any(n not in self.services for n in pipe.nodes):
                continue
            orchestrator = ServiceOrchestrator(name)
            try:
                for node in pipe.nodes:
                    orchestrator.add(self.services[node])
                for edge in pipe.edges:
                    if edge.when is not None:
                        raise GraphError(
                            f"edge {edge.src} -> {edge.dst}: conditions are not supported yet"
                        )
                    orchestrator.flow_to(edge.src, edge.dst)
                orchestrator.plan()
            except GraphError as exc:
                problems.append(f"pipelines.{exc.message}")
                continue
            self.pipelines[name] = orchestrator
        if problems:
            raise SpecError(problems)
        self._client: HttpClient | None = None
        self._stack: AsyncExitStack | None = None

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None
    ) -> Mesh:
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
                if service_spec.type == "llm" and not service_spec.endpoints:
                    await self._start_local(stack, self.services[name], service_spec)
            if client is None:
                client = HttpClient()
                await client.open()
                stack.push_async_callback(client.close)
            self._client = client
            for service in self.services.values():
                await service.open(client)
                stack.push_async_callback(service.close)
            for orchestrator in self.pipelines.values():
                orchestrator.attach(client)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def _start_local(
        self, stack: AsyncExitStack, service: MicroService, spec: ServiceSpec
    ) -> None:
        raise SpecError([f"services.{spec.name}.endpoint: is required (the embedded model "
                         "server is not available in this build)"])

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
