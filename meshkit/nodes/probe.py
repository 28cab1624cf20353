"""What the graph and the nodes tell the observer, declared here with no-op defaults.

The nodes layer carries a :class:`RequestObserver` on every
:class:`~meshkit.nodes.base.Context`; code that runs outside the gateway (a pipeline
used as a library, a test) gets :data:`NOOP`, which records nothing and costs a method
call. The gateway's per-request record (:mod:`meshkit.observability.record`) overrides
each method. Nothing here imports aiohttp, prometheus-client or OpenTelemetry.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from types import TracebackType
from typing import Protocol, TypeVar

from ..protocol.types import Chunk, Completion

T = TypeVar("T")

#: Outcomes of one upstream attempt, the values of the ``outcome`` label.
OUTCOMES = ("ok", "error", "timeout", "retried", "cancelled")


class Tally(Protocol):
    """What the gateway's writer counted of one stream, read once at its end.

    Attributes:
        first: ``time.perf_counter()`` when the answer's first byte was written.
        sent: Chunks written.
        ends: Chunks that carried a finish reason or usage.
        spliced: The stream was spliced into the writer, not pulled.
    """

    first: float | None
    sent: int
    ends: list[Chunk]
    spliced: bool


class AttemptProbe:
    """One try of one upstream replica: told when it failed, answered, or completed."""

    __slots__ = ()

    def failed(self, exc: BaseException) -> None:
        """The attempt ended before its first token with ``exc``."""

    def answered(self) -> None:
        """The first token (or the whole answer) arrived."""

    def completed(self, completion: T) -> T:
        """A whole answer was read; returns it unchanged (for ``return probe.completed(x)``)."""
        return completion


class NodeProbe:
    """One node's run; a context manager around ``process``."""

    __slots__ = ()

    def __enter__(self) -> NodeProbe:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def returned(self, result: T) -> T:
        """The node returned ``result`` (a stream's run lasts until the request ends)."""
        return result


class RequestObserver:
    """Hooks for one request as it runs through a graph (all no-ops here)."""

    __slots__ = ()

    def node(self, name: str) -> NodeProbe:
        """A probe around the run of node ``name``."""
        return _NODE

    def attempt(
        self,
        service: str,
        replica: str,
        url: str,
        model: str | None,
        headers: MutableMapping[str, str],
    ) -> AttemptProbe:
        """A probe for one upstream attempt; may add trace headers to ``headers``."""
        return _ATTEMPT

    def retried(self, service: str) -> None:
        """The latest failed attempt on ``service`` is being retried."""

    def completed(self, completion: Completion) -> None:
        """The whole (non-streamed) answer the caller gets."""

    def failed(self, err: BaseException) -> None:
        """The answer's stream ended with ``err`` (an error event was sent)."""

    def gone(self) -> None:
        """The caller left before the end of the answer."""

    def streamed(self, tally: Tally | None) -> None:
        """The stream is over; ``tally`` counted what was written (None: nothing was)."""


_NODE = NodeProbe()
_ATTEMPT = AttemptProbe()

#: The observer of requests nobody watches.
NOOP = RequestObserver()
