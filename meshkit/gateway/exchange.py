"""What a chat handler needs of the server it runs on, whichever server that is.

The chat endpoints run on two intakes: aiohttp's (any app, and every handler mounted in
someone else's aiohttp app) and meshkit's own lean one (:mod:`meshkit.gateway.intake`).
Both hand the shared chat code (:func:`meshkit.gateway.dialect.answer_chat`) an
:class:`Exchange`: the request's headers and body, its record, and two ways to answer —
a whole :class:`Answer`, or a stream written through a :class:`Wire`. Nothing here
imports aiohttp.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import attrs

from .. import _json
from ..errors import MeshError
from ..nodes.probe import RequestObserver

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@attrs.frozen
class Streaming:
    """How the gateway writes streamed answers (the ``gateway`` section's settings).

    Attributes:
        send_timeout: Seconds a stream waits for a caller that reads nothing before it
            ends the stream and closes the caller's connection (0: wait for ever).
        splice: Relay a one-LLM pipeline's stream from the upstream's callbacks
            (False: pull every stream chunk by chunk).
    """

    send_timeout: float = 60.0
    splice: bool = True


@attrs.frozen
class Answer:
    """A whole answer, before any server turned it into bytes or a response object.

    Attributes:
        status: HTTP status.
        body: The body's bytes.
        headers: Headers beyond the ones the server adds (length, date, server).
        code: The error's code, for the access line (None: not an error).
    """

    status: int
    body: bytes
    headers: Mapping[str, str]
    code: str | None = None


_JSON = {"Content-Type": "application/json"}


def json_answer(obj: Any, *, status: int = 200, rid: str | None = None) -> Answer:
    """``obj`` as a JSON answer (with ``X-Request-ID`` when ``rid`` is given)."""
    headers = {"Content-Type": "application/json", "X-Request-ID": rid} if rid else _JSON
    return Answer(status, _json.dumps(obj), headers)


def error_answer(body: Any, err: MeshError) -> Answer:
    """An error body as an answer, with the headers its error asks for
    (``Retry-After`` when it says when to come back, ``WWW-Authenticate`` on 401)."""
    headers = dict(_JSON)
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    if err.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="meshkit"'
    return Answer(err.status, _json.dumps(body), headers, err.code)


class Wire(Protocol):
    """Where a streamed answer's bytes go once its head is sent (the sink's only door).

    Attributes:
        transport: The caller's connection.
        chunked: Whether the body is chunk-framed (HTTP/1.1) or ends with the connection.
        compressed: Whether bytes go through the server's compressor (never written
            to the transport directly).
    """

    transport: asyncio.Transport
    chunked: bool
    compressed: bool

    def take_head(self) -> bytes | None:
        """The response head's bytes when the sink is to write them itself, ahead of
        its first events and in the same write; None: :meth:`send_head` sends it."""

    def send_head(self) -> None:
        """Put the response head on the connection now."""

    async def drain(self) -> None:
        """Wait until the transport resumes writing (returns at once if not paused).

        Raises:
            ConnectionError: The caller left.
        """

    async def write(self, data: bytes) -> None:
        """Write body bytes through the server (a compressed response)."""

    async def end(self, last: bytes, before: bytes = b"") -> None:
        """Write ``before`` (body bytes framed as the sink frames its events), then
        ``last`` and the end of the body: in one write where the server lets it."""


class Exchange(Protocol[R_co]):
    """One chat request as the server that received it presents it.

    ``R_co`` is what the server's handler returns (aiohttp: a response object).
    """

    @property
    def headers(self) -> Mapping[str, str]:
        """The caller's headers (case-insensitive)."""

    @property
    def streaming(self) -> Streaming:
        """How streamed answers are written."""

    def observe(self, model: str | None, stream: bool) -> RequestObserver:
        """The request's record bound to its chat (a no-op observer when none)."""

    async def body(self) -> bytes:
        """The whole request body."""

    def answer(self, answer: Answer) -> R_co:
        """Answer whole."""

    async def open_stream(self, headers: dict[str, str]) -> Wire:
        """Start a streamed answer with ``headers``; its head is prepared, not sent.

        Raises:
            ConnectionResetError: The caller is gone.
        """

    def streamed(self) -> R_co:
        """What the handler returns once a streamed answer ended (or never began)."""
