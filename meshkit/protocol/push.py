"""The fast path's two sides, declared: a stream that can push, and a sink it pushes into.

A chunk stream is normally *pulled* (``async for``): one task wake-up per chunk. A
:class:`PushStream` can also be *spliced* into a :class:`ChunkSink`: it hands each chunk
to :meth:`ChunkSink.emit` from its own I/O callback, with no task switch per chunk. The
gateway splices an answer that is a ``PushStream`` (a pipeline that is one remote LLM)
and pulls any other stream into the same sink, so both paths write the same bytes.

Backpressure belongs to the sink: once :attr:`ChunkSink.full`, the producer stops
producing until :meth:`ChunkSink.drain` returns, and a sink ends that wait on its
transport's own signal that the reader caught up (asyncio's ``resume_writing``), never
on a timer. Nothing here does I/O; the gateway implements the sink, the LLM node the
stream.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Protocol

from .types import Chunk


class ChunkSink(Protocol):
    """Where a stream's chunks go, one writer per answer."""

    def emit(self, chunk: Chunk) -> bool:
        """Take one chunk now, without waiting; False when the reader is gone (stop).

        A sink may hold the chunk until the end of the loop pass, to write all the
        chunks of one read together, but never past it, and never after anything it
        writes later.
        """
        ...

    @property
    def verbatim(self) -> str | None:
        """The upstream answer id whose plain text delta events the sink now writes as
        they came (:meth:`relay`), or None: every chunk goes through :meth:`emit`."""
        ...

    def relay(self, event: bytes) -> bool:
        """Take one upstream event as it came, without its chunk: a whole plain text
        delta of the answer :attr:`verbatim` names, for which :meth:`emit` would write
        exactly ``event``. False when the reader is gone (stop)."""
        ...

    @property
    def full(self) -> bool:
        """Whether the reader is behind: produce nothing more before :meth:`drain`."""
        ...

    def ending(self) -> None:
        """The stream's last chunk is emitted (or it broke): what the sink holds may
        wait for the end of the answer, to leave in the same write."""
        ...

    async def drain(self) -> None:
        """Wait until the reader has caught up.

        Raises:
            ConnectionResetError: The reader left, or read nothing for too long.
        """
        ...


class PushStream(AsyncIterator[Chunk]):
    """A chunk stream that can be pulled (``async for``) or spliced into a sink.

    Read it one way only, and close it (:meth:`aclose`) however reading ends. Every
    failure it raises, pulled or pushed, is a :class:`~meshkit.errors.MeshError` that
    names where it came from, so a graph relays it without wrapping it.
    """

    __slots__ = ()

    @abstractmethod
    async def splice(self, sink: ChunkSink) -> None:
        """Push every chunk into ``sink`` as it arrives; return when the stream ends.

        While ``sink.full`` the stream reads nothing more until ``sink.drain()``
        returns. Call it instead of iterating, never after.

        Raises:
            ConnectionResetError: ``sink.emit`` returned False, or ``sink.drain``
                raised it; what the stream was reading from is cancelled.
            MeshError: The stream broke, as iterating would have raised.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Stop reading; whatever the stream reads from is cancelled if still going."""
