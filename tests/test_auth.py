"""API-key auth: Bearer keys from env or file, 401 in the dialect's shape, health open."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.gateway.auth import ApiKeys, read_key_file
from meshkit.spec import loads

from .test_resilience import CHAT, _instant, fakes, mesh_text, start

__all__ = ["_instant", "fakes"]  # fixtures shared with test_resilience

ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("POST", "/v1/embeddings"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("GET", "/api/tags"),
    ("GET", "/no/such/route"),
]


class TestKeys:
    """Key parsing and comparison."""

    def test_accepts_only_bearer_with_a_known_key(self) -> None:
        keys = ApiKeys(["k1", "k2"])
        assert keys.accepts("Bearer k1") and keys.accepts("bearer  k2 ")
        for bad in (None, "", "k1", "Bearer", "Bearer k3", "Basic k1", "Bearer k1x", "Bearer k"):
            assert not keys.accepts(bad)
        assert not ApiKeys([])
        assert "k1" not in repr(keys)

    def test_key_file(self, tmp_path: Path) -> None:
        path = tmp_path / "keys"
        path.write_text("# ops keys\nk1\n\n  k2  # rotated 2026-01\n")
        assert read_key_file(path) == ("k1", "k2")
        spec = loads(
            mesh_text("http://a:1", gateway={"api_keys": "k0", "api_keys_file": str(path)}), env={}
        )
        assert spec.gateway.api_keys == ("k0", "k1", "k2")

    def test_missing_key_file_is_a_spec_problem(self, tmp_path: Path) -> None:
        from meshkit.errors import SpecError

        with pytest.raises(SpecError) as info:
            loads(mesh_text("http://a:1", gateway={"api_keys_file": str(tmp_path / "no")}), env={})
        assert info.value.problems[0].startswith("gateway.api_keys_file: cannot read")


class TestGatewayAuth:
    """With keys set, every route but health needs one."""

    @pytest.mark.parametrize(("method", "path"), ROUTES)
    async def test_401_in_dialect_shape(
        self, fakes, aiohttp_client, method: str, path: str
    ) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url, gateway={"api_keys": "k1,k2"}))
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}):
            resp = await gw.request(method, path, json=CHAT, headers=headers)
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            body = await resp.json()
            if path.startswith("/api/"):
                assert isinstance(body["error"], str)
            else:
                assert body["error"]["code"] == "invalid_api_key"
        assert fake.requests == []

    async def test_good_key_passes_and_is_not_forwarded(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url, gateway={"api_keys": "k1,k2"}))
        for path in ("/v1/chat/completions", "/api/chat"):
            resp = await gw.post(
                path, json={**CHAT, "stream": False}, headers={"Authorization": "Bearer k2"}
            )
            assert resp.status == 200
        assert (await gw.get("/v1/models", headers={"Authorization": "Bearer k1"})).status == 200
        assert all("Authorization" not in h and "authorization" not in h for h in fake.headers)

    async def test_health_is_open(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url, gateway={"api_keys": "k1"}))
        assert (await gw.get("/healthz")).status == 200
        assert (await gw.get("/readyz")).status == 200

    async def test_official_clients(self, fakes, aiohttp_client) -> None:
        import openai

        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url, gateway={"api_keys": "k1"}))
        good = openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key="k1", max_retries=0)
        bad = openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key="k9", max_retries=0)
        try:
            answer = await good.chat.completions.create(
                model="llama3.2:1b", messages=CHAT["messages"]
            )
            assert answer.choices[0].message.content == "The sky appears blue."
            with pytest.raises(openai.AuthenticationError):
                await bad.chat.completions.create(model="llama3.2:1b", messages=CHAT["messages"])
        finally:
            await good.close()
            await bad.close()

    async def test_env_turns_it_on(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        text = (Path(__file__).parent.parent / "services.yaml").read_text()
        from aiohttp.test_utils import TestServer

        from meshkit import Mesh, build_app

        spec = loads(text, env={"LLM_ENDPOINT": fake.url, "MESHKIT_API_KEYS": "secret-1"})
        gw = await aiohttp_client(TestServer(build_app(Mesh(spec))))
        assert (await gw.post("/api/generate", json={"prompt": "hi"})).status == 401
        resp = await gw.post(
            "/api/generate",
            json={"prompt": "hi", "stream": False},
            headers={"Authorization": "Bearer secret-1"},
        )
        assert resp.status == 200
