"""One request's run through a graph: values on edges, tees, skips, and the result stream.

:class:`GraphRun` starts one task per node; each waits for the values on its incoming
edges (or the mark of a skipped branch), converts them to the port it takes, runs the
node and hands its output on over the edges whose condition holds. Every stream the
run opens is recorded, so that closing the result (or a failure) closes all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import attrs
import structlog

from ..errors import GraphError, MeshError, NodeError
from ..nodes.base import Context, MicroService
from ..nodes.ports import Inputs, Port, arrival, takes
from ..protocol.push import PushStream
from ..protocol.streams import Tee, aclose, aggregate, is_stream, named, single
from ..protocol.types import ChatRequest, Chunk, Completion, Message
from .topology import Analysis, Edge


class Plan(Protocol):
    """What one run reads of its pipeline (a :class:`ServiceOrchestrator` is one)."""

    name: str
    services: dict[str, MicroService]
    edges: list[Edge]
    tee_buffer: int

    def analysis(self) -> Analysis: ...
    def is_optional(self, name: str) -> bool: ...
    async def call_node(self, service: MicroService, data: Any, ctx: Context) -> Any: ...


log = structlog.get_logger(__name__)


class _Skipped:
    """Marks the output of a node that no taken edge reached."""

    def __repr__(self) -> str:
        return "<skipped>"


#: The value on an edge that was not taken, or out of a node that did not run.
SKIPPED: Any = _Skipped()


class GraphRun:
    """One request's walk through a graph: values on edges, streams to close, the path."""

    def __init__(self, graph_: Plan, ctx: Context) -> None:
        self.g = graph_
        self.ctx = ctx
        self.analysis = graph_.analysis()
        loop = asyncio.get_running_loop()
        self.inbox: dict[tuple[str, str], asyncio.Future[Any]] = {
            (e.src, e.dst): loop.create_future() for e in graph_.edges
        }
        self.result: asyncio.Future[Any] = loop.create_future()
        self.opened: list[Any] = []
        self.skipped: list[str] = []
        self.failed: dict[str, str] = {}
        #: Milliseconds from each node's start until its output was ready (for a
        #: stream: until it was open), reported in the result's meta as ``node_ms``.
        self.node_ms: dict[str, float] = {}
        #: The edges a value went over, in the order they were taken.
        self.taken: list[tuple[str, str]] = []

    async def run(self, data: Any) -> Any:
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    for name in self.analysis.order:
                        group.create_task(self.node(name, data), name=f"meshkit.node.{name}")
            except BaseExceptionGroup as group_error:
                raise first_error(group_error) from None
            result = self.result.result()
        except BaseException:
            await self.close_all()
            raise
        if result is SKIPPED:
            await self.close_all()
            raise GraphError(
                f"{self.g.name}: no path reached {self.analysis.sink!r} for this request"
            )
        if is_stream(result):
            return GraphStream(result, self.meta, self.opened)
        await self.close_all()
        if isinstance(result, Completion):
            return attrs.evolve(result, meta={**(result.meta or {}), **self.meta()})
        return result

    def meta(self) -> dict[str, Any]:
        report: dict[str, Any] = dict(self.ctx.meta)
        report["path"] = [n for n in self.ctx.trace if n in self.g.services]
        report["skipped"] = list(self.skipped)
        report["node_ms"] = dict(self.node_ms)
        report["edges"] = [list(edge) for edge in self.taken]
        if self.failed:
            report["failed"] = dict(self.failed)
        return report

    async def close_all(self) -> None:
        for stream in reversed(self.opened):
            await aclose(stream)

    async def node(self, name: str, data: Any) -> None:
        service = self.g.services[name]
        incoming = [e for e in self.g.edges if e.dst == name]
        try:
            if not incoming:
                value = await self.adapt(data, _entry_port(service))
            else:
                arrived = {e.src: await self.inbox[(e.src, name)] for e in incoming}
                live = {k: v for k, v in arrived.items() if v is not SKIPPED}
                if not live:
                    self.skipped.append(name)
                    await self.deliver(name, SKIPPED)
                    return
                ports = self.analysis.delivered
                adapted = {
                    k: await self.adapt(v, ports.get((k, name), Port.ANY)) for k, v in live.items()
                }
                value = next(iter(adapted.values())) if len(incoming) == 1 else Inputs(adapted)
            started = time.perf_counter()
            out = await self.g.call_node(service, value, self.ctx)
            self.node_ms[name] = round((time.perf_counter() - started) * 1000, 3)
        except Exception as exc:
            if not self.g.is_optional(name):
                raise
            log.warning(
                "meshkit.node.optional_failed",
                node=name,
                error=str(exc),
                request_id=self.ctx.request_id,
            )
            self.failed[name] = str(exc)
            self.skipped.append(name)
            await self.deliver(name, SKIPPED)
            return
        if is_stream(out):
            self.opened.append(out)
            if not isinstance(out, PushStream):
                # A PushStream's failures name their source already (its contract):
                # only other streams get this generator layer per chunk.
                out = named(out, name)
                self.opened.append(out)
        await self.deliver(name, out)

    async def deliver(self, name: str, out: Any) -> None:
        if name == self.analysis.sink:
            self.result.set_result(out)
        taken: list[Edge] = []
        for e in self.g.edges:
            if e.src != name:
                continue
            if out is not SKIPPED and (e.when is None or self.holds(e, out)):
                taken.append(e)
                self.taken.append((e.src, e.dst))
            else:
                self.inbox[(e.src, e.dst)].set_result(SKIPPED)
        if is_stream(out) and len(taken) != 1:
            if not taken and name != self.analysis.sink:
                await aclose(out)
                return
            if taken:
                tee = Tee(out, len(taken), buffer=self.g.tee_buffer)
                self.opened.extend(tee.branches)
                for e, branch in zip(taken, tee.branches, strict=True):
                    self.inbox[(e.src, e.dst)].set_result(branch)
                return
        for e in taken:
            self.inbox[(e.src, e.dst)].set_result(out)

    def holds(self, edge: Edge, out: Any) -> bool:
        assert edge.when is not None
        try:
            return bool(edge.when(out, self.ctx))
        except Exception as exc:
            raise NodeError(
                f"edge {edge.src} -> {edge.dst}: condition {edge.label or 'when'!r} failed: {exc}",
                node=edge.src,
            ) from exc

    async def adapt(self, value: Any, port: Port) -> Any:
        """Convert a value to the port it arrives on (see :mod:`meshkit.nodes.ports`)."""
        if port is Port.STREAM:
            if isinstance(value, Completion):
                return single(value)
            if isinstance(value, str):
                return single(Completion(value))
            return value
        if port not in (Port.TEXT, Port.REQUEST):
            return value
        if is_stream(value):
            value = await aggregate(value)
        text: str | None = None
        if isinstance(value, Completion):
            text = value.text
        elif isinstance(value, str):
            text = value
        if port is Port.TEXT:
            if isinstance(value, ChatRequest):
                return value.prompt
            return text if text is not None else value
        if text is None:
            return value
        base = self.ctx.request
        if isinstance(base, ChatRequest):
            return attrs.evolve(base, messages=(Message("user", text),))
        return ChatRequest(messages=(Message("user", text),))


def _entry_port(service: MicroService) -> Port:
    try:
        return arrival(Port.REQUEST, takes(service))
    except ValueError:
        return Port.ANY


class GraphStream:
    """The result stream of a graph: the final node's chunks, then a report chunk.

    Closing it (or reaching its end) closes every stream the request opened, started
    or not, so every upstream call is cancelled when the caller stops reading.
    """

    def __init__(
        self,
        stream: AsyncIterator[Chunk],
        meta: Callable[[], dict[str, Any]],
        opened: list[Any],
    ) -> None:
        self._stream = stream
        self._meta: Callable[[], dict[str, Any]] | None = meta
        self._opened = opened
        self._closed = False

    def __aiter__(self) -> GraphStream:
        return self

    async def __anext__(self) -> Chunk:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            if self._meta is not None:
                meta, self._meta = self._meta(), None
                return Chunk("", meta=meta)
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop: close the final stream and every stream behind it."""
        if self._closed:
            return
        self._closed = True
        await aclose(self._stream)
        for stream in reversed(self._opened):
            await aclose(stream)


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
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
