"""The writer of a streamed answer: one :class:`Sink` per response, and nothing else writes.

:func:`stream_answer` opens the response, then has the pipeline's stream reach the
caller through its sink one of two ways, with the same bytes either way: *spliced*
when the stream is a :class:`~meshkit.protocol.push.PushStream` (a pipeline that is one
remote LLM: each chunk is encoded and written from the upstream connection's own
callback; an upstream's plain event that the caller is sent as it came is written
without a chunk being made of it, :meth:`Sink.relay`), else *pulled* chunk by chunk.
The gateway setting ``splice: false`` pulls every stream. Which way each answer went
is counted in ``meshkit_streams_total``.

Every byte of the response goes through the sink and the server's
:class:`~meshkit.gateway.exchange.Wire` (aiohttp's stream writer, or the lean intake's
connection): the head (sent by the end of the loop pass the sink starts in, so no
server default decides when it leaves: with the events of that pass on the lean
intake, at once through aiohttp), the events (chunk-framed, no await; the events of
one loop pass, which is one upstream read on the fast path, leave together in one
``transport.write``), and the last event with
the end of the body (after any event still held). Backpressure waits on the transport's
own resume-writing signal, bounded by ``send_timeout``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from ..errors import InternalError, MeshError
from ..nodes.probe import RequestObserver
from ..protocol.push import PushStream
from ..protocol.streams import as_stream
from ..protocol.types import Chunk
from .exchange import Exchange, Streaming, Wire

__all__ = ["Sink", "Streaming", "stream_answer"]

log = structlog.get_logger(__name__)

R = TypeVar("R")


async def stream_answer(
    exchange: Exchange[R],
    call: Awaitable[Any],
    encode: Callable[[Chunk], bytes | None],
    verbatim: Callable[[], str | None],
    end: Callable[[], bytes],
    error: Callable[[MeshError], bytes],
    headers: dict[str, str],
    observer: RequestObserver,
    rid: str,
) -> R:
    """Write the answer of the pipeline's ``call`` as a streamed response (``encode``
    per chunk, ``end`` or ``error`` last), closing its stream however the response
    ends. ``verbatim`` is the encoder's: which upstream answer's plain events it
    relays as they came.

    ``call`` is awaited here, first (its failure is raised before any byte, for the
    caller to answer), so the caller needs no coroutine of its own around it.
    """
    stream = as_stream(await call)
    settings = exchange.streaming
    sink: Sink | None = None
    try:
        sink = Sink.over(
            await exchange.open_stream(headers), encode, settings.send_timeout, verbatim
        )
        try:
            if settings.splice and isinstance(stream, PushStream):
                sink.spliced = True
                await stream.splice(sink)
            else:
                async for chunk in stream:
                    if not sink.emit(chunk):
                        raise ConnectionResetError("the caller went away")
                    if sink.full:
                        await sink.drain()
        except MeshError as err:
            observer.failed(err)
            log.warning("meshkit.stream.failed", request_id=rid, error=err.message)
            last = error(err)
        except (ConnectionResetError, BrokenPipeError):
            raise
        except Exception:
            log.exception("meshkit.stream.crashed", request_id=rid)
            crash = InternalError("internal error in the pipeline")
            observer.failed(crash)
            last = error(crash)
        else:
            last = end()
        await sink.close(last)
    except (ConnectionResetError, BrokenPipeError):
        observer.gone()
        log.info("meshkit.client.gone", request_id=rid)
    finally:
        observer.streamed(sink)
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    return exchange.streamed()


class Sink:
    """The only writer of one streamed response (a :class:`~meshkit.protocol.push.ChunkSink`).

    :meth:`emit` encodes a chunk, framed as the response's transfer encoding says,
    with no await: a spliced stream calls it from the upstream connection's callback.
    The events emitted in one loop pass leave together with one ``transport.write``
    at the end of the pass (one upstream read often carries several, each otherwise a
    system call of its own); every other write, the last event's or a wait's, first
    writes what is held, so nothing is reordered or held past the pass. A producer
    stops once :attr:`full` (held bytes count) and waits for :meth:`drain`, which ends
    on the transport's signal that the caller read its buffer down (asyncio's
    ``resume_writing``, as aiohttp's ``drain`` awaits it),
    or after ``send_timeout`` seconds without it: the caller's connection is then
    aborted and the stream ends as for a caller that left.

    Attributes:
        first: ``time.perf_counter()`` when the first byte of an event was emitted
            (it is written by the end of that loop pass).
        sent: Events written.
        ends: Chunks that carried a finish reason or usage.
        spliced: The stream was spliced into the sink (not pulled).
    """

    __slots__ = (
        "_chunk",
        "_chunked",
        "_encode",
        "_held",
        "_held_size",
        "_pending",
        "_send_timeout",
        "_transport",
        "_verbatim",
        "_wire",
        "_writes",
        "ends",
        "first",
        "sent",
        "spliced",
    )

    #: Caller-side buffer sizes (bytes) past which the sink is full, and down to which
    #: the caller must read before a wait ends (set as the transport's own limits, so
    #: its pause and resume signals mean exactly that).
    HIGH_WATER = 1 << 16
    LOW_WATER = 1 << 14

    def __init__(
        self,
        wire: Wire,
        encode: Callable[[Chunk], bytes | None],
        send_timeout: float,
        verbatim: Callable[[], str | None] | None = None,
    ) -> None:
        self._wire = wire
        self._transport = wire.transport
        self._writes = _Writes.of(asyncio.get_running_loop())
        self._pending = self._writes.sinks
        self._held: list[bytes] = []  # framed events not written yet (this loop pass's)
        self._held_size = 0
        self._chunked = wire.chunked
        self._chunk = encode
        self._encode: Callable[[Chunk], bytes | None] = self._first_encode  # then ``encode``
        self._send_timeout = send_timeout
        self._verbatim = verbatim
        self.first: float | None = None
        self.sent = 0
        self.ends: list[Chunk] = []
        self.spliced = False

    @classmethod
    def over(
        cls,
        wire: Wire,
        encode: Callable[[Chunk], bytes | None],
        send_timeout: float,
        verbatim: Callable[[], str | None] | None = None,
    ) -> Sink:
        """The sink of a response whose head ``wire`` has ready: it sends the head (now,
        or with the events of this loop pass when the wire lets the sink write it).
        ``verbatim`` (the encoder's) says which upstream answer's plain events are
        relayed as they came (:meth:`relay`).

        Raises:
            ConnectionResetError: The caller is gone already.
        """
        if wire.transport.is_closing():
            raise ConnectionResetError("the caller went away")
        sink: Sink = (_Compressed if wire.compressed else cls)(wire, encode, send_timeout, verbatim)
        sink._start()
        return sink

    def _start(self) -> None:
        self._transport.set_write_buffer_limits(high=self.HIGH_WATER, low=self.LOW_WATER)
        head = self._wire.take_head()
        if head is None:
            # The head leaves now, before any event is written past the server's
            # writer (aiohttp may hold it back to send it with the first body bytes).
            self._wire.send_head()
        else:
            # The head leaves by the end of this loop pass, with the events emitted
            # in it (the first one, on a spliced stream): one write, not two.
            self._held.append(head)
            self._writes.add(self)

    def _first_encode(self, chunk: Chunk) -> bytes | None:
        """Encode until the first byte, noting when it goes out (time to first token)."""
        data = self._chunk(chunk)
        if data:
            self.first = time.perf_counter()
            self._encode = self._chunk
        return data

    def emit(self, chunk: Chunk) -> bool:
        """Take one chunk now, written by the end of this loop pass; False when the
        caller has gone away."""
        if chunk.finish_reason is not None or chunk.usage is not None:
            self.ends.append(chunk)  # the few chunks the answer's counts come from
        data = self._encode(chunk)
        if not data:
            return True
        if self._transport.is_closing():
            return False
        held = self._held
        if not held:
            # The first event of this pass: the others that arrive in the same pass
            # (one upstream read often carries several) leave with it, in one write.
            self._writes.add(self)
        held.append(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        self._held_size += len(data)
        self.sent += 1
        return True

    @property
    def verbatim(self) -> str | None:
        """The upstream answer id whose plain text delta events :meth:`relay` takes as
        they came (once the first event is out), or None."""
        if self.first is None or self._verbatim is None:
            return None
        return self._verbatim()

    def relay(self, event: bytes) -> bool:
        """Take an upstream event that the encoder writes as it came (see
        :attr:`verbatim`), as :meth:`emit` takes its chunk; False when the caller has
        gone away."""
        if self._transport.is_closing():
            return False
        held = self._held
        if not held:  # (``_Writes.add``, inline: once per read on the fast path)
            pending = self._pending
            if not pending:
                self._writes.soon()
            pending.append(self)
        held.append(b"%x\r\n%b\r\n" % (len(event), event) if self._chunked else event)
        self._held_size += len(event)
        self.sent += 1
        return True

    def _flush(self) -> None:
        """Write the events held since the last write, with one ``transport.write``."""
        held = self._held
        if not held:
            return
        self._held = []
        self._held_size = 0
        if not self._transport.is_closing():  # (a caller that left reads nothing)
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    @property
    def full(self) -> bool:
        """Whether the caller's buffer is past the high-water mark."""
        return self._transport.get_write_buffer_size() + self._held_size > self.HIGH_WATER

    async def drain(self) -> None:
        """Wait until the caller has read its buffer down to the low-water mark.

        The wait is the wire's ``drain``, which returns when the transport resumes
        writing; a transport without flow control is never waited on.

        Raises:
            ConnectionResetError: The caller left, or read nothing for
                ``send_timeout`` seconds (its connection is then aborted).
        """
        self._flush()
        try:
            async with asyncio.timeout(self._send_timeout or None):
                await self._wire.drain()
        except TimeoutError:
            size = self._transport.get_write_buffer_size()
            log.warning(
                "meshkit.stream.stalled", send_timeout=self._send_timeout, unsent_bytes=size
            )
            self._transport.abort()
            raise ConnectionResetError(
                f"the caller read nothing for {self._send_timeout:g} s"
            ) from None
        except ConnectionError as exc:
            raise ConnectionResetError("the caller went away") from exc

    def ending(self) -> None:
        """The stream's last chunk is emitted: the events held leave with the end of the
        body (:meth:`close`, next in this loop pass), in the same write."""
        self._writes.drop(self)

    def close(self, last: bytes) -> Awaitable[None]:
        """Write the last event and end the body, after every event held and in the
        same write where the wire lets it (the wire's own ``end``, to await)."""
        held = self._held
        if not held:
            return self._wire.end(last)
        self._held = []
        self._held_size = 0
        return self._wire.end(last, b"".join(held))


class _Compressed(Sink):
    """A sink for a compressed response: events go through the server's compressor, so
    each is held until :meth:`drain` (it is :attr:`full` meanwhile)."""

    __slots__ = ()

    def _start(self) -> None:
        pass  # the head leaves with the first compressed bytes

    def emit(self, chunk: Chunk) -> bool:
        if chunk.finish_reason is not None or chunk.usage is not None:
            self.ends.append(chunk)
        data = self._encode(chunk)
        if data:
            if self._transport.is_closing():
                return False
            self._held.append(data)
            self.sent += 1
        return True

    @property
    def verbatim(self) -> str | None:
        return None  # (every event goes through the compressor as :meth:`emit` takes it)

    @property
    def full(self) -> bool:
        return bool(self._held)

    async def drain(self) -> None:
        held, self._held = self._held, []
        if held:
            await self._wire.write(b"".join(held))

    async def close(self, last: bytes) -> None:
        await self.drain()
        await self._wire.end(last)


class _Writes:
    """The sinks of one event loop holding events this loop pass: one callback at the
    end of the pass writes them all (rather than a callback scheduled per sink, per
    pass: on a busy gateway one pass relays many streams' reads)."""

    __slots__ = ("__weakref__", "_loop", "sinks")

    _of: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writes] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: The sinks to write at the end of this pass (one list for the loop's life).
        self.sinks: list[Sink] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Writes:
        """The loop's own (one per loop)."""
        writes = cls._of.get(loop)
        if writes is None:
            writes = cls._of[loop] = cls(loop)
        return writes

    def add(self, sink: Sink) -> None:
        """Have ``sink``'s held events written at the end of this pass."""
        sinks = self.sinks
        if not sinks:
            self.soon()
        sinks.append(sink)

    def soon(self) -> None:
        """Write at the end of this pass (the first sink of the pass is being added)."""
        self._loop.call_soon(self._write)

    def drop(self, sink: Sink) -> None:
        """Leave ``sink``'s held events to it (it writes them itself)."""
        if sink in self.sinks:
            self.sinks.remove(sink)

    def _write(self) -> None:
        sinks = self.sinks.copy()
        self.sinks.clear()
        for sink in sinks:
            try:
                sink._flush()
            except Exception:  # (one caller's transport never stops another's write)
                log.exception("meshkit.stream.write_failed")
