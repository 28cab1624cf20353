"""`RemoteLLM`: a chat model behind an OpenAI-compatible or Ollama-native HTTP API.

Replicas, retries and the fallback live here, around one attempt. What goes over the
wire is the dialect's business (:mod:`meshkit.protocol.openai`,
:mod:`meshkit.protocol.ollama`); the relay of an open stream
(:class:`~meshkit.nodes.upstream.UpstreamStream`, pulled or spliced) and what is asked of
the replicas out of band (health probes, readiness, the model list:
:class:`~meshkit.nodes.listing.Listing`) are each in their own module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

import attrs
import structlog

from ..client import h1
from ..client.deadline import DEADLINE_HEADER, header_value
from ..client.http import HttpClient, Timeouts
from ..client.replicas import Replica, ReplicaSet, eviction
from ..client.retry import RetryPolicy, retryable
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
from ..protocol import ollama, openai
from ..protocol.codec import UpstreamCodec
from ..protocol.types import ChatRequest, Chunk, ChunkStream, Completion, Message
from .base import Context, MicroService, ServiceType, base_urls, bearer
from .listing import Listing
from .upstream import LineParser, UpstreamStream

__all__ = ["APIS", "LineParser", "RemoteLLM", "UpstreamStream"]

log = structlog.get_logger(__name__)

APIS = ("openai", "ollama")


class Asked(Protocol):
    """A plain chat request as the gateway's whole-answer path holds it (no ChatRequest
    unless one is needed): what an attempt reads of it, and the request in full."""

    model: str
    stream: bool

    def read(self, raw: bytes, request: ChatRequest) -> Completion: ...

    def chat(self) -> ChatRequest: ...


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
        self._codec: UpstreamCodec = (
            openai.Upstream(name) if api == "openai" else ollama.Upstream(name)
        )
        self.path = path or self._codec.chat_path
        self.model = model
        self.retry = retry or RetryPolicy()
        self.replicas = ReplicaSet(name, self.endpoints, balancer=balancer)
        self.health_interval = health_interval
        self.fallback = fallback if isinstance(fallback, MicroService) else None
        self._fallback_name = fallback if isinstance(fallback, str) else None
        self._headers = bearer(api_key)
        #: A first try's timeouts when the request has no deadline of its own (made
        #: from ``_first_of``: the node's timeouts, unless replaced since).
        self._first_of = self.timeouts
        self._first = Timeouts(
            min(self.timeouts.connect, self.timeouts.first_byte),
            self.timeouts.first_byte,
            self.timeouts.idle,
            self.timeouts.total,
        )
        self._secrets = (api_key,) if api_key else ()
        self._listing = Listing(name, self.replicas, self._codec, self._headers, self._secrets)

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
        self._listing.start(client, self.health_interval)

    async def close(self) -> None:
        """Stop the health probe."""
        await self._listing.stop()

    # -- serving ---------------------------------------------------------------------------

    async def process(self, data: Any, ctx: Context) -> Completion | ChunkStream:
        """Send the chat request; stream chunks back or return the whole completion.

        Tries replicas until one answers, retrying safe failures within the budget,
        then fails over to :attr:`fallback` (if any) when this service failed before
        streaming anything, within what is left of the request's deadline.
        """
        request = _as_chat(data).with_model(self.model)
        body = self._codec.body(request, stream=request.stream)
        budget_end, first = self._first_try(ctx)
        replica = self.replicas.pick()
        try:
            if replica is None:
                raise self._circuit_open()
            # The first try is made here, before any retry or fallback machinery: most
            # calls need none (stamina costs tens of microseconds per call, a coroutine
            # layer one or two).
            return await self._attempt(replica, body, request, ctx, budget_end, first)
        except UpstreamError as err:
            return await self._recover(err, replica, body, request, ctx, budget_end)

    def whole(
        self, body: dict[str, Any], asked: Asked, ctx: Context
    ) -> Coroutine[Any, Any, Completion | ChunkStream]:
        """:meth:`process` for a plain request whose upstream body is made already (the
        gateway's plain path), as its first try's coroutine: ``asked.read`` reads a whole
        answer; a failed try makes the request in full for the retries and fallback."""
        budget_end, first = self._first_try(ctx)
        replica = self.replicas.pick()
        if replica is None:
            return self._without_replica(body, asked, ctx, budget_end)
        stand_in: Any = asked  # (for the ChatRequest: its model and stream switch)
        return self._attempt(replica, body, stand_in, ctx, budget_end, first, asked.read, asked)

    async def _without_replica(
        self, body: dict[str, Any], asked: Asked, ctx: Context, budget_end: float
    ) -> Completion | ChunkStream:
        """:meth:`whole` with no replica to try: the fallback, if any."""
        request = ctx.request = asked.chat()
        return await self._recover(self._circuit_open(), None, body, request, ctx, budget_end)

    def _first_try(self, ctx: Context) -> tuple[float, Timeouts | None]:
        """When a call's first-token budget ends (the request's deadline may end it
        sooner), and the first try's timeouts: without a request deadline they are the
        node's, made once (None: the attempt makes them)."""
        budget_end = time.monotonic() + self.timeouts.first_byte
        if ctx.deadline is not None:
            return min(budget_end, ctx.deadline), None
        return budget_end, self._first if self.timeouts is self._first_of else None

    async def _recover(
        self,
        err: UpstreamError,
        replica: Replica | None,
        body: dict[str, Any],
        request: ChatRequest,
        ctx: Context,
        budget_end: float,
    ) -> Completion | ChunkStream:
        """After the first try failed with ``err``: the retries, then the fallback."""
        try:
            if replica is None or not self.retry.retries or not retryable(err):
                raise err
            return await self._retry(err, replica, body, request, ctx, budget_end)
        except UpstreamError as final:
            fallback = self.fallback
            if fallback is None or isinstance(final, UpstreamRejected | ShuttingDown):
                raise
            log.warning(
                "meshkit.llm.fallback",
                service=self.name,
                fallback=fallback.name,
                error=final.code,
                request_id=ctx.request_id,
            )
            own_model = getattr(fallback, "model", None)
            if own_model:
                request = attrs.evolve(request, model=own_model)
            result: Completion | ChunkStream = await fallback.process(request, ctx)
            return result

    async def _retry(
        self,
        err: UpstreamError,
        replica: Replica,
        body: dict[str, Any],
        request: ChatRequest,
        ctx: Context,
        budget_end: float,
    ) -> Completion | ChunkStream:
        """Retry safe failures on other replicas (or the same) within the budget."""
        tried = [replica]
        failure: UpstreamError | None = err

        def fresh() -> bool:
            now = self.replicas.clock()
            return any(r.available(now) and r not in tried for r in self.replicas)

        retrying = self.retry.start(budget_end, fresh=fresh)
        async for attempt in retrying:
            if failure is not None:
                # stamina's first attempt hands it the first failure, to judge and wait
                # after like any other.
                with attempt:
                    raise failure
                failure = None
                continue
            assert retrying.last is not None
            log.info(
                "meshkit.llm.retry",
                service=self.name,
                attempt=attempt.num - 1,
                wait=round(retrying.waited, 3),
                error=retrying.last.code,
                request_id=ctx.request_id,
            )
            ctx.observer.retried(self.name)
            other = self.replicas.pick(tried) or self.replicas.pick()
            if other is None:
                raise retrying.last
            tried.append(other)
            with attempt:
                return await self._attempt(other, body, request, ctx, budget_end)
        raise AssertionError("unreachable: stamina lets the last failure out")

    def _circuit_open(self) -> CircuitOpen:
        """The failure when no replica may take a request now (with a Retry-After)."""
        wait = self.replicas.retry_in()
        why = self.replicas.last_error()
        circuit = CircuitOpen(
            f"{self.name}: every replica is out after failures"
            + (f" (last: {why})" if why else "")
            + f"; retry in {max(1, round(wait))} s",
            service=self.name,
        )
        circuit.retry_after = wait
        return circuit

    async def _attempt(
        self,
        replica: Replica,
        body: dict[str, Any],
        request: ChatRequest,
        ctx: Context,
        budget_end: float,
        timeouts: Timeouts | None = None,
        read: Callable[[bytes, ChatRequest], Completion] | None = None,
        asked: Asked | None = None,
    ) -> Completion | ChunkStream:
        """One try on one replica, up to the first chunk (or the whole answer).

        ``timeouts``: the call's own, when the caller knows them (a first try with no
        request deadline: the node's, made once). ``read``: how a whole answer is read
        (the codec's :meth:`completion` unless given). ``asked``: the plain request
        this first try stands in with (:meth:`whole`), whose failure is recovered from
        here, so no coroutine of :meth:`whole`'s waits around this one.
        """
        try:
            remaining = budget_end - time.monotonic()
            if remaining <= 0:
                raise UpstreamTimeout(f"{self.name}: no time left for the call", service=self.name)
            if timeouts is None:
                timeouts = self.timeouts
                if ctx.deadline is not None:
                    timeouts = timeouts.within(ctx.deadline - time.monotonic())
                timeouts = Timeouts(
                    min(timeouts.connect, remaining), remaining, timeouts.idle, timeouts.total
                )
            # The node's own headers are fixed (the client renders them once per URL);
            # these are the request's.
            headers = {"X-Request-ID": ctx.request_id}
            if ctx.deadline is not None:
                headers[DEADLINE_HEADER] = header_value(ctx.deadline)
            client = ctx.client
            replicas = self.replicas
            replicas.acquire(replica)
            task = asyncio.current_task()
            loop = asyncio.get_running_loop() if task is None else task.get_loop()
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
                        headers=self._headers,
                        more_headers=headers,
                        secrets=self._secrets,
                        answer_by=loop.time() + remaining,
                    )
                    if request.stream:
                        parser = LineParser(self.name, self._codec.line_parser())
                        # Any chunk is the first byte: a role, reasoning or a tool call
                        # shows the model is answering as much as text does.
                        while not parser.done:
                            data = response.take()
                            if data is None:
                                data = await response.readany()
                            if not data:
                                head += parser.eof()
                                break
                            batch = parser.feed(data)
                            head += batch
                            if batch:
                                break
                            if parser.error is not None:
                                raise parser.error
                    else:
                        # A short answer arrives with its head: taken at once, no reader.
                        whole = response.whole()
                        raw = (
                            whole
                            if whole is not None
                            else await client.read_whole(response, service=self.name)
                        )
                    response.in_time()
                finally:
                    if task is not None:
                        replica.waiting.discard(task)
            except BaseException as exc:
                if response is not None:
                    client.finish(response, ok=False)
                replicas.release(replica)
                err = self.failure(exc, timeouts, before_first=True)
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
                return UpstreamStream(self, response, parser, head, replica, client)
            client.finish(response, ok=True)
            replicas.release(replica)
            return probe.completed((read or self._codec.completion)(raw, request))
        except UpstreamError as err:
            if asked is None:
                raise
            # A plain first try failed: the retries and fallback, as ``process``'s.
            full = ctx.request = asked.chat()
            return await self._recover(err, replica, body, full, ctx, budget_end)

    def failure(
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

    async def ready(self, client: HttpClient) -> bool:
        """True when some replica answers its model listing and requests would be taken.

        That answer also counts as a passed health probe: a replica that was out (not
        up yet when the gateway started) takes traffic as soon as readiness says so.
        """
        return await self._listing.ready(client, self.timeouts)

    async def models(self, client: HttpClient) -> Sequence[str]:
        """Model names the upstream lists (the first replica that answers)."""
        return await self._listing.models(client, self.timeouts)


def _as_chat(data: Any) -> ChatRequest:
    if isinstance(data, ChatRequest):
        return data
    if isinstance(data, str):
        return ChatRequest(messages=(Message("user", data),))
    raise BadRequest(f"an LLM node takes a chat request, not {type(data).__name__}")
