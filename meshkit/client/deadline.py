"""Request deadlines that shrink across hops.

A deadline travels between meshkit services as the *remaining* budget in milliseconds
(``X-Meshkit-Deadline-Ms: 2500``), never as a wall-clock instant, so hosts with skewed
clocks agree on it. Inside a process it is a :func:`time.monotonic` instant on the
request's :class:`~meshkit.nodes.base.Context`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

#: Header carrying the caller's remaining budget in milliseconds.
DEADLINE_HEADER = "X-Meshkit-Deadline-Ms"

#: Longest budget honoured from a header (a day); larger values are clamped.
_MAX_MS = 86_400_000


def deadline_from(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The monotonic deadline a request's headers ask for, or None.

    A missing or malformed header means "no deadline"; a budget of zero or less means
    "already late" and gives a deadline in the past.
    """
    raw = headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        ms = int(raw.strip())
    except ValueError:
        return None
    start = time.monotonic() if now is None else now
    return start + min(ms, _MAX_MS) / 1000.0


def header_value(deadline: float, *, now: float | None = None) -> str:
    """The header value handing on what is left of ``deadline`` (at least 0 ms)."""
    start = time.monotonic() if now is None else now
    return str(max(0, int((deadline - start) * 1000)))


def earliest(*deadlines: float | None) -> float | None:
    """The soonest of several optional deadlines."""
    known = [d for d in deadlines if d is not None]
    return min(known) if known else None
