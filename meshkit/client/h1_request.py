"""A request to an upstream as bytes: its target from a URL, its head and body.

The half of :mod:`meshkit.client.h1` that writes: the request line and headers are
rendered once per upstream URL (:func:`encode_head`) and completed per call with the
call's own headers and body (:func:`complete_request`). Header names and values with a
line break (or a name with a colon) are refused, so nothing a caller passes can split
the request.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from urllib.parse import urlsplit


@functools.lru_cache(maxsize=256)
def target(url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
    """``(scheme, host, port)``, the request target and the Host header of ``url``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    if port != default:
        shown += f":{port}"
    return (scheme, host, port), path.encode("ascii"), shown.encode("idna")


def encode_request(
    method: str, path: bytes, host: bytes, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    """One request's bytes: request line, headers and body (never chunked)."""
    return complete_request(encode_head(method, path, host, headers), {}, body)


def encode_head(method: str, path: bytes, host: bytes, headers: Mapping[str, str]) -> bytes:
    """A request's line and ``headers``, unterminated: the part of a request that can
    be made once for every request to one upstream (see :func:`complete_request`)."""
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), path, host)]
    _header_lines(lines, headers)
    return b"".join(lines)


def complete_request(head: bytes, headers: Mapping[str, str], body: bytes | None) -> bytes:
    """A request's bytes: ``head`` (from :func:`encode_head`), then ``headers`` and
    ``body``."""
    lines = [head]
    if headers:
        _header_lines(lines, headers)
    if body is not None:
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
    else:
        lines.append(b"\r\n")
    return b"".join(lines)


def _header_lines(lines: list[bytes], headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} has a line break or colon in it")
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
