"""What an upstream's answer means when it is not the one asked for.

A status other than 2xx becomes the :mod:`meshkit.errors` error the caller sees, with
the upstream's own message (in whichever common shape it comes) and any configured
secret masked; a redirect is never followed. :func:`retry_after` reads the header both
ways HTTP allows.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterable, Mapping

import structlog

from .. import _json
from ..errors import (
    MeshError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejected,
)
from . import h1
from .pool import Route

log = structlog.get_logger(__name__)

#: Longest upstream error body we read to build a message.
_ERROR_BODY_LIMIT = 4096


def too_large(service: str, exc: h1.BodyTooLarge) -> UpstreamError:
    """The error for an answer over the service's ``max_body``."""
    return UpstreamError(
        f"{service}: the upstream's answer is over the limit of {_size(exc.limit)} "
        "(max_response_body)",
        service=service,
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, 86_400.0))


def safe_location(location: str) -> str:
    """A ``Location`` without any ``user:password@`` part (and cut to a sane length)."""
    scheme, sep, rest = location.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        location = scheme + sep + authority.rpartition("@")[2] + slash + path
    return location[:300]


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret (of four characters or more) masked."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


async def status_error(
    response: h1.Response, service: str, secrets: tuple[str, ...], route: Route
) -> MeshError:
    """Build the error for an upstream 3xx/4xx/5xx, with the upstream's own message."""
    status = response.status
    if status < 400:
        # A gateway never lets an upstream send it elsewhere: where to connect comes
        # from the operator's YAML only.
        where = redact(safe_location(response.headers.get("Location") or "nowhere"), secrets)
        log.warning("meshkit.upstream.redirect", service=service, status=status)
        return UpstreamError(
            f"{service}: the upstream redirected ({status}) to {where}; meshkit does not "
            "follow redirects: point the endpoint at the final URL",
            service=service,
            upstream_status=status,
        )
    if status == 407 and route.forward and route.proxy is not None:
        return UpstreamConnectError(
            f"{service}: the proxy {route.proxy.name} refused the request (407 Proxy "
            "Authentication Required)",
            service=service,
        )
    try:
        raw = await asyncio.wait_for(response.read(_ERROR_BODY_LIMIT), 2.0)
    except (TimeoutError, h1.H1Error):
        raw = b""
    detail = redact(_error_message(raw) or response.reason or "error", secrets)
    log.info("meshkit.upstream.status", service=service, status=status)
    if status in (429, 503):
        return UpstreamOverloaded(
            f"{service}: upstream answered {status}: {detail}",
            service=service,
            upstream_status=status,
            retry_after=retry_after(response.headers.get("Retry-After")),
        )
    if 400 <= status < 500 and status != 408:
        return UpstreamRejected(f"{service}: {detail}", service=service, upstream_status=status)
    return UpstreamError(
        f"{service}: upstream answered {status}: {detail}",
        service=service,
        upstream_status=status,
    )


def _error_message(raw: bytes) -> str:
    """Pull a human message out of an upstream error body in any common shape."""
    try:
        body = _json.loads(raw)
    except (ValueError, TypeError):
        return raw.decode("utf-8", "replace").strip()[:500]
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:500]
    return raw.decode("utf-8", "replace")[:500]


#: Headers that describe one connection, never forwarded to another hop (RFC 9110 7.6.1),
#: plus the caller's own credentials and the headers meshkit sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "host",
        "content-length",
        "authorization",
        "cookie",
    }
)


def forwardable(headers: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The subset of a caller's ``headers`` named in ``names`` that may go upstream.

    Hop-by-hop headers, ``Authorization`` and cookies never pass, whatever ``names``
    says; a node that wants to pass a caller header on must name it.
    """
    out: dict[str, str] = {}
    for name in names:
        if name.lower() in HOP_BY_HOP:
            continue
        value = headers.get(name)
        if value is not None:
            out[name] = value
    return out
