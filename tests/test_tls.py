"""``https`` upstreams: meshkit's own client speaks TLS and verifies the certificate."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
from aiohttp import web

from meshkit import RemoteLLM, ServiceOrchestrator
from meshkit.client.http import HttpClient
from meshkit.errors import UpstreamConnectError
from meshkit.protocol.types import ChatRequest, Message
from meshkit.testing import FakeLLM

TOKENS = ["over", " TLS", " too"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def https_llm(ca: trustme.CA) -> AsyncIterator[tuple[FakeLLM, str]]:
    """A FakeLLM behind TLS with a certificate for ``localhost`` from ``ca``."""
    llm = FakeLLM(tokens=TOKENS)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    runner = web.AppRunner(llm.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield llm, f"https://localhost:{port}"
    finally:
        await runner.cleanup()


def chat(stream: bool) -> ChatRequest:
    return ChatRequest(messages=(Message("user", "hi"),), stream=stream)


class TestHttps:
    @pytest.mark.parametrize("stream", [True, False])
    async def test_chat_over_tls_with_a_trusted_ca(self, https_llm, ca, stream: bool) -> None:
        llm, url = https_llm
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        node = RemoteLLM("llm", endpoint=url, model="llama3.2:1b", health_interval=0)
        async with HttpClient(tls=client_ctx) as client:
            mesh = ServiceOrchestrator().add(node)
            await mesh.open(client)
            try:
                result = await mesh.run(chat(stream))
                if stream:
                    text = "".join([c.text async for c in result])
                else:
                    text = result.text
            finally:
                await mesh.close()
        assert text == "".join(TOKENS)
        assert llm.requests[0]["model"] == "llama3.2:1b"

    async def test_an_untrusted_certificate_is_refused(self, https_llm) -> None:
        llm, url = https_llm
        node = RemoteLLM("llm", endpoint=url, model="llama3.2:1b", health_interval=0)
        async with HttpClient() as client:  # the system's CAs do not know the test CA
            mesh = ServiceOrchestrator().add(node)
            await mesh.open(client)
            try:
                with pytest.raises(UpstreamConnectError, match="cannot connect to localhost"):
                    await mesh.run(chat(False))
            finally:
                await mesh.close()
        assert llm.requests == []

    async def test_probe_over_tls(self, https_llm, ca) -> None:
        _, url = https_llm
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with HttpClient(tls=client_ctx) as client:
            assert await client.probe(url + "/v1/models", within=5, headers={}) is None
        async with HttpClient() as client:
            why = await client.probe(url + "/v1/models", within=5, headers={})
        assert why is not None and "cannot connect" in why

    async def test_ssl_cert_file_names_a_private_ca(
        self, https_llm, ca, tmp_path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A deployment trusts its own CA with ``SSL_CERT_FILE``, no code needed."""
        _, url = https_llm
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        async with HttpClient() as client:
            assert await client.probe(url + "/v1/models", within=5, headers={}) is None
