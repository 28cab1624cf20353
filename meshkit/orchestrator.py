"""`ServiceOrchestrator`: a graph of `MicroService` nodes and the way a request runs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self

import attrs
import structlog

from .client import HttpClient
from .errors import GraphError, MeshError, NodeError, NodeTimeout
from .nodes.base import Context, MicroService

log = structlog.get_logger(__name__)

Condition = Callable[[Any, Context], bool]


@attrs.frozen
class Edge:
    """A connection ``src -> dst``, taken only when ``when`` (if any) holds."""

    src: str
    dst: str
    when: Condition | None = attrs.field(default=None, eq=False)
    label: str | None = None


class ServiceOrchestrator:
    """A directed acyclic graph of services, run once per request.

    Nodes whose inputs are ready run concurrently; a node with one predecessor gets its
    output, one with several gets a ``{name: output}`` dict, and the first nodes get the
    request itself. The graph's single sink gives the result: a value, a
    :class:`~meshkit.protocol.Completion` or a chunk stream.

    Example:
        >>> mesh = ServiceOrchestrator()
        >>> mesh.add(prompt).add(llm).flow_to(prompt, llm)
    """

    def __init__(self, name: str = "default", *, client: HttpClient | None = None) -> None:
        self.name = name
        self.services: dict[str, MicroService] = {}
        self.edges: list[Edge] = []
        self._client = client
        self._owns_client = False
        self._plan: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return f"<ServiceOrchestrator {self.name!r} nodes={list(self.services)}>"

    # -- building -------------------------------------------------------------------------

    def add(self, service: MicroService) -> Self:
        """Add a node; names are unique within the graph."""
        if service.name in self.services:
            raise GraphError(f"{self.name}: a node named {service.name!r} exists already")
        self.services[service.name] = service
        self._plan = None
        return self

    def flow_to(
        self,
        src: MicroService | str,
        dst: MicroService | str,
        *,
        when: Condition | None = None,
        label: str | None = None,
    ) -> Self:
        """Connect ``src``'s output to ``dst``'s input (optionally only ``when`` it holds)."""
        a = src if isinstance(src, str) else src.name
        b = dst if isinstance(dst, str) else dst.name
        for end in (a, b):
            if end not in self.services:
                raise GraphError(f"{self.name}: edge {a} -> {b}: unknown node {end!r}")
        if a == b or b in self._ancestors(a):
            raise GraphError(f"{self.name}: edge {a} -> {b} would make a cycle")
        if any(e.src == a and e.dst == b for e in self.edges):
            raise GraphError(f"{self.name}: edge {a} -> {b} is declared twice")
        self.edges.append(Edge(a, b, when, label))
        self._plan = None
        return self

    def predecessors(self, name: str) -> list[str]:
        """Names of the nodes feeding ``name``, in declaration order."""
        return [e.src for e in self.edges if e.dst == name]

    def successors(self, name: str) -> list[str]:
        """Names of the nodes ``name`` feeds, in declaration order."""
        return [e.dst for e in self.edges if e.src == name]

    def _ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = [name]
        while todo:
            for pred in self.predecessors(todo.pop()):
                if pred not in seen:
                    seen.add(pred)
                    todo.append(pred)
        return seen

    @property
    def sink(self) -> str:
        """The node whose output is the graph's result."""
        return self.plan()[-1]

    def plan(self) -> tuple[str, ...]:
        """Check the graph and return its nodes in a topological order."""
        if self._plan is not None:
            return self._plan
        if not self.services:
            raise GraphError(f"{self.name}: the graph has no nodes")
        sinks = [n for n in self.services if not self.successors(n)]
        if len(sinks) != 1:
            raise GraphError(
                f"{self.name}: a graph needs exactly one final node, found {sorted(sinks)}"
            )
        indegree = {n: len(self.predecessors(n)) for n in self.services}
        ready = [n for n, d in indegree.items() if d == 0]
        order: list[str] = []
        while ready:
            node = ready.pop(0)
            order.append(node)
            for nxt in self.successors(node):
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    ready.append(nxt)
        order.remove(sinks[0])
        order.append(sinks[0])
        self._plan = tuple(order)
        return self._plan

    def _is_chain(self) -> bool:
        return all(
            len(self.predecessors(n)) <= 1 and len(self.successors(n)) <= 1
            for n in self.services
        ) and all(e.when is None for e in self.edges)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, client: HttpClient | None = None) -> None:
        """Open the outbound client (shared if given) and every node."""
        if client is not None:
            self._client = client
        if self._client is None:
            self._client = HttpClient()
            self._owns_client = True
        await self._client.open()
        self.plan()
        for service in self.services.values():
            await service.open(self._client)

    def attach(self, client: HttpClient) -> None:
        """Use ``client`` for outbound calls; whoever owns it opens and closes the nodes."""
        self._client = client
        self._owns_client = False
        self.plan()

    async def close(self) -> None:
        """Close every node, then the client if this orchestrator created it."""
        for service in self.services.values():
            await service.close()
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None
            self._owns_client = False

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

    @property
    def client(self) -> HttpClient:
        """The outbound client; :meth:`open` creates it."""
        if self._client is None:
            raise RuntimeError(f"{self.name}: orchestrator is not open; use 'async with'")
        return self._client

    def context(self, **fields: Any) -> Context:
        """A fresh request context bound to this orchestrator's client."""
        return Context(client=self.client, **fields)

    # -- running --------------------------------------------------------------------------

    async def run(self, data: Any, ctx: Context | None = None) -> Any:
        """Run one request through the graph and return the final node's output.

        A streaming result is returned as soon as the stream is open; iterate it to pull
        chunks through every node that transforms it, and ``aclose()`` it to cancel.
        """
        if ctx is None:
            if self._client is None:
                await self.open()
            ctx = self.context()
        plan = self.plan()
        if self._is_chain():
            for name in plan:
                data = await self._call(self.services[name], data, ctx)
            return data
        return await self._run_graph(plan, data, ctx)

    async def _run_graph(self, plan: Iterable[str], data: Any, ctx: Context) -> Any:
        done: dict[str, asyncio.Future[Any]] = {}
        skipped = _Skipped()
        loop = asyncio.get_running_loop()
        for name in plan:
            done[name] = loop.create_future()

        async def run_node(name: str) -> None:
            preds = self.predecessors(name)
            if not preds:
                value = data
            else:
                inputs = {p: await done[p] for p in preds}
                live = {
                    e.src: inputs[e.src]
                    for e in self.edges
                    if e.dst == name
                    and inputs[e.src] is not skipped
                    and (e.when is None or e.when(inputs[e.src], ctx))
                }
                if not live:
                    done[name].set_result(skipped)
                    return
                value = next(iter(live.values())) if len(preds) == 1 else live
            done[name].set_result(await self._call(self.services[name], value, ctx))

        try:
            async with asyncio.TaskGroup() as group:
                for name in plan:
                    group.create_task(run_node(name), name=f"meshkit.node.{name}")
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        result = done[self.sink].result()
        if result is skipped:
            raise GraphError(f"{self.name}: no path reached {self.sink!r} for this request")
        return result

    async def _call(self, service: MicroService, data: Any, ctx: Context) -> Any:
        ctx.trace.append(service.name)
        started = time.perf_counter()
        try:
            if service.timeout is None:
                result = await service.process(data, ctx)
            else:
                async with asyncio.timeout(service.timeout):
                    result = await service.process(data, ctx)
        except MeshError:
            raise
        except TimeoutError as exc:
            raise NodeTimeout(
                f"node {service.name!r} took longer than {service.timeout} s",
                node=service.name,
            ) from exc
        except Exception as exc:
            log.exception("meshkit.node.failed", node=service.name, request_id=ctx.request_id)
            raise NodeError(f"node {service.name!r} failed: {exc}", node=service.name) from exc
        log.debug(
            "meshkit.node.done",
            node=service.name,
            ms=round((time.perf_counter() - started) * 1000, 3),
            request_id=ctx.request_id,
        )
        return result


class _Skipped:
    """Marks the output of a node that no taken edge reached."""

    def __repr__(self) -> str:
        return "<skipped>"


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report for a failed graph: a MeshError if any branch raised one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, MeshError):
            return exc
    return leaves[0]
