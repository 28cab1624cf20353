"""The chat :class:`~meshkit.gateway.exchange.Exchange` of a request aiohttp received.

Every chat handler runs on it when aiohttp serves the route: under ``meshkit serve``
with ``gateway.intake: aiohttp``, through aiohttp's test client, and in apps that mount
:func:`~meshkit.gateway.app.pipeline_handler` themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..nodes.probe import RequestObserver
from ..observability.observer import ERROR_CODE, observe
from .exchange import Answer, Streaming

#: App setting: how streamed answers are written (defaults when absent).
STREAMING = web.AppKey("meshkit.streaming", Streaming)
_DEFAULT = Streaming()


def to_response(answer: Answer) -> web.Response:
    """``answer`` as an aiohttp response (its error code kept for the access line)."""
    response = web.Response(body=answer.body, status=answer.status, headers=answer.headers)
    if answer.code is not None:
        response[ERROR_CODE] = answer.code
    return response


class ResponseWire:
    """A streamed aiohttp response as the sink writes it (see :class:`Wire`)."""

    __slots__ = ("_response", "_writer", "chunked", "compressed", "transport")

    def __init__(
        self, response: web.StreamResponse, writer: Any, transport: asyncio.Transport
    ) -> None:
        self._response = response
        self._writer = writer
        self.transport = transport
        # Framed as aiohttp framed the head (it chunks a body of unknown length).
        self.chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        self.compressed = bool(response.compression)

    def take_head(self) -> bytes | None:
        return None  # (aiohttp renders and sends its own head)

    def send_head(self) -> None:
        # aiohttp's public ``send_headers`` (its stream-writer interface since 3.12).
        self._writer.send_headers()

    async def drain(self) -> None:
        await self._writer.drain()

    async def write(self, data: bytes) -> None:
        await self._response.write(data)

    async def end(self, last: bytes, before: bytes = b"") -> None:
        if before and not self.transport.is_closing():
            self.transport.write(before)
        await self._response.write_eof(last)


class RequestExchange:
    """An aiohttp request as a chat handler sees it."""

    __slots__ = ("_request", "_response")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response: web.StreamResponse | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self._request.headers

    @property
    def streaming(self) -> Streaming:
        return self._request.app.get(STREAMING, _DEFAULT)

    def observe(self, model: str | None, stream: bool) -> RequestObserver:
        return observe(self._request, model, stream)

    async def body(self) -> bytes:
        # Past the app's limit aiohttp raises its 413, which the app renders.
        return await self._request.read()

    def answer(self, answer: Answer) -> web.StreamResponse:
        return to_response(answer)

    async def open_stream(self, headers: dict[str, str]) -> ResponseWire:
        response = self._response = web.StreamResponse(headers=headers)
        writer = await response.prepare(self._request)
        transport = self._request.transport
        if writer is None or transport is None or transport.is_closing():
            raise ConnectionResetError("the caller went away")
        return ResponseWire(response, writer, transport)

    def streamed(self) -> web.StreamResponse:
        if self._response is None:
            self._response = web.StreamResponse()
        return self._response
