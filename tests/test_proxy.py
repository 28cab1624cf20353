"""Outbound proxies: ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``, against a real proxy.

The proxy is Debian's ``tinyproxy`` (``make test-deps`` installs it), started by each
test on a free loopback port with its own config, and stopped at the end of the test —
or, should pytest die first, when its stdin closes. Loopback is never proxied, so the
upstreams listen on this machine's outward address instead.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from aiohttp import web
from structlog.testing import capture_logs

from meshkit import RemoteLLM, ServiceOrchestrator
from meshkit.client.http import HttpClient
from meshkit.client.proxy import Proxies, Proxy, bypassed
from meshkit.errors import UpstreamConnectError
from meshkit.protocol.types import ChatRequest, Message
from meshkit.testing import FakeLLM

from .conftest import free_port, until
from .test_resilience import CHAT, mesh_text, sse_events, start

TOKENS = ["through", " the", " proxy"]
SECRET = "s3cr3t-pw"


def outward_ip() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))  # TEST-NET-2: routed, never reached
        ip = str(probe.getsockname()[0])
    assert not ip.startswith("127."), "the proxy tests need a non-loopback address"
    return ip


# -- NO_PROXY and the environment -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "entries", "direct"),
    [
        ("example.com", 443, "example.com", True),
        ("api.example.com", 443, "example.com", True),
        ("api.example.com", 443, ".example.com", True),
        ("example.com", 443, ".example.com", True),
        ("badexample.com", 443, "example.com", False),
        ("EXAMPLE.com.", 443, "example.com", True),
        ("api.example.com", 443, "*.example.com", True),
        ("anything.org", 80, "*", True),
        ("example.com", 8080, "example.com:8080", True),
        ("example.com", 443, "example.com:8080", False),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("10.1.2.3", 80, "10.1.2.3", True),
        ("2001:db8::5", 80, "2001:db8::/32", True),
        ("2001:db8::5", 80, "[2001:db8::5]", True),
        ("2001:db8::5", 80, "[2001:db8::5]:81", False),
        ("localhost", 80, "", True),
        ("api.localhost", 80, "", True),
        ("127.0.0.9", 80, "", True),
        ("::1", 80, "", True),
        ("example.com", 443, "", False),
        ("example.com", 443, "other.com, example.com", True),
        ("example.com", 443, "other.com example.com", True),
    ],
)
def test_no_proxy(host: str, port: int, entries: str, direct: bool) -> None:
    """Which upstreams are reached directly: loopback always, then what NO_PROXY lists."""
    proxies = Proxies.from_env({"NO_PROXY": entries, "HTTPS_PROXY": "proxy:3128"})
    assert bypassed(host, port, proxies.no_proxy) is direct
    assert (proxies.for_upstream("https", host, port) is None) is direct


class TestEnvironment:
    """Proxy variables read the way curl, Go and requests read them."""

    def test_lower_case_wins_and_schemes_pick_the_variable(self) -> None:
        env = {
            "HTTP_PROXY": "http://upper:1",
            "http_proxy": "http://lower:2",
            "HTTPS_PROXY": "tunnel:3128",
            "no_proxy": "internal",
        }
        proxies = Proxies.from_env(env)
        assert proxies.http == Proxy("lower", 2)
        assert proxies.https == Proxy("tunnel", 3128)
        assert proxies.for_upstream("http", "a.example", 80) == Proxy("lower", 2)
        assert proxies.for_upstream("https", "a.example", 443) == Proxy("tunnel", 3128)
        assert proxies.for_upstream("https", "svc.internal", 443) is None
        assert (
            not Proxies.from_env({}) and Proxies.from_env({}).for_upstream("http", "a", 1) is None
        )

    def test_credentials_become_basic_auth_and_stay_out_of_reprs(self) -> None:
        proxy = Proxy.parse(f"http://alice:{SECRET.replace('-', '%2D')}@proxy.corp:8080")
        assert proxy.authorization == "Basic YWxpY2U6czNjcjN0LXB3"  # alice:s3cr3t-pw
        assert proxy.name == "proxy.corp:8080"
        assert SECRET not in repr(proxy) and SECRET not in repr(Proxies(https=proxy))

    @pytest.mark.parametrize("value", ["socks5://proxy:1080", "https://proxy:443"])
    def test_an_unsupported_proxy_is_a_clear_error(self, value: str) -> None:
        with pytest.raises(ValueError, match="HTTPS_PROXY: only http:// proxies"):
            Proxies.from_env({"HTTPS_PROXY": value})


# -- a real proxy -----------------------------------------------------------------------------


@attrs.frozen
class Tinyproxy:
    """A running tinyproxy: its URL (with credentials if it wants them) and its log."""

    url: str
    log: Path

    def requests(self) -> list[str]:
        """The request lines tinyproxy logged ("GET http://..." or "CONNECT host:port")."""
        text = self.log.read_text() if self.log.exists() else ""
        return [line.split("): ", 1)[1] for line in text.splitlines() if "Request (" in line]


StartProxy = Callable[..., Awaitable[Tinyproxy]]


@pytest.fixture
async def tinyproxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start tinyproxy on a free loopback port; ``user`` turns on Basic auth."""
    procs: list[asyncio.subprocess.Process] = []

    async def start_proxy(user: str | None = None) -> Tinyproxy:
        port = free_port()
        log = tmp_path / f"tinyproxy-{port}.log"
        conf = tmp_path / f"tinyproxy-{port}.conf"
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            f'LogFile "{log}"',
            "LogLevel Connect",
            "MaxClients 50",
            "Allow 127.0.0.1",
        ]
        if user:
            lines.append(f"BasicAuth {user} {SECRET}")
        conf.write_text("\n".join(lines) + "\n")
        # The shell stops tinyproxy when its stdin closes: at the end of the test, or
        # when pytest itself dies, so no proxy outlives the run.
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            'tinyproxy -d -c "$1" & pid=$!; read _; kill $pid; wait $pid',
            "sh",
            str(conf),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        procs.append(proc)
        await until(lambda: _listening(port), within=10)
        creds = f"{user}:{SECRET}@" if user else ""
        return Tinyproxy(f"http://{creds}127.0.0.1:{port}", log)

    yield start_proxy
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
async def http_llm() -> AsyncIterator[FakeLLM]:
    """A FakeLLM on this machine's outward address (loopback is never proxied)."""
    llm = FakeLLM(tokens=TOKENS)
    async with llm.serve(host=outward_ip()):
        yield llm


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def https_llm(ca: trustme.CA) -> AsyncIterator[tuple[FakeLLM, str]]:
    """A FakeLLM behind TLS on the outward address, its certificate for that address."""
    ip = outward_ip()
    llm = FakeLLM(tokens=TOKENS)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(ip).configure_cert(server_ctx)
    runner = web.AppRunner(llm.app())
    await runner.setup()
    site = web.TCPSite(runner, ip, 0, ssl_context=server_ctx)
    await site.start()
    try:
        yield llm, f"https://{ip}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def chat(client: HttpClient, url: str, *, stream: bool) -> str:
    node = RemoteLLM("llm", endpoint=url, model="llama3.2:1b", health_interval=0)
    mesh = ServiceOrchestrator().add(node)
    await mesh.open(client)
    try:
        result = await mesh.run(ChatRequest(messages=(Message("user", "hi"),), stream=stream))
        if stream:
            return "".join([c.text async for c in result])
        return str(result.text)
    finally:
        await mesh.close()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class TestHttpProxy:
    """``http://`` upstreams through ``HTTP_PROXY``: absolute-form requests."""

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
    async def test_chat_through_the_proxy(
        self, tinyproxy: StartProxy, http_llm: FakeLLM, stream: bool
    ) -> None:
        proxy = await tinyproxy()
        proxies = Proxies(http=Proxy.parse(proxy.url))
        async with HttpClient(proxies=proxies) as client:
            assert await chat(client, http_llm.url, stream=stream) == "".join(TOKENS)
        assert "tinyproxy" in http_llm.headers[0].get("Via", "")
        assert proxy.requests() == [f"POST {http_llm.url}/v1/chat/completions HTTP/1.1"]

    async def test_no_proxy_goes_direct(self, tinyproxy: StartProxy, http_llm: FakeLLM) -> None:
        proxy = await tinyproxy()
        host = http_llm.url.removeprefix("http://").rsplit(":", 1)[0]
        proxies = Proxies(http=Proxy.parse(proxy.url), no_proxy=(host,))
        async with HttpClient(proxies=proxies) as client:
            assert await chat(client, http_llm.url, stream=True) == "".join(TOKENS)
        assert "Via" not in http_llm.headers[0] and proxy.requests() == []

    async def test_the_gateway_honours_the_environment(
        self,
        tinyproxy: StartProxy,
        http_llm: FakeLLM,
        aiohttp_client: Any,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        proxy = await tinyproxy()
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("http_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        gw = await start(aiohttp_client, mesh_text(http_llm.url))
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert sse_events(await resp.read())[-1] == "[DONE]"
        assert "tinyproxy" in http_llm.headers[0].get("Via", "")

    async def test_credentials_are_sent_and_never_logged(
        self, tinyproxy: StartProxy, http_llm: FakeLLM
    ) -> None:
        proxy = await tinyproxy(user="alice")
        with capture_logs() as logs:
            async with HttpClient(proxies=Proxies(http=Proxy.parse(proxy.url))) as client:
                assert await chat(client, http_llm.url, stream=False) == "".join(TOKENS)
        assert SECRET not in repr(logs)
        assert "proxy-authorization" not in {k.lower() for k in http_llm.headers[0]}

    async def test_missing_credentials_are_a_connect_error(
        self, tinyproxy: StartProxy, http_llm: FakeLLM
    ) -> None:
        proxy = await tinyproxy(user="alice")
        bare = Proxy.parse(proxy.url.replace(f"alice:{SECRET}@", ""))
        async with HttpClient(proxies=Proxies(http=bare)) as client:
            with pytest.raises(UpstreamConnectError, match=r"proxy 127\.0\.0\.1:\d+ refused.*407"):
                await chat(client, http_llm.url, stream=False)
        assert http_llm.requests == []

    async def test_a_proxy_that_is_down_is_a_connect_error(self, http_llm: FakeLLM) -> None:
        port = free_port()
        async with HttpClient(proxies=Proxies(http=Proxy("127.0.0.1", port))) as client:
            with pytest.raises(UpstreamConnectError, match=f"through proxy 127.0.0.1:{port}"):
                await chat(client, http_llm.url, stream=True)


class TestHttpsProxy:
    """``https://`` upstreams through ``HTTPS_PROXY``: a CONNECT tunnel, TLS inside it."""

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
    async def test_chat_through_a_tunnel(
        self, tinyproxy: StartProxy, https_llm: tuple[FakeLLM, str], ca: trustme.CA, stream: bool
    ) -> None:
        llm, url = https_llm
        proxy = await tinyproxy(user="alice")
        proxies = Proxies(https=Proxy.parse(proxy.url))
        with capture_logs() as logs:
            async with HttpClient(proxies=proxies, tls=trusting(ca)) as client:
                assert await chat(client, url, stream=stream) == "".join(TOKENS)
        authority = url.removeprefix("https://")
        assert proxy.requests() == [f"CONNECT {authority} HTTP/1.1"]
        assert llm.requests[0]["model"] == "llama3.2:1b"
        assert SECRET not in repr(logs)

    async def test_the_certificate_is_still_checked(
        self, tinyproxy: StartProxy, https_llm: tuple[FakeLLM, str]
    ) -> None:
        """TLS runs end to end: a certificate the client does not trust is refused."""
        llm, url = https_llm
        proxy = await tinyproxy()
        async with HttpClient(proxies=Proxies(https=Proxy.parse(proxy.url))) as client:
            with pytest.raises(UpstreamConnectError, match="certificate"):
                await chat(client, url, stream=False)
        assert llm.requests == []

    async def test_a_refused_tunnel_says_why(
        self, tinyproxy: StartProxy, https_llm: tuple[FakeLLM, str], ca: trustme.CA
    ) -> None:
        _, url = https_llm
        proxy = await tinyproxy(user="alice")
        bare = Proxy.parse(proxy.url.replace(f"alice:{SECRET}@", ""))
        async with HttpClient(proxies=Proxies(https=bare), tls=trusting(ca)) as client:
            with pytest.raises(UpstreamConnectError, match="answered CONNECT with 407"):
                await chat(client, url, stream=True)
