"""`ServiceOrchestrator`: a graph of `MicroService` nodes and the way a request runs it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Self

import structlog

from .._lifecycle import Resource
from ..client.http import HttpClient
from ..errors import GraphError, MeshError, NodeError, NodeTimeout
from ..nodes.base import Context, MicroService
from ..protocol.streams import TEE_BUFFER
from . import topology as graph
from .conditions import Condition, compile_condition
from .execution import GraphRun
from .topology import ConditionFn, Edge

log = structlog.get_logger(__name__)


_debug: list[bool] = []


def _debugging() -> bool:
    """Whether debug lines are written, asked once (the CLI sets the level before any
    request; a logger that cannot say is taken to write them)."""
    if not _debug:
        check = getattr(log, "is_enabled_for", None)
        _debug.append(True if check is None else bool(check(logging.DEBUG)))
    return _debug[0]


class ServiceOrchestrator(Resource):
    """A directed acyclic graph of services, run once per request.

    Nodes whose inputs are ready run concurrently. A first node gets the request; a
    node with one predecessor gets its output (converted to the port it takes: a stream
    is read whole for a node that takes text); a node with several gets an
    :class:`~meshkit.nodes.ports.Inputs` mapping of the inputs that arrived, by node
    name. A stream feeding several nodes is shared through a bounded :class:`Tee`.
    Edges may carry a condition (a ``when`` expression or a callable); a node none of
    whose incoming edges was taken is skipped. The single final node gives the result.

    With more than one node, the result also reports what ran: a final chunk (or the
    Completion's ``meta``) holding ``path``, ``skipped``, ``failed`` (optional nodes
    that failed) and whatever nodes put in ``ctx.meta`` (a RAG prompt adds ``sources``).

    Example:
        >>> mesh = ServiceOrchestrator()
        >>> mesh.add(prompt).add(llm).flow_to(prompt, llm)
    """

    def __init__(
        self,
        name: str = "default",
        *,
        client: HttpClient | None = None,
        tee_buffer: int = TEE_BUFFER,
    ) -> None:
        self.name = name
        self.services: dict[str, MicroService] = {}
        self.edges: list[Edge] = []
        self.tee_buffer = tee_buffer
        self._optional: set[str] = set()
        self._client = client
        self._owns_client = False
        self._analysis: graph.Analysis | None = None
        #: The only node of a checked one-node graph (None otherwise): what a request
        #: runs, with no plan to check and no walk to set up (see :meth:`run`).
        self._single: MicroService | None = None

    def __repr__(self) -> str:
        return f"<ServiceOrchestrator {self.name!r} nodes={list(self.services)}>"

    # -- building -------------------------------------------------------------------------

    def add(self, service: MicroService, *, optional: bool = False) -> Self:
        """Add a node; names are unique. An ``optional`` node's failure skips it instead
        of failing the request."""
        if service.name in self.services:
            raise GraphError(f"{self.name}: a node named {service.name!r} exists already")
        self.services[service.name] = service
        if optional:
            self._optional.add(service.name)
        self._analysis = None
        self._single = None
        return self

    def is_optional(self, name: str) -> bool:
        """Whether the node ``name`` may fail without failing the request."""
        return name in self._optional

    def flow_to(
        self,
        src: MicroService | str,
        dst: MicroService | str,
        *,
        when: str | ConditionFn | None = None,
        label: str | None = None,
    ) -> Self:
        """Connect ``src``'s output to ``dst``'s input, only ``when`` it holds if given.

        ``when`` is an expression in meshkit's condition language (see
        :mod:`meshkit.expr`) or a callable ``(output, ctx) -> bool``.
        """
        a = src if isinstance(src, str) else src.name
        b = dst if isinstance(dst, str) else dst.name
        for end in (a, b):
            if end not in self.services:
                raise GraphError(f"{self.name}: edge {a} -> {b}: unknown node {end!r}")
        if a == b or b in self._ancestors(a):
            raise GraphError(f"{self.name}: edge {a} -> {b}: would make a cycle")
        if any(e.src == a and e.dst == b for e in self.edges):
            raise GraphError(f"{self.name}: edge {a} -> {b}: is declared twice")
        if isinstance(when, str):
            try:
                when = compile_condition(when)
            except ValueError as exc:
                raise GraphError(f"{self.name}: edge {a} -> {b}: {exc}") from exc
        if label is None and isinstance(when, Condition):
            label = when.source
        self.edges.append(Edge(a, b, when, label))
        self._analysis = None
        self._single = None
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

    def problems(self) -> list[str]:
        """Everything wrong with the graph (ports, shape), each naming both ends."""
        return list(self.analysis().problems)

    def analysis(self) -> graph.Analysis:
        """The checked shape of the graph: order, final node, ports (cached)."""
        if self._analysis is None:
            self._analysis = graph.analyse(self.services, self.edges)
        return self._analysis

    def plan(self) -> tuple[str, ...]:
        """Check the graph and return its nodes in a topological order."""
        analysis = self.analysis()
        if analysis.problems:
            raise GraphError(f"{self.name}: " + "; ".join(analysis.problems))
        if len(self.services) == 1:
            (self._single,) = self.services.values()
        return analysis.order

    @property
    def sink(self) -> str:
        """The node whose output is the graph's result."""
        self.plan()
        return str(self.analysis().sink)

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
        for service in reversed(self.services.values()):
            await service.close()
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None
            self._owns_client = False

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

    def run(self, data: Any, ctx: Context | None = None) -> Coroutine[Any, Any, Any]:
        """Run one request through the graph and return the final node's output (a
        coroutine: await it).

        A streaming result is returned as soon as the stream is open; iterate it to pull
        chunks through every node that transforms it, and ``aclose()`` it to cancel
        (that closes every stream the request opened, and so every upstream call).
        """
        single = self._single  # set once the graph was checked, not per request
        if single is not None and ctx is not None:
            # A checked one-node graph: the node call itself, with no coroutine of
            # this method's around it (one layer less on every resumption).
            if ctx.request is None:
                ctx.request = data
            return self.call_node(single, data, ctx)
        return self._run(data, ctx)

    async def _run(self, data: Any, ctx: Context | None) -> Any:
        if ctx is None:
            if self._client is None:
                await self.open()
            ctx = self.context()
        if ctx.request is None:
            ctx.request = data
        single = self._single  # set once the graph was checked, not per request
        if single is not None:
            return await self.call_node(single, data, ctx)
        self.plan()
        if self._single is not None:
            return await self.call_node(self._single, data, ctx)
        return await GraphRun(self, ctx).run(data)

    async def call_node(
        self,
        service: MicroService,
        data: Any,
        ctx: Context,
        process: Callable[[Any, Context], Awaitable[Any]] | None = None,
    ) -> Any:
        """Run one node under its timeout; foreign errors become a NodeError naming it.

        ``process``: what runs for the node (its own :meth:`~MicroService.process`
        unless given: the gateway's whole-answer path gives the LLM node's ``whole``).
        """
        ctx.trace.append(service.name)
        debug = _debugging()
        started = time.perf_counter() if debug else 0.0
        if process is None:
            process = service.process
        try:
            with ctx.observer.node(service.name) as probe:
                if service.timeout is None:  # the node bounds itself: no timer to arm
                    result = probe.returned(await process(data, ctx))
                else:
                    async with asyncio.timeout(service.timeout):
                        result = probe.returned(await process(data, ctx))
        except MeshError:
            raise
        except TimeoutError as exc:
            raise NodeTimeout(
                f"node {service.name!r} took longer than {service.timeout:g} s",
                node=service.name,
            ) from exc
        except Exception as exc:
            log.exception("meshkit.node.failed", node=service.name, request_id=ctx.request_id)
            raise NodeError(f"node {service.name!r} failed: {exc}", node=service.name) from exc
        if debug:  # the line's fields cost more than the request's own node call
            log.debug(
                "meshkit.node.done",
                node=service.name,
                ms=round((time.perf_counter() - started) * 1000, 3),
                request_id=ctx.request_id,
            )
        return result
