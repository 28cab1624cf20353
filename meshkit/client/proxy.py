"""Outbound proxies as the environment declares them: ``HTTP(S)_PROXY`` and ``NO_PROXY``.

The conventions followed are those most tools share (curl, Go, requests):

* ``https_proxy`` / ``HTTPS_PROXY`` is used for ``https://`` upstreams, through a
  ``CONNECT`` tunnel (TLS runs end to end, the proxy sees only the host name);
* ``http_proxy`` / ``HTTP_PROXY`` is used for ``http://`` upstreams, with requests in
  absolute form (``POST http://host/path``);
* the lower-case name wins when both are set; a proxy URL without a scheme is
  ``http://``; only ``http://`` proxies are supported (the hop to the proxy is clear text);
* ``user:password@`` in a proxy URL is sent as ``Proxy-Authorization: Basic`` and
  never logged;
* ``no_proxy`` / ``NO_PROXY`` lists what is reached directly, comma- or space-separated:
  ``*`` (everything), a domain (``example.com`` or ``.example.com``: that name and every
  name under it), ``host:port``, an IP address, or a CIDR block (``10.0.0.0/8``);
* loopback (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1``) is always reached
  directly, as Go does: meshkit's own embedded model server listens there.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import attrs


@attrs.frozen
class Proxy:
    """One proxy server: where it listens and the credentials it wants (if any)."""

    host: str
    port: int
    #: The ``Proxy-Authorization`` header value, or None.
    authorization: str | None = attrs.field(default=None, repr=False)

    @property
    def name(self) -> str:
        """``host:port``, fit for logs and messages (never the credentials)."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{shown}:{self.port}"

    @classmethod
    def parse(cls, url: str, *, what: str = "proxy") -> Proxy:
        """A proxy from its URL (``http://user:pass@host:3128``, or ``host:3128``)."""
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme.lower() != "http":
            raise ValueError(f"{what}: only http:// proxies are supported, not {parts.scheme}://")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise ValueError(f"{what}: not a valid port in the proxy URL") from exc
        if not parts.hostname:
            raise ValueError(f"{what}: the proxy URL names no host")
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        return cls(parts.hostname, port, auth)


def _env(env: Mapping[str, str], name: str) -> str:
    """``name`` from ``env``, the lower-case spelling first."""
    return env.get(name.lower()) or env.get(name.upper()) or ""


def _no_proxy_entries(text: str) -> tuple[str, ...]:
    return tuple(e.strip().lower() for e in text.replace(" ", ",").split(",") if e.strip())


@attrs.frozen
class Proxies:
    """Which proxy, if any, each upstream is reached through.

    Build it from the environment with :meth:`from_env` (what :class:`HttpClient`
    does when given none), or directly in code.
    """

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Proxies:
        """The proxies ``env`` (default: ``os.environ``) declares.

        Raises:
            ValueError: A proxy variable holds something other than an http:// URL.
        """
        env = os.environ if env is None else env
        http = _env(env, "HTTP_PROXY")
        https = _env(env, "HTTPS_PROXY")
        return cls(
            Proxy.parse(http, what="HTTP_PROXY") if http else None,
            Proxy.parse(https, what="HTTPS_PROXY") if https else None,
            _no_proxy_entries(_env(env, "NO_PROXY")),
        )

    def __bool__(self) -> bool:
        return self.http is not None or self.https is not None

    def for_upstream(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy for ``scheme://host:port``, or None to connect directly."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or bypassed(host, port, self.no_proxy):
            return None
        return proxy


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bypassed(host: str, port: int, entries: tuple[str, ...]) -> bool:
    """Whether ``host:port`` is reached directly, given ``NO_PROXY`` ``entries``."""
    host = host.lower().rstrip(".").strip("[]")
    if _loopback(host):
        return True
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in entries:
        if entry == "*":
            return True
        name, want_port = entry, None
        if entry.startswith("["):  # [v6] or [v6]:port
            name, _, rest = entry[1:].partition("]")
            want_port = rest[1:] or None
        elif entry.count(":") == 1:  # host:port (a bare v6 address has several colons)
            name, _, want_port = entry.partition(":")
        if want_port is not None and want_port != str(port):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False
