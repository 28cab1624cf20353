"""Streams as graph edges: tee with a bounded buffer, aggregation, named relays.

A streaming edge is an async iterator of :class:`~meshkit.protocol.Chunk`. These
helpers let one stream feed several consumers (:class:`Tee`), let a node that needs
the whole answer wait for it (:func:`aggregate`), and make a failure inside a stream
name the node it came from (:func:`named`). Every helper closes what it reads from
when it is closed itself, so cancellation reaches the upstream call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, TypeGuard

import structlog

from ..errors import MeshError, NodeError, UpstreamError
from .content import LogprobsMerger, ToolCallMerger, as_deltas
from .types import Chunk, ChunkStream, Completion, Usage

log = structlog.get_logger(__name__)

#: Default bound on the chunks a tee holds for its slowest consumer.
TEE_BUFFER = 64


def is_stream(value: Any) -> TypeGuard[AsyncIterator[Any]]:
    """Whether ``value`` is an async iterator (a streaming edge)."""
    return hasattr(value, "__anext__")


async def aclose(stream: Any) -> None:
    """Close ``stream`` if it can be closed; a no-op for finished or plain iterators."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


async def single(completion: Completion) -> ChunkStream:
    """A whole completion as a stream: its reasoning, its text (with its logprobs), its
    tool calls (one whole fragment each), then a final chunk."""
    model = completion.model
    if completion.reasoning:
        yield Chunk(reasoning=completion.reasoning, model=model)
    if completion.text or completion.logprobs:
        yield Chunk(completion.text, model=model, logprobs=completion.logprobs)
    if completion.tool_calls:
        yield Chunk(model=model, tool_calls=as_deltas(completion.tool_calls))
    yield Chunk("", completion.finish_reason or "stop", completion.usage, model, completion.meta)


async def aggregate(stream: AsyncIterator[Chunk]) -> Completion:
    """Read ``stream`` to its end (closing it however that goes) into a Completion:
    text and reasoning joined, tool-call fragments merged, logprobs concatenated."""
    parts: list[str] = []
    reasoning: list[str] = []
    calls = ToolCallMerger()
    logprobs = LogprobsMerger()
    finish: str | None = None
    usage: Usage | None = None
    model: str | None = None
    meta: dict[str, Any] = {}
    try:
        async for chunk in stream:
            parts.append(chunk.text)
            finish = chunk.finish_reason or finish
            usage = chunk.usage or usage
            model = chunk.model or model
            if chunk.meta:
                meta.update(chunk.meta)
            if chunk.reasoning:
                reasoning.append(chunk.reasoning)
            if chunk.tool_calls:
                calls.add(chunk.tool_calls)
            if chunk.logprobs:
                logprobs.add(chunk.logprobs)
    finally:
        await aclose(stream)
    return Completion(
        "".join(parts),
        finish or "stop",
        usage,
        model,
        meta or None,
        reasoning="".join(reasoning),
        tool_calls=calls.calls(),
        logprobs=logprobs.result(),
    )


async def named(stream: AsyncIterator[Chunk], node: str) -> ChunkStream:
    """Relay ``stream``, turning a foreign error inside it into a NodeError naming ``node``."""
    try:
        async for chunk in stream:
            yield chunk
    except MeshError:
        raise
    except Exception as exc:
        log.warning("meshkit.stream.node_failed", node=node, error=repr(exc))
        raise NodeError(f"node {node!r} failed mid-stream: {exc}", node=node) from exc
    finally:
        await aclose(stream)


class Tee:
    """One stream shared by ``n`` consumers, holding at most ``buffer`` chunks.

    The source is read only as fast as the slowest open branch allows: when the
    fastest branch is ``buffer`` chunks ahead of the slowest, it waits (backpressure)
    instead of the buffer growing. A branch that is closed stops holding the others
    back; when every branch is closed, the source is closed (cancelling its upstream).
    An error from the source reaches every branch at the same position.

    Attributes:
        high_water: The most chunks ever held at once (for tests and metrics).
    """

    def __init__(self, source: AsyncIterator[Any], n: int, *, buffer: int = TEE_BUFFER) -> None:
        if n < 1 or buffer < 1:
            raise ValueError("a tee needs at least one branch and a buffer of one")
        self._source = source
        self._buffer = buffer
        self._items: deque[Any] = deque()
        self._base = 0  # stream index of self._items[0]
        self._positions: dict[int, int] = dict.fromkeys(range(n), 0)
        self._done = False
        self._error: BaseException | None = None
        self._pulling = False
        self._changed = asyncio.Condition()
        self._closed_source = False
        self.high_water = 0
        self.branches = [TeeBranch(self, i) for i in range(n)]

    def _trim(self) -> None:
        if not self._positions:
            self._items.clear()
            return
        low = min(self._positions.values())
        while self._base < low and self._items:
            self._items.popleft()
            self._base += 1

    async def _next(self, i: int) -> Any:
        async with self._changed:
            while True:
                pos = self._positions[i]
                if pos < self._base + len(self._items):
                    item = self._items[pos - self._base]
                    self._positions[i] = pos + 1
                    self._trim()
                    self._changed.notify_all()
                    return item
                if self._done:
                    if self._error is not None:
                        raise self._error
                    raise StopAsyncIteration
                if not self._pulling and len(self._items) < self._buffer:
                    self._pulling = True
                    break
                await self._changed.wait()
        try:
            item = await anext(self._source)
        except StopAsyncIteration:
            item, self._done = None, True
        except BaseException as exc:
            self._done, self._error = True, exc
            if not isinstance(exc, Exception):
                # Cancelled while reading: the source is broken for every branch.
                self._error = NodeError("a shared stream was cancelled", node="tee")
            raise
        finally:
            async with self._changed:
                self._pulling = False
                if not self._done:
                    self._items.append(item)
                    self.high_water = max(self.high_water, len(self._items))
                self._changed.notify_all()
        return await self._next(i)

    async def _close(self, i: int) -> None:
        async with self._changed:
            self._positions.pop(i, None)
            self._trim()
            self._changed.notify_all()
            last = not self._positions
        if last and not self._closed_source:
            self._closed_source = True
            await aclose(self._source)


class TeeBranch:
    """One consumer's view of a :class:`Tee` (an async iterator with ``aclose``)."""

    def __init__(self, tee: Tee, index: int) -> None:
        self._tee = tee
        self._index = index
        self._closed = False

    def __aiter__(self) -> TeeBranch:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        return await self._tee._next(self._index)

    async def aclose(self) -> None:
        """Stop consuming; the last branch closed closes the source."""
        if not self._closed:
            self._closed = True
            await self._tee._close(self._index)


def as_stream(result: Any) -> AsyncIterator[Chunk]:
    """Any pipeline result as a chunk stream."""
    if isinstance(result, Completion):
        return single(result)
    if isinstance(result, str):
        return single(Completion(result))
    if hasattr(result, "__aiter__"):
        return result  # type: ignore[no-any-return]
    raise UpstreamError(f"the pipeline returned {type(result).__name__}, not an answer")


async def collect(result: Any) -> Completion:
    """Any pipeline result as a whole completion (a stream is read to its end)."""
    if isinstance(result, Completion):
        return result
    if isinstance(result, str):
        return Completion(result)
    return await aggregate(as_stream(result))
