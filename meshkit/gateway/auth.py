"""API-key auth for the gateway: ``Authorization: Bearer <key>``, compared in constant time.

Keys come from the YAML (``gateway.api_keys``, usually ``${MESHKIT_API_KEYS}``) or a
file (``gateway.api_keys_file``, one key per line, ``#`` comments). With no key set,
auth is off. ``/healthz``, ``/readyz`` and the playground's own files (not its API) are
always open. The caller's
``Authorization`` header is checked here and never passed on: outbound calls carry
only the credentials configured for each upstream.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web

from ..errors import Unauthorized
from .admission import EXEMPT
from .ui import is_public

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def read_key_file(path: str | Path) -> tuple[str, ...]:
    """Keys in a file: one per line; blank lines and ``#`` comments ignored."""
    keys = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key = line.split("#", 1)[0].strip()
        if key:
            keys.append(key)
    return tuple(keys)


def parse_keys(text: str) -> tuple[str, ...]:
    """Comma-separated keys, blanks dropped."""
    return tuple(k.strip() for k in text.split(",") if k.strip())


class ApiKeys:
    """The accepted keys and the middleware that checks them."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"<ApiKeys: {len(self._keys)} key(s)>"

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the keys.

        Every key is compared, with :func:`hmac.compare_digest`, so the time taken
        does not tell which key (or how much of one) matched.
        """
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = token.strip().encode("utf-8", "surrogateescape")
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given, key)
        return ok

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware: 401 unless the request carries a valid key."""
        if (
            request.path in EXEMPT
            or is_public(request.path)
            or self.accepts(request.headers.get("Authorization"))
        ):
            return await handler(request)
        raise Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")
