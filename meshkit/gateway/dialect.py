"""What every dialect shares: running a chat through a pipeline and writing the answer.

A dialect supplies a parser (body → :class:`ChatRequest`) and an encoder (chunks →
bytes); :func:`serve_chat` does the rest: status before the first byte, streaming with
an awaited write per chunk, a final error event when the stream breaks, and closing the
pipeline's stream (which cancels the upstream call) however the response ends.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

from .. import _json
from ..client.deadline import deadline_from
from ..errors import InternalError, MeshError, UpstreamError
from ..graph.orchestrator import ServiceOrchestrator
from ..nodes.base import Context
from ..observability.observer import ERROR_CODE, observe
from ..protocol.streams import aclose, aggregate, single
from ..protocol.types import ChatRequest, Chunk, Completion
from ..protocol.wire import new_id

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Where a request keeps its id once chosen.
REQUEST_ID = web.RequestKey("meshkit.request_id", str)


class Encoder(Protocol):
    """Turns one answer into a dialect's bytes."""

    content_type: str

    def chunk(self, chunk: Chunk) -> bytes | None: ...

    def end(self) -> bytes: ...

    def error(self, err: MeshError) -> bytes: ...

    def completion(self, completion: Completion) -> dict[str, Any]: ...


class Dialect(Protocol):
    """How one API family reads requests and renders answers and errors."""

    name: str

    def error_response(self, err: MeshError) -> web.Response: ...


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-ID`` when sane, else a fresh one (once per request)."""
    if REQUEST_ID in request:
        return request[REQUEST_ID]
    given = request.headers.get("X-Request-ID", "")
    if not (0 < len(given) <= 128 and given.isprintable()):
        given = new_id()
    request[REQUEST_ID] = given
    return given


def json_response(obj: Any, *, status: int = 200, rid: str | None = None) -> web.Response:
    """A JSON response serialised with meshkit's fast encoder."""
    headers = {"X-Request-ID": rid} if rid else None
    return web.Response(
        body=_json.dumps(obj), status=status, content_type="application/json", headers=headers
    )


def error_json(body: Any, err: MeshError) -> web.Response:
    """An error body as a response, with the headers its error asks for
    (``Retry-After`` when it says when to come back, ``WWW-Authenticate`` on 401)."""
    response = json_response(body, status=err.status)
    response[ERROR_CODE] = err.code  # for the access line
    if err.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    if err.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="meshkit"'
    return response


async def serve_chat(
    request: web.Request,
    orchestrator: ServiceOrchestrator,
    chat: ChatRequest,
    make_encoder: Callable[[ChatRequest], Encoder],
    rid: str,
) -> web.StreamResponse:
    """Run ``chat`` through ``orchestrator`` and answer in the encoder's dialect."""
    observer = observe(request, chat.model, chat.stream)
    ctx = Context(
        client=orchestrator.client,
        request_id=rid,
        headers=request.headers,
        deadline=deadline_from(request.headers),
        observer=observer,
    )
    encoder = make_encoder(chat)  # before the run, so durations count from the request
    result = await orchestrator.run(chat, ctx)
    if not chat.stream:
        completion = await collect(result)
        observer.completed(completion)
        return json_response(encoder.completion(completion), rid=rid)
    stream = as_stream(result)
    response = web.StreamResponse(
        headers={
            "Content-Type": encoder.content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Request-ID": rid,
        }
    )
    await response.prepare(request)
    sink = None
    try:
        try:
            sink = Sink.open(request, response, encoder, stream)
            splice = getattr(stream, "splice", None)
            if sink is None:
                async for chunk in stream:
                    data = encoder.chunk(chunk)
                    observer.see(chunk, data)
                    if data:
                        await response.write(data)
            elif splice is not None:
                await splice(sink.emit)
            else:
                async for chunk in stream:
                    if not sink.write(chunk):
                        raise ConnectionResetError("the caller went away")
                    if sink.full:
                        await sink.drain()
        except MeshError as err:
            observer.failed(err)
            log.warning("meshkit.stream.failed", request_id=rid, error=err.message)
            await response.write(encoder.error(err))
        except (ConnectionResetError, BrokenPipeError):
            raise
        except Exception:
            log.exception("meshkit.stream.crashed", request_id=rid)
            crash = InternalError("internal error in the pipeline")
            observer.failed(crash)
            await response.write(encoder.error(crash))
        else:
            await response.write(encoder.end())
        await response.write_eof()
    except (ConnectionResetError, BrokenPipeError):
        observer.gone()
        log.info("meshkit.client.gone", request_id=rid)
    finally:
        observer.streamed(sink)
        await aclose(stream)
    return response


#: App setting: seconds a stream waits for a caller that reads nothing before it ends
#: the stream and closes the caller's connection (0: wait for ever).
SEND_TIMEOUT = web.AppKey("meshkit.send_timeout", float)


class Sink:
    """Writes a stream's encoded chunks straight to the caller's connection.

    Each chunk is encoded and written with one ``transport.write``, chunk-framed as
    aiohttp's writer would, with no await per chunk. A stream that can push its chunks
    (``splice``) calls :meth:`emit` from the upstream connection's own callback, and is
    paused while the caller's buffer is full; a pulled stream is written with
    :meth:`write`, and its reader waits for :meth:`drain` when :attr:`full`.

    Both waits end when the transport says the caller has read its buffer down (the
    protocol's resume-writing signal, through aiohttp's ``drain``), or after
    ``send_timeout`` seconds without that: the caller's connection is then aborted, and
    the stream ends as for a caller that left (the upstream call is cancelled).
    """

    __slots__ = (
        "_chunk",
        "_chunked",
        "_encode",
        "_loop",
        "_paused",
        "_protocol",
        "_resumer",
        "_send_timeout",
        "_stream",
        "_transport",
        "_writer",
        "ends",
        "first",
        "sent",
    )

    #: Caller-side buffer sizes (bytes) at which the upstream is paused and resumed
    #: (also set as the transport's own limits, so its drain signal means the same).
    HIGH_WATER = 1 << 16
    LOW_WATER = 1 << 14
    #: Seconds between looks at a full buffer, for a transport without flow control.
    POLL = 0.005
    #: ``send_timeout`` when the app sets none.
    SEND_TIMEOUT = 60.0

    def __init__(
        self, transport: asyncio.Transport, chunked: bool, encoder: Encoder, stream: Any
    ) -> None:
        self._transport = transport
        self._chunked = chunked
        self._chunk = encoder.chunk
        self._encode = self._first_encode  # swapped for the encoder's own after one byte
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._paused = False
        self._writer: Any = None
        self._protocol: Any = None
        self._send_timeout = self.SEND_TIMEOUT
        self._resumer: asyncio.Task[None] | None = None
        # What the request's record reads once at the end (see observability.probe.Tally).
        self.first: float | None = None
        self.sent = 0
        self.ends: list[Chunk] = []

    @classmethod
    def open(
        cls, request: web.Request, response: web.StreamResponse, encoder: Encoder, stream: Any
    ) -> Sink | None:
        """A sink for ``response``, or None when it must go through aiohttp's writer
        (compressed, or the caller already gone)."""
        transport = request.transport
        if transport is None or transport.is_closing() or response.compression:
            return None
        chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        sink = cls(transport, chunked, encoder, stream)
        transport.set_write_buffer_limits(high=cls.HIGH_WATER, low=cls.LOW_WATER)
        sink._writer = request.writer
        sink._protocol = request.protocol
        sink._send_timeout = request.app.get(SEND_TIMEOUT, cls.SEND_TIMEOUT)
        return sink

    def write(self, chunk: Chunk) -> bool:
        """Write one chunk; False when the caller has gone away."""
        if chunk.finish_reason is not None or chunk.usage is not None:
            self.ends.append(chunk)  # the few chunks the answer's counts come from
        data = self._encode(chunk)
        if not data:
            return True
        transport = self._transport
        if transport.is_closing():
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        self.sent += 1
        return True

    def _first_encode(self, chunk: Chunk) -> bytes | None:
        """Encode until the first byte, noting when it goes out (time to first token)."""
        data = self._chunk(chunk)
        if data:
            self.first = time.perf_counter()
            self._encode = self._chunk
        return data

    @property
    def full(self) -> bool:
        """Whether the caller's buffer is past the high-water mark."""
        return self._transport.get_write_buffer_size() > self.HIGH_WATER

    async def drain(self) -> None:
        """Wait until the caller has read its buffer down (or has gone).

        Raises:
            ConnectionResetError: The caller read nothing for ``send_timeout`` seconds;
                its connection has been aborted.
        """
        try:
            async with asyncio.timeout(self._send_timeout or None):
                while not self._drained_enough():
                    if self._protocol is not None and self._protocol.writing_paused:
                        await self._writer.drain()  # until the transport resumes writing
                    else:
                        await asyncio.sleep(self.POLL)
        except TimeoutError:
            size = self._transport.get_write_buffer_size()
            log.warning(
                "meshkit.stream.stalled", send_timeout=self._send_timeout, unsent_bytes=size
            )
            self._transport.abort()
            raise ConnectionResetError(
                f"the caller read nothing for {self._send_timeout:g} s"
            ) from None

    def emit(self, chunk: Chunk) -> bool:
        """:meth:`write` for a pushed stream, pausing it while the caller's buffer is
        full; False when the caller has gone away."""
        if not self.write(chunk):
            return False
        if not self._paused and self.full:
            self._paused = True
            self._stream.pause()
            self._resumer = self._loop.create_task(self._resume_when_drained())
        return True

    def _drained_enough(self) -> bool:
        """The caller read its buffer down to the low-water mark, or has gone."""
        transport = self._transport
        return transport.is_closing() or transport.get_write_buffer_size() <= self.LOW_WATER

    async def _resume_when_drained(self) -> None:
        try:
            await self.drain()
        except ConnectionError:
            pass  # gone, or cut off: the next emit finds the transport closed
        finally:
            self._paused = False
            self._resumer = None
            self._stream.resume()


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


def now_ns() -> int:
    """Monotonic nanoseconds, for the duration fields Ollama clients read."""
    return time.perf_counter_ns()
