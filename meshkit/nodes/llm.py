"""`RemoteLLM`: a chat model behind an OpenAI-compatible or Ollama-native HTTP API."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import structlog

from .. import _json
from ..client import HttpClient, Timeouts
from ..errors import BadRequest, MeshError, UpstreamError, UpstreamTimeout
from ..protocol.types import ChatRequest, Chunk, ChunkStream, Completion, Message, Usage
from ..protocol.wire import SSE_DONE, sse_data
from .base import Context, MicroService, ServiceType

log = structlog.get_logger(__name__)

APIS = ("openai", "ollama")
_CHAT_PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat"}
_MODEL_PATHS = {"openai": "/v1/models", "ollama": "/api/tags"}


class RemoteLLM(MicroService):
    """A remote chat model.

    Args:
        name: Node name.
        endpoint: Base URL (or several, tried in turn) without the API path, e.g.
            ``http://ollama:11434``.
        api: ``"openai"`` for any OpenAI-compatible server (Ollama's ``/v1``, vLLM,
            llama.cpp, TGI) or ``"ollama"`` for Ollama's native ``/api/chat``.
        path: Override of the chat path (``/v1/chat/completions`` or ``/api/chat``).
        model: Model used when the request names none.
        timeouts: Outbound timeouts; ``timeouts.first_byte`` bounds the wait for the
            first token (the whole answer when not streaming).
        api_key: Credential sent upstream as ``Authorization: Bearer``; never logged.
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
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        super().__init__(name, params=params, timeout=None)
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, not {api!r}")
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not endpoints:
            raise ValueError("RemoteLLM needs at least one endpoint")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.api = api
        self.path = path or _CHAT_PATHS[api]
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._turn = itertools.cycle(self.endpoints)

    def _base(self) -> str:
        return next(self._turn)

    async def process(self, data: Any, ctx: Context) -> Completion | ChunkStream:
        """Send the chat request; stream chunks back or return the whole completion."""
        request = _as_chat(data).with_model(self.model)
        url = self._base() + self.path
        if request.stream:
            return await self._stream(url, request, ctx)
        return await self._complete(url, request, ctx)

    # -- non-streaming -------------------------------------------------------------------

    async def _complete(self, url: str, request: ChatRequest, ctx: Context) -> Completion:
        body = self._body(request, stream=False)
        timeouts = self._deadline_timeouts(ctx)
        try:
            async with asyncio.timeout(timeouts.first_byte):
                async with ctx.client.request(
                    "POST", url, service=self.name, timeouts=timeouts, body=body,
                    headers=self._headers,
                ) as response:
                    raw = await response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"{self.name}: no answer within {timeouts.first_byte:g} s", service=self.name
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{self.name}: {type(exc).__name__}", service=self.name) from exc
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

    # -- streaming -------------------------------------------------------------------------

    async def _stream(self, url: str, request: ChatRequest, ctx: Context) -> ChunkStream:
        """Open the stream and wait for its first chunk, so that failures before any
        output surface here (as a status) rather than inside the stream."""
        body = self._body(request, stream=True)
        timeouts = self._deadline_timeouts(ctx)
        stack = AsyncExitStack()
        try:
            async with asyncio.timeout(timeouts.first_byte):
                response = await stack.enter_async_context(
                    ctx.client.request(
                        "POST", url, service=self.name, timeouts=timeouts, body=body,
                        headers=self._headers,
                    )
                )
                chunks = self._parse(response)
                # Servers often open with an empty role-only event: the first token is
                # the first chunk that carries something.
                head: list[Chunk] = []
                while True:
                    chunk = await anext(chunks, None)
                    if chunk is None:
                        break
                    head.append(chunk)
                    if chunk.text or chunk.finish_reason or chunk.usage:
                        break
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, TimeoutError) and not isinstance(exc, MeshError):
                raise UpstreamTimeout(
                    f"{self.name}: no first token within {timeouts.first_byte:g} s",
                    service=self.name,
                ) from exc
            if isinstance(exc, aiohttp.ClientError):
                raise UpstreamError(
                    f"{self.name}: stream failed ({type(exc).__name__})", service=self.name
                ) from exc
            raise
        return self._relay(stack, head, chunks)

    async def _relay(
        self, stack: AsyncExitStack, head: list[Chunk], chunks: AsyncIterator[Chunk]
    ) -> ChunkStream:
        try:
            for chunk in head:
                yield chunk
            if head:
                async for chunk in chunks:
                    yield chunk
        except TimeoutError as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise UpstreamTimeout(
                f"{self.name}: stream stalled for {self.timeouts.idle:g} s", service=self.name
            ) from exc
        except aiohttp.ClientError as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise UpstreamError(
                f"{self.name}: stream broke ({type(exc).__name__})", service=self.name
            ) from exc
        except BaseException:
            await stack.__aexit__(*sys.exc_info())
            raise
        else:
            await stack.aclose()

    async def _parse(self, response: aiohttp.ClientResponse) -> AsyncIterator[Chunk]:
        if self.api == "openai":
            async for chunk in self._parse_sse(response):
                yield chunk
        else:
            async for chunk in self._parse_ndjson(response):
                yield chunk

    async def _parse_sse(self, response: aiohttp.ClientResponse) -> AsyncIterator[Chunk]:
        loads = _json.loads
        async for line in response.content:
            payload = sse_data(line)
            if payload is None or not payload:
                continue
            if payload == SSE_DONE:
                return
            try:
                obj = loads(payload)
            except ValueError as exc:
                raise UpstreamError(
                    f"{self.name}: malformed event in stream", service=self.name
                ) from exc
            if not isinstance(obj, dict):
                raise UpstreamError(f"{self.name}: malformed event in stream", service=self.name)
            if "error" in obj:
                err = obj["error"]
                message = err.get("message") if isinstance(err, dict) else err
                raise UpstreamError(f"{self.name}: {message}", service=self.name)
            choices = obj.get("choices")
            usage = obj.get("usage")
            if choices:
                choice = choices[0]
                delta = choice.get("delta") or {}
                yield Chunk(
                    delta.get("content") or "",
                    choice.get("finish_reason"),
                    _openai_usage(usage) if usage else None,
                    obj.get("model"),
                    raw=payload,
                )
            elif usage:
                yield Chunk("", None, _openai_usage(usage), obj.get("model"), raw=payload)
        raise UpstreamError(
            f"{self.name}: stream ended before it was complete", service=self.name
        )

    async def _parse_ndjson(self, response: aiohttp.ClientResponse) -> AsyncIterator[Chunk]:
        async for line in response.content:
            line = line.strip()
            if not line:
                continue
            try:
                obj = _json.loads(line)
            except ValueError as exc:
                raise UpstreamError(
                    f"{self.name}: malformed line in stream", service=self.name
                ) from exc
            if "error" in obj:
                raise UpstreamError(f"{self.name}: {obj['error']}", service=self.name)
            message = obj.get("message") or {}
            text = message.get("content") or obj.get("response") or ""
            if obj.get("done"):
                if text:
                    yield Chunk(text, None, None, obj.get("model"))
                yield Chunk("", obj.get("done_reason") or "stop", _ollama_usage(obj),
                            obj.get("model"))
                return
            yield Chunk(text, None, None, obj.get("model"))
        raise UpstreamError(
            f"{self.name}: stream ended before it was complete", service=self.name
        )

    # -- helpers -------------------------------------------------------------------------

    def _deadline_timeouts(self, ctx: Context) -> Timeouts:
        if ctx.deadline is None:
            return self.timeouts
        first = ctx.remaining(self.timeouts.first_byte)
        return Timeouts(self.timeouts.connect, first, self.timeouts.idle, self.timeouts.total)

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
        for key, name in (("temperature", "temperature"), ("top_p", "top_p"),
                          ("max_tokens", "num_predict"), ("seed", "seed")):
            value = getattr(request, key)
            if value is not None:
                options[name] = value
        if request.stop:
            options["stop"] = list(request.stop)
        return {"model": request.model, "messages": messages, "stream": stream,
                "options": options}

    async def ready(self, client: HttpClient) -> bool:
        """True when every endpoint answers its model listing."""
        for base in self.endpoints:
            try:
                await self._list_models(client, base, timeout=2.0)
            except MeshError:
                return False
        return True

    async def models(self, client: HttpClient) -> Sequence[str]:
        """Model names the upstream lists (the first endpoint that answers)."""
        errors: list[MeshError] = []
        for base in self.endpoints:
            try:
                return await self._list_models(client, base, timeout=self.timeouts.first_byte)
            except MeshError as exc:
                errors.append(exc)
        raise errors[-1]

    async def _list_models(self, client: HttpClient, base: str, *, timeout: float) -> list[str]:
        timeouts = Timeouts(min(self.timeouts.connect, timeout), timeout, timeout)
        url = base + _MODEL_PATHS[self.api]
        async with client.request(
            "GET", url, service=self.name, timeouts=timeouts, headers=self._headers
        ) as response:
            raw = await response.read()
        try:
            obj = _json.loads(raw)
            if self.api == "openai":
                return [str(m["id"]) for m in obj["data"]]
            return [str(m.get("name") or m["model"]) for m in obj["models"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"{self.name}: malformed model list", service=self.name) from exc


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
