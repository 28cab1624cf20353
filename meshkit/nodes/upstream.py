"""The relay of an upstream LLM's open stream: pulled chunk by chunk, or spliced.

:class:`UpstreamStream` holds one upstream response from its first chunk on and hands
its chunks on, either to a reader (``async for``) or, on the gateway's fast path, to a
:class:`~meshkit.protocol.push.ChunkSink` called straight from the connection's
``data_received`` (it is a :class:`~meshkit.protocol.push.PushStream`). :class:`LineParser`
cuts the body into lines and has the dialect's line parser turn each into chunks.
Per chunk it does nothing beyond parsing, and a plain OpenAI event that the caller is
sent as it came is not even parsed (``LineParse.verbatim``, ``ChunkSink.relay``); the idle
bound is an :class:`~meshkit.client.limits.IdleWatch` (one lazy timer per loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from typing import Protocol

from ..client import h1
from ..client.http import HttpClient, IdleWatch, Timeouts
from ..client.replicas import Replica, ReplicaSet
from ..errors import MeshError, ShuttingDown, UpstreamError
from ..protocol.codec import LineParse
from ..protocol.push import ChunkSink, PushStream
from ..protocol.types import Chunk
from ..protocol.wire import END


class Owner(Protocol):
    """What a stream reads of the LLM node that opened it (a ``RemoteLLM``)."""

    replicas: ReplicaSet
    timeouts: Timeouts

    def failure(
        self, exc: BaseException, timeouts: Timeouts, *, before_first: bool
    ) -> MeshError | None: ...


class UpstreamStream(PushStream):
    """An upstream's open stream of chunks, from its first one on.

    Pull it chunk by chunk (``async for``), or have it pushed: :meth:`splice` hands each
    chunk to a sink straight from the connection's ``data_received``, with no task
    wake-up per chunk (the gateway's fast path for a pipeline that is one LLM). Either
    way the connection is released when the stream ends or is closed (:meth:`aclose`),
    also when it was never read.
    """

    __slots__ = (
        "_client",
        "_clock",
        "_error",
        "_gen",
        "_head",
        "_llm",
        "_parser",
        "_paused",
        "_relay",
        "_released",
        "_replica",
        "_response",
        "_sink",
        "_verbatim",
        "_wake",
        "_watch",
    )

    def __init__(
        self,
        llm: Owner,
        response: h1.Response,
        parser: LineParser,
        head: list[Chunk],
        replica: Replica,
        client: HttpClient,
    ) -> None:
        self._llm = llm
        self._response = response
        self._parser = parser
        self._head = head
        self._replica = replica
        self._client = client
        # The idle bound, made once the stream waits for data past its head (an answer
        # whose head is all of it never does).
        self._watch: IdleWatch | None = None
        self._released = False
        self._sink: ChunkSink | None = None
        self._wake: asyncio.Future[None] | None = None
        self._paused = False
        self._error: BaseException | None = None
        # The answer id whose plain events the sink takes as they came, and the parse
        # that finds them (see ``_on_data``).
        self._relay: str | None = None
        self._verbatim = parser.verbatim
        self._gen: AsyncGenerator[Chunk] | None = None

    def __aiter__(self) -> UpstreamStream:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        gen = self._gen
        if gen is None:  # (made on the first pull: a spliced stream never needs it)
            gen = self._gen = self._pull()
        return gen.__anext__()

    async def aclose(self) -> None:
        """Stop reading; the upstream call is cancelled if it was still going (also
        when nothing was read)."""
        if self._gen is not None:
            await self._gen.aclose()
        self._release(ok=False)  # (nothing, once the stream has released it itself)

    def _release(self, *, ok: bool) -> None:
        if self._released:
            return
        self._released = True
        self._sink = None  # nothing more is relayed
        if self._paused and ok:
            self._unpause()  # never back to the pool with reading paused
        if self._watch is not None:
            self._watch.cancel()
        self._client.finish(self._response, ok=ok)
        self._llm.replicas.release(self._replica)

    def _broken(self, exc: BaseException) -> MeshError:
        """The error that ends the stream for ``exc`` (the replica is told, unless the
        gateway itself is cutting streams short)."""
        if self._client.aborting:
            return ShuttingDown("the gateway is shutting down; the answer was cut short")
        err = self._llm.failure(exc, self._llm.timeouts, before_first=False)
        assert err is not None
        self._llm.replicas.failed(self._replica, err)
        return err

    async def _pull(self) -> AsyncGenerator[Chunk]:
        # One async-generator layer per chunk: read, parse, yield. Each wait for data
        # is bounded by the idle timeout (one lazy timer per loop, no per-read timer).
        response = self._response
        parser = self._parser
        ok = False
        try:
            head = self._head
            for chunk in head:
                yield chunk
            if parser.error is not None:
                raise parser.error
            if head:
                clock = asyncio.get_running_loop().time
                watch = self._watch = IdleWatch(response, self._llm.timeouts.idle)
                while not parser.done:
                    watch.reading = clock()
                    data = await response.readany()
                    watch.reading = None
                    if not data:
                        for chunk in parser.eof():
                            yield chunk
                        break
                    for chunk in parser.feed(data):
                        yield chunk
                    if parser.error is not None:
                        raise parser.error
            ok = True
        except (TimeoutError, h1.H1Error, UpstreamError) as exc:
            raise self._broken(exc) from exc
        finally:
            self._release(ok=ok)

    # -- push ------------------------------------------------------------------------------

    async def splice(self, sink: ChunkSink) -> None:
        """Push every chunk into ``sink`` from the connection's ``data_received``,
        returning when the stream ends (see :meth:`PushStream.splice`).

        While ``sink.full`` the upstream connection is not read (its sender then
        waits, and the idle timeout does not run); this coroutine waits on
        ``sink.drain()`` meanwhile, so the wake-ups are one per pause, not per chunk.
        """
        parser = self._parser
        try:
            for chunk in self._head:
                if not sink.emit(chunk):
                    raise ConnectionResetError("the caller went away")
            if parser.error is not None:
                raise self._broken(parser.error) from parser.error
            if self._head and not parser.done:
                self._relay = None if parser.pending else sink.verbatim
                await self._push(sink)
                return  # the connection is released once the body's end is read
        except BaseException:
            self._release(ok=False)
            raise
        sink.ending()  # (the whole answer was in the first read)
        self._release(ok=True)

    async def _push(self, sink: ChunkSink) -> None:
        loop = asyncio.get_running_loop()
        if sink.full:
            await sink.drain()
        self._wake = wake = loop.create_future()
        self._sink = sink
        self._clock = loop.time
        watch = self._watch = IdleWatch(self._response, self._llm.timeouts.idle)
        watch.reading = loop.time()
        self._response.pipe(self._on_data, self._on_end)  # may call both back at once
        while True:
            await wake
            if self._sink is None:  # over
                if self._error is not None:
                    raise self._error
                return
            # Paused: the caller is behind. Its transport's own signal ends the wait.
            await sink.drain()
            if self._sink is None:
                continue  # it ended while paused (its last bytes had arrived)
            self._wake = wake = loop.create_future()
            self._unpause()

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            if self._watch is not None:  # (made before any pause)
                self._watch.reading = self._clock()
            self._response.resume()

    def _on_data(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            return  # over: bytes after the final record are not relayed
        relay = self._relay
        if relay is not None and self._verbatim(data) == relay:
            # The usual read: one plain text delta that the caller is sent as it came,
            # so no chunk is made of it.
            if not sink.relay(data):
                self._abort(ConnectionResetError("the caller went away"))
                return
        else:
            parser = self._parser
            for chunk in parser.feed(data):
                if not sink.emit(chunk):
                    self._abort(ConnectionResetError("the caller went away"))
                    return
            if parser.error is not None:
                self._abort(self._broken(parser.error))
                return
            if parser.done:
                # The end: the caller may finish now; the connection is released (and
                # reused) once the body's own end has been read.
                self._finish(None)
                return
            self._relay = None if parser.pending else sink.verbatim
        watch = self._watch  # (made before the pipe that calls this)
        if not sink.full:
            if not self._paused and watch is not None:  # (a paused read never counts as idle)
                watch.reading = self._clock()
        elif not self._paused:
            self._paused = True
            if watch is not None:
                watch.reading = None  # a slow caller is not an idle upstream
            self._response.pause()
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    def _on_end(self, exc: BaseException | None) -> None:
        sink = self._sink
        if sink is None:
            self._release(ok=exc is None)
            return
        if exc is not None:
            self._abort(self._broken(exc))
            return
        try:
            chunks = self._parser.eof()
        except UpstreamError as err:
            self._abort(self._broken(err))
            return
        for chunk in chunks:
            sink.emit(chunk)
        self._finish(None)
        self._release(ok=True)

    def _abort(self, exc: BaseException) -> None:
        """End the push with ``exc`` and close the upstream connection."""
        self._finish(exc)
        self._release(ok=False)

    def _finish(self, exc: BaseException | None) -> None:
        """End the push (``exc``: why it failed); the splicing coroutine wakes."""
        sink = self._sink
        if sink is None:
            return
        sink.ending()  # (what it holds leaves with the answer's end)
        self._sink = None
        self._error = exc
        self._unpause()  # the body's last bytes still have to be read
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)


class LineParser:
    """A streamed body, fed as it arrives: ``feed(bytes)`` gives the chunks it
    completes, parsing each whole line with ``parse`` (:data:`~meshkit.protocol.wire.END`
    marks the end). It
    stops at the final record (``done``) or at a bad one (``error``, raised by the
    reader once the chunks before it are relayed)."""

    __slots__ = ("_name", "_parse", "_rest", "done", "error", "verbatim")

    def __init__(self, name: str, parse: LineParse) -> None:
        self._name = name
        self._parse = parse
        self._rest = b""
        self.done = False
        self.error: UpstreamError | None = None
        #: The parse's :meth:`~meshkit.protocol.codec.LineParse.verbatim`: it speaks
        #: for a read only while no line is :attr:`pending` (the read is then not fed).
        self.verbatim = parse.verbatim

    @property
    def pending(self) -> bool:
        """Part of a line is held until the rest of it arrives."""
        return bool(self._rest)

    def feed(self, data: bytes) -> list[Chunk]:
        if self._rest:
            data = self._rest + data
        else:
            # The usual read is one whole event: the dialect may know it by its bytes.
            chunk = self._parse.whole(data)
            if chunk is not None:
                return [chunk]
        lines = data.split(b"\n")
        self._rest = lines.pop()
        out: list[Chunk] = []
        parse = self._parse
        for line in lines:
            if not line:
                continue  # (a blank line ends an SSE event; neither dialect reads it)
            try:
                chunks = parse(line)
            except UpstreamError as err:
                self.error = err
                break
            for chunk in chunks:
                if chunk is END:
                    self.done = True
                    return out
                out.append(chunk)
        return out

    def eof(self) -> list[Chunk]:
        """The body ended: fine when its last line, even without a newline, was the
        final record (whose chunks are returned)."""
        out: list[Chunk] = []
        for chunk in self._parse(self._rest):
            if chunk is END:
                self.done = True
                return out
            out.append(chunk)
        raise UpstreamError(
            f"{self._name}: stream ended before it was complete", service=self._name
        )
