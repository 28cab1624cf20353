"""`RemoteLLM`: a chat model behind an OpenAI-compatible or Ollama-native HTTP API.

Replicas, retries, health probes and the fallback live here, around one attempt; the
relay of an open stream (:class:`UpstreamStream`, pulled or spliced) does nothing per
chunk beyond parsing it (one lazy idle timer per stream, one total timer per call).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import structlog

from .. import _json, h1
from ..client import HttpClient, IdleWatch, Timeouts
from ..errors import (
    BadRequest,
    CircuitOpen,
    MeshError,
    ShuttingDown,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from ..protocol.types import ChatRequest, Chunk, ChunkStream, Completion, Message, Usage
from ..protocol.wire import SSE_DONE
from ..resilience.deadline import DEADLINE_HEADER, header_value
from ..resilience.replicas import Replica, ReplicaSet, eviction
from ..resilience.retry import RetryPolicy, retryable
from .base import Context, MicroService, ServiceType, base_urls, bearer

log = structlog.get_logger(__name__)

APIS = ("openai", "ollama")
_CHAT_PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat"}
_MODEL_PATHS = {"openai": "/v1/models", "ollama": "/api/tags"}


class RemoteLLM(MicroService):
    """A remote chat model, possibly behind several replicas.

    Args:
        name: Node name.
        endpoint: Base URL, or several (replicas of one model), without the API path,
            e.g. ``http://ollama:11434``.
        api: ``"openai"`` for any OpenAI-compatible server (Ollama's ``/v1``, vLLM,
            llama.cpp, TGI) or ``"ollama"`` for Ollama's native ``/api/chat``.
        path: Override of the chat path (``/v1/chat/completions`` or ``/api/chat``).
        model: Model used when the request names none.
        timeouts: Outbound timeouts; ``timeouts.first_byte`` is the budget for the first
            token (the whole answer when not streaming), retries included.
        api_key: Credential sent upstream as ``Authorization: Bearer``; never logged.
        retry: Which failures are retried, how often and how patiently.
        balancer: ``"least_inflight"`` or ``"round_robin"`` over the replicas.
        health_interval: Seconds between health probes of every replica (0: none).
        fallback: A service (or, in a mesh, a service's name, resolved by :meth:`bind`)
            to ask instead when this one fails before streaming.
    """

    service_type = ServiceType.LLM

    def __init__(
        self,
        name: str,
        *,
        endpoint: str | Sequence[str],
        api: str = "openai",
        path: str | None = None,
        model: str | None = None,
        timeouts: Timeouts | None = None,
        api_key: str | None = None,
        params: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        balancer: str = "least_inflight",
        health_interval: float = 5.0,
        fallback: MicroService | str | None = None,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        super().__init__(name, params=params, timeout=None)
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, not {api!r}")
        self.endpoints = base_urls(endpoint)
        if not self.endpoints:
            raise ValueError("RemoteLLM needs at least one endpoint")
        self.api = api
        self.path = path or _CHAT_PATHS[api]
        self.model = model
        self.retry = retry or RetryPolicy()
        self.replicas = ReplicaSet(name, self.endpoints, balancer=balancer)
        self.health_interval = health_interval
        self.fallback = fallback if isinstance(fallback, MicroService) else None
        self._fallback_name = fallback if isinstance(fallback, str) else None
        self._headers = bearer(api_key)
        self._secrets = (api_key,) if api_key else ()
        self._prober: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def bind(self, services: Mapping[str, MicroService], base: object = None) -> None:
        """Resolve a fallback given by name against the mesh's services."""
        if self._fallback_name is None:
            return
        target = services.get(self._fallback_name)
        if target is None:
            raise ValueError(f"fallback: unknown service {self._fallback_name!r}")
        self.fallback = target

    async def open(self, client: HttpClient) -> None:
        """Start the periodic health probe of every replica (when an interval is set)."""
        if self.health_interval > 0 and self._prober is None:
            timeout = min(5.0, max(1.0, self.health_interval))
            headers = self._headers

            async def probe(replica: Replica) -> str | None:
                url = replica.url + _MODEL_PATHS[self.api]
                return await client.probe(url, within=timeout, headers=headers)

            self._prober = asyncio.create_task(
                self.replicas.probe_forever(probe, self.health_interval),
                name=f"meshkit.health.{self.name}",
            )

    async def close(self) -> None:
        """Stop the health probe."""
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            try:
                await prober
            except asyncio.CancelledError:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise

    # -- serving ---------------------------------------------------------------------------

    async def process(self, data: Any, ctx: Context) -> Completion | ChunkStream:
        """Send the chat request; stream chunks back or return the whole completion.

        Fails over to :attr:`fallback` (if any) when this service fails before
        streaming anything, within what is left of the request's deadline.
        """
        request = _as_chat(data).with_model(self.model)
        try:
            return await self._call(request, ctx)
        except UpstreamError as err:
            fallback = self.fallback
            if fallback is None or isinstance(err, UpstreamRejected | ShuttingDown):
                raise
            log.warning(
                "meshkit.llm.fallback",
                service=self.name,
                fallback=fallback.name,
                error=err.code,
                request_id=ctx.request_id,
            )
            own_model = getattr(fallback, "model", None)
            if own_model:
                request = attrs.evolve(request, model=own_model)
            result: Completion | ChunkStream = await fallback.process(request, ctx)
            return result

    async def _call(self, request: ChatRequest, ctx: Context) -> Completion | ChunkStream:
        """Try replicas until one answers, retrying safe failures within the budget."""
        body = self._body(request, stream=request.stream)
        now = time.monotonic()
        budget_end = now + self.timeouts.first_byte
        if ctx.deadline is not None:
            budget_end = min(budget_end, ctx.deadline)
        tried: list[Replica] = []
        last: UpstreamError | None = None
        attempt = 0
        while True:
            replica = self.replicas.pick(tried) or (self.replicas.pick() if tried else None)
            if replica is None:
                if last is not None:
                    raise last
                wait = self.replicas.retry_in()
                why = self.replicas.last_error()
                circuit = CircuitOpen(
                    f"{self.name}: every replica is out after failures"
                    + (f" (last: {why})" if why else "")
                    + f"; retry in {max(1, round(wait))} s",
                    service=self.name,
                )
                circuit.retry_after = wait
                raise circuit
            tried.append(replica)
            try:
                return await self._attempt(replica, body, request, ctx, budget_end)
            except UpstreamError as err:
                last = err
                if not retryable(err) or attempt >= self.retry.retries:
                    raise
                fresh = any(
                    r.available(self.replicas.clock()) and r not in tried for r in self.replicas
                )
                if (
                    err.retry_after is not None
                    and not fresh
                    and err.retry_after > self.retry.max_retry_after
                ):
                    raise
                wait = self.retry.backoff(attempt, None if fresh else err.retry_after)
                if time.monotonic() + wait >= budget_end:
                    raise
                log.info(
                    "meshkit.llm.retry",
                    service=self.name,
                    attempt=attempt + 1,
                    wait=round(wait, 3),
                    error=err.code,
                    request_id=ctx.request_id,
                )
                ctx.observer.retried(self.name)
                attempt += 1
                if wait:
                    await asyncio.sleep(wait)

    async def _attempt(
        self,
        replica: Replica,
        body: dict[str, Any],
        request: ChatRequest,
        ctx: Context,
        budget_end: float,
    ) -> Completion | ChunkStream:
        """One try on one replica, up to the first chunk (or the whole answer)."""
        remaining = budget_end - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout(f"{self.name}: no time left for the call", service=self.name)
        timeouts = self.timeouts
        if ctx.deadline is not None:
            timeouts = timeouts.within(ctx.deadline - time.monotonic())
        timeouts = Timeouts(
            min(timeouts.connect, remaining), remaining, timeouts.idle, timeouts.total
        )
        headers = dict(self._headers)
        headers["X-Request-ID"] = ctx.request_id
        if ctx.deadline is not None:
            headers[DEADLINE_HEADER] = header_value(ctx.deadline)
        client = ctx.client
        replicas = self.replicas
        replicas.acquire(replica)
        task = asyncio.current_task()
        url = replica.url + self.path
        probe = ctx.observer.attempt(self.name, replica.name, url, request.model, headers)
        head: list[Chunk] = []
        response: h1.Response | None = None
        if task is not None:
            replica.waiting.add(task)
        try:
            try:
                # One timer on the response bounds the head and the first chunk.
                response = await client.start(
                    "POST",
                    url,
                    service=self.name,
                    timeouts=timeouts,
                    body=body,
                    headers=headers,
                    secrets=self._secrets,
                    answer_by=asyncio.get_running_loop().time() + remaining,
                )
                if request.stream:
                    parser = self._parser()
                    # Servers often open with an empty role-only event: the first
                    # token is the first chunk that carries something.
                    while not parser.done:
                        data = await response.readany()
                        if not data:
                            head += parser.eof()
                            break
                        batch = parser.feed(data)
                        head += batch
                        if any(c.text or c.finish_reason or c.usage for c in batch):
                            break
                        if parser.error is not None:
                            raise parser.error
                else:
                    raw = await response.read()
                response.in_time()
            finally:
                if task is not None:
                    replica.waiting.discard(task)
        except BaseException as exc:
            if response is not None:
                client.finish(response, ok=False)
            replicas.release(replica)
            err = self._failure(exc, timeouts, before_first=True)
            if isinstance(exc, asyncio.CancelledError) and eviction(replica, task):
                err = UpstreamConnectError(
                    f"{self.name}: replica went down before answering", service=self.name
                )
            probe.failed(exc if err is None else err)
            if err is None:
                raise
            replicas.failed(replica, err)
            raise err from exc
        replicas.succeeded(replica)
        probe.answered()
        if request.stream:
            relay = UpstreamStream(self, response, parser, head, replica, client)
            await relay.prime()
            return relay
        client.finish(response, ok=True)
        replicas.release(replica)
        return probe.completed(self._completion(raw, request))

    def _failure(
        self, exc: BaseException, timeouts: Timeouts, *, before_first: bool
    ) -> MeshError | None:
        """The meshkit error for an exception from an upstream call (None: re-raise)."""
        if isinstance(exc, MeshError):
            return exc
        if isinstance(exc, TimeoutError):
            if before_first:
                return UpstreamTimeout(
                    f"{self.name}: no answer within {timeouts.first_byte:g} s",
                    service=self.name,
                )
            return UpstreamTimeout(
                f"{self.name}: stream stalled for {self.timeouts.idle:g} s", service=self.name
            )
        if before_first and isinstance(exc, h1.H1Error):
            # The replica went away before its first token: nothing reached the caller,
            # so another replica may answer instead.
            return UpstreamConnectError(
                f"{self.name}: connection lost before the first token ({type(exc).__name__})",
                service=self.name,
            )
        if isinstance(exc, h1.H1Error):
            what = "stream failed" if before_first else "stream broke"
            return UpstreamError(f"{self.name}: {what} ({type(exc).__name__})", service=self.name)
        return None

    def _completion(self, raw: bytes, request: ChatRequest) -> Completion:
        try:
            obj = _json.loads(raw)
            if self.api == "openai":
                choice = obj["choices"][0]
                text = choice["message"].get("content") or ""
                finish = choice.get("finish_reason") or "stop"
                usage = _openai_usage(obj.get("usage"))
            else:
                text = obj["message"].get("content") or ""
                finish = obj.get("done_reason") or "stop"
                usage = _ollama_usage(obj)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamError(
                f"{self.name}: malformed answer from upstream", service=self.name
            ) from exc
        return Completion(text, finish, usage, obj.get("model") or request.model)

    def _parser(self) -> _Parser:
        if self.api == "openai":
            return _Parser(self.name, self._sse_line)
        return _Parser(self.name, self._ndjson_line)

    def _sse_line(self, line: bytes) -> list[Chunk]:
        """One SSE line: the chunk of a ``data:`` field, nothing for anything else."""
        if line[:5] != b"data:":
            return []
        chunk = self._sse_event(line[5:].strip())
        return [] if chunk is None else [chunk]

    def _sse_event(self, payload: bytes) -> Chunk | None:
        """One ``data:`` payload as a chunk (None: nothing to relay; ``_DONE``: the end)."""
        if not payload:
            return None
        if payload == SSE_DONE:
            return _DONE
        obj = self._object(payload, "event")
        if "error" in obj:
            err = obj["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise UpstreamError(f"{self.name}: {message}", service=self.name)
        choices = obj.get("choices")
        usage = obj.get("usage")
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            return Chunk(
                delta.get("content") or "",
                choice.get("finish_reason"),
                _openai_usage(usage) if usage else None,
                obj.get("model"),
                raw=payload,
            )
        if usage:
            return Chunk("", None, _openai_usage(usage), obj.get("model"), raw=payload)
        return None

    def _object(self, raw: bytes, what: str) -> dict[str, Any]:
        """A streamed JSON object; anything else is a malformed ``what`` in the stream."""
        try:
            obj = _json.loads(raw)
        except ValueError as exc:
            raise UpstreamError(
                f"{self.name}: malformed {what} in stream", service=self.name
            ) from exc
        if not isinstance(obj, dict):
            raise UpstreamError(f"{self.name}: malformed {what} in stream", service=self.name)
        return obj

    def _ndjson_line(self, line: bytes) -> list[Chunk]:
        """One Ollama NDJSON record as chunks (ending with ``_DONE`` on the last one)."""
        line = line.strip()
        if not line:
            return []
        obj = self._object(line, "line")
        if "error" in obj:
            raise UpstreamError(f"{self.name}: {obj['error']}", service=self.name)
        message = obj.get("message") or {}
        text = message.get("content") or obj.get("response") or ""
        model = obj.get("model")
        if not obj.get("done"):
            return [Chunk(text, None, None, model)]
        last = Chunk("", obj.get("done_reason") or "stop", _ollama_usage(obj), model)
        return [Chunk(text, None, None, model), last, _DONE] if text else [last, _DONE]

    # -- helpers -------------------------------------------------------------------------

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if self.api == "openai":
            body: dict[str, Any] = {"model": request.model, "messages": messages}
            for key in ("temperature", "top_p", "max_tokens", "seed"):
                value = getattr(request, key)
                if value is not None:
                    body[key] = value
            if request.stop:
                body["stop"] = list(request.stop)
            body.update(request.extra)
            body["stream"] = stream
            if stream:
                body["stream_options"] = {"include_usage": True}
            return body
        options: dict[str, Any] = dict(request.extra.get("options", {}))
        for key, name in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("max_tokens", "num_predict"),
            ("seed", "seed"),
        ):
            value = getattr(request, key)
            if value is not None:
                options[name] = value
        if request.stop:
            options["stop"] = list(request.stop)
        return {"model": request.model, "messages": messages, "stream": stream, "options": options}

    async def ready(self, client: HttpClient) -> bool:
        """True when some replica answers its model listing."""
        for base in self._by_health():
            try:
                await self._list_models(client, base, wait=2.0)
            except MeshError:
                continue
            return True
        return False

    def _by_health(self) -> list[str]:
        """Replica URLs, those that may take traffic now first."""
        now = self.replicas.clock()
        ordered = sorted(self.replicas, key=lambda r: not r.available(now))
        return [r.url for r in ordered]

    async def models(self, client: HttpClient) -> Sequence[str]:
        """Model names the upstream lists (the first replica that answers)."""
        errors: list[MeshError] = []
        for base in self._by_health():
            try:
                return await self._list_models(client, base, wait=self.timeouts.first_byte)
            except MeshError as exc:
                errors.append(exc)
        raise errors[-1]

    async def _list_models(self, client: HttpClient, base: str, *, wait: float) -> list[str]:
        timeouts = Timeouts(min(self.timeouts.connect, wait), wait, wait)
        url = base + _MODEL_PATHS[self.api]
        raw = await client.fetch(
            "GET",
            url,
            service=self.name,
            timeouts=timeouts,
            what="model list",
            headers=self._headers,
            secrets=self._secrets,
        )
        try:
            obj = _json.loads(raw)
            if self.api == "openai":
                return [str(m["id"]) for m in obj["data"]]
            return [str(m.get("name") or m["model"]) for m in obj["models"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"{self.name}: malformed model list", service=self.name) from exc


class UpstreamStream:
    """An upstream's open stream of chunks, from its first one on.

    Pull it chunk by chunk (``async for``), or have it pushed: :meth:`splice` hands each
    chunk to a function straight from the connection's ``data_received``, with no task
    wake-up per chunk (the gateway's fast path for a pipeline that is one LLM). Either
    way the connection is released when the stream ends or is closed (:meth:`aclose`),
    also when it was never read.
    """

    #: Every failure it raises is a MeshError naming this service already, so a graph
    #: need not wrap it to name the node (one generator layer per chunk saved).
    mesh_errors_only = True

    __slots__ = (
        "_client",
        "_emit",
        "_future",
        "_gen",
        "_head",
        "_llm",
        "_parser",
        "_released",
        "_replica",
        "_response",
        "_spliced",
        "_watch",
    )

    def __init__(
        self,
        llm: RemoteLLM,
        response: h1.Response,
        parser: _Parser,
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
        self._watch = IdleWatch(response, llm.timeouts.idle)
        self._released = False
        self._spliced = False
        self._emit: Callable[[Chunk], bool] | None = None
        self._future: asyncio.Future[None] | None = None
        self._gen = self._pull()

    async def prime(self) -> None:
        """Start the pull side, so that closing it releases the connection even when
        nothing was read."""
        await anext(self._gen)

    def __aiter__(self) -> UpstreamStream:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        return self._gen.__anext__()  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Stop reading; the upstream call is cancelled if it was still going."""
        await self._gen.aclose()
        if self._spliced:
            self._release(ok=False)

    def _release(self, *, ok: bool) -> None:
        if self._released:
            return
        self._released = True
        self._watch.cancel()
        self._client.finish(self._response, ok=ok)
        self._llm.replicas.release(self._replica)

    def _broken(self, exc: BaseException) -> MeshError:
        """The error that ends the stream for ``exc`` (the replica is told, unless the
        gateway itself is cutting streams short)."""
        if self._client.aborting:
            return ShuttingDown("the gateway is shutting down; the answer was cut short")
        err = self._llm._failure(exc, self._llm.timeouts, before_first=False)
        assert err is not None
        self._llm.replicas.failed(self._replica, err)
        return err

    async def _pull(self) -> AsyncGenerator[Chunk | None]:
        # One async-generator layer per chunk: read, parse, yield. Each wait for data
        # is bounded by the idle timeout (one lazy timer per stream, no per-read timer).
        watch = self._watch
        response = self._response
        parser = self._parser
        ok = False
        try:
            # Primed: from here on, closing the generator (even before the first chunk
            # is read) runs the clean-up below and releases the connection.
            yield None
            head = self._head
            for chunk in head:
                yield chunk
            if parser.error is not None:
                raise parser.error
            if head:
                clock = asyncio.get_running_loop().time
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
            if not self._spliced:
                self._release(ok=ok)

    # -- push ------------------------------------------------------------------------------

    async def splice(self, emit: Callable[[Chunk], bool]) -> None:
        """Push every chunk to ``emit`` as it arrives, returning when the stream ends.

        ``emit`` returns False when its caller is gone: the upstream call is then
        cancelled and ``ConnectionResetError`` raised. A broken stream raises its
        meshkit error, as iterating would. Call it instead of iterating, never after.
        """
        self._spliced = True
        await self._gen.aclose()  # the pull side is never used now
        parser = self._parser
        try:
            for chunk in self._head:
                if not emit(chunk):
                    raise ConnectionResetError("the caller went away")
            if parser.error is not None:
                raise parser.error
        except UpstreamError as exc:
            self._release(ok=False)
            raise self._broken(exc) from exc
        except BaseException:
            self._release(ok=False)
            raise
        if not self._head or parser.done:
            self._release(ok=True)
            return
        loop = asyncio.get_running_loop()
        self._future = loop.create_future()
        self._emit = emit
        self._watch.reading = loop.time()
        self._response.pipe(self._on_data, self._on_end)
        try:
            await self._future
        except BaseException:
            self._release(ok=False)
            raise

    def pause(self) -> None:
        """Stop reading from the upstream until :meth:`resume` (the caller is slow);
        the idle timeout does not run meanwhile."""
        self._watch.reading = None
        self._response.pause()

    def resume(self) -> None:
        """Read from the upstream again."""
        self._watch.reading = asyncio.get_running_loop().time()
        self._response.resume()

    def _on_data(self, data: bytes) -> None:
        future = self._future
        emit = self._emit
        if future is None or emit is None or future.done():
            return
        parser = self._parser
        self._watch.reading = future.get_loop().time()
        for chunk in parser.feed(data):
            if not emit(chunk):
                self._abort(ConnectionResetError("the caller went away"))
                return
        if parser.error is not None:
            self._abort(self._broken(parser.error))
        elif parser.done:
            # The end: the caller may finish now; the connection is released (and
            # reused) once the body's own end has been read.
            self._settle(None)

    def _on_end(self, exc: BaseException | None) -> None:
        future = self._future
        if future is None or future.done():
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
        emit = self._emit
        if emit is not None:
            for chunk in chunks:
                emit(chunk)
        self._settle(None)
        self._release(ok=True)

    def _abort(self, exc: BaseException) -> None:
        """End the push with ``exc`` and close the upstream connection."""
        self._settle(exc)
        self._release(ok=False)

    def _settle(self, exc: BaseException | None) -> None:
        future = self._future
        if future is None or future.done():
            return
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


#: Marks the end of an upstream stream inside the parsers.
_DONE = Chunk("", "__done__")


class _Parser:
    """A streamed body, fed as it arrives: ``feed(bytes)`` gives the chunks it
    completes, parsing each whole line with ``parse`` (``_DONE`` marks the end). It
    stops at the final record (``done``) or at a bad one (``error``, raised by the
    reader once the chunks before it are relayed)."""

    __slots__ = ("_name", "_parse", "_rest", "done", "error")

    def __init__(self, name: str, parse: Callable[[bytes], list[Chunk]]) -> None:
        self._name = name
        self._parse = parse
        self._rest = b""
        self.done = False
        self.error: UpstreamError | None = None

    def feed(self, data: bytes) -> list[Chunk]:
        if self._rest:
            data = self._rest + data
        lines = data.split(b"\n")
        self._rest = lines.pop()
        out: list[Chunk] = []
        parse = self._parse
        for line in lines:
            try:
                chunks = parse(line)
            except UpstreamError as err:
                self.error = err
                break
            for chunk in chunks:
                if chunk is _DONE:
                    self.done = True
                    return out
                out.append(chunk)
        return out

    def eof(self) -> list[Chunk]:
        """The body ended: fine when its last line, even without a newline, was the
        final record (whose chunks are returned)."""
        out: list[Chunk] = []
        for chunk in self._parse(self._rest):
            if chunk is _DONE:
                self.done = True
                return out
            out.append(chunk)
        raise UpstreamError(
            f"{self._name}: stream ended before it was complete", service=self._name
        )


def _as_chat(data: Any) -> ChatRequest:
    if isinstance(data, ChatRequest):
        return data
    if isinstance(data, str):
        return ChatRequest(messages=(Message("user", data),))
    raise BadRequest(f"an LLM node takes a chat request, not {type(data).__name__}")


def _openai_usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _ollama_usage(obj: Mapping[str, Any]) -> Usage:
    return Usage(int(obj.get("prompt_eval_count") or 0), int(obj.get("eval_count") or 0))
