"""Replicas, breakers, deadlines, fallbacks, admission, shutdown (retries: test_retry)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stamina
import yaml
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from meshkit import Mesh, build_app
from meshkit.client import (
    DEADLINE_HEADER,
    ReplicaSet,
    deadline_from,
    header_value,
)
from meshkit.errors import UpstreamConnectError, UpstreamError
from meshkit.gateway.app import ADMISSION, MESH
from meshkit.nodes.llm import RemoteLLM
from meshkit.spec import loads
from meshkit.testing import FakeLLM

from .conftest import until

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
Client = TestClient[Any, Any]
AioClient = Callable[..., Awaitable[Client]]


# -- helpers shared by the resilience test modules ---------------------------------------


def mesh_text(
    endpoints: str | list[str],
    *,
    gateway: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    **llm: Any,
) -> str:
    """A services file: one LLM over ``endpoints`` behind both dialects."""
    service = {
        "type": "llm",
        "endpoint": endpoints,
        "model": "llama3.2:1b",
        "health_interval": 0,
        **llm,
    }
    return yaml.safe_dump(
        {
            "services": {"llm": service, **(extra or {})},
            "pipelines": {"chat": {"nodes": ["llm"]}},
            "gateway": {
                "routes": [
                    {"dialect": "openai", "pipeline": "chat"},
                    {"dialect": "ollama", "pipeline": "chat"},
                ],
                **(gateway or {}),
            },
        }
    )


async def start(aiohttp_client: AioClient, text: str) -> Client:
    """A test client for a gateway built from ``text``."""
    server = TestServer(build_app(Mesh(loads(text, env={}))), handler_cancellation=True)
    return await aiohttp_client(server)


def llm_of(gw: Client, name: str = "llm") -> RemoteLLM:
    service = gw.server.app[MESH].services[name]
    assert isinstance(service, RemoteLLM)
    return service


async def settled(gw: Client) -> None:
    """Wait until nothing is in flight and no connection is checked out of the pool."""
    app = gw.server.app
    admission, mesh = app[ADMISSION], app[MESH]
    llms = [s for s in mesh.services.values() if isinstance(s, RemoteLLM)]
    await until(
        lambda: (
            admission.in_flight == 0
            and mesh.client.connections_in_use == 0
            and all(r.in_flight == 0 for s in llms for r in s.replicas)
        ),
        within=5.0,
    )


def sse_events(raw: bytes) -> list[Any]:
    """The JSON payloads of an SSE body (``[DONE]`` as the string)."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def ndjson(raw: bytes) -> list[Any]:
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Attempts allowed in stamina's test mode: more than any test configures, so that
#: ``cap`` leaves each service's own ``retries`` in force.
MAX_ATTEMPTS = 100


@pytest.fixture(autouse=True)
def _instant() -> Iterator[None]:
    """Retries wait nothing (stamina's test mode); the tests where waits matter say so."""
    with stamina.set_testing(True, attempts=MAX_ATTEMPTS, cap=True):
        yield


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[..., Awaitable[FakeLLM]]]:
    """Start fake LLMs on free ports; all stop at the end of the test."""
    stacks: list[Any] = []

    async def make(**kwargs: Any) -> FakeLLM:
        fake = FakeLLM(**kwargs)
        cm = fake.serve()
        await cm.__aenter__()
        stacks.append(cm)
        return fake

    yield make
    for cm in reversed(stacks):
        await cm.__aexit__(None, None, None)


# -- replicas --------------------------------------------------------------------------------


class TestReplicas:
    """Traffic spreads over healthy replicas; a dead one costs no request."""

    async def test_concurrent_streams_spread(self, fakes, aiohttp_client) -> None:
        a = await fakes(hold_last=True)
        b = await fakes(hold_last=True)
        gw = await start(aiohttp_client, mesh_text([a.url, b.url]))
        posts = [
            asyncio.create_task(gw.post("/v1/chat/completions", json={**CHAT, "stream": True}))
            for _ in range(6)
        ]
        await until(lambda: len(a.requests) + len(b.requests) == 6)
        assert (len(a.requests), len(b.requests)) == (3, 3)
        a.release()
        b.release()
        for resp in await asyncio.gather(*posts):
            assert sse_events(await resp.read())[-1] == "[DONE]"
        await settled(gw)

    async def test_round_robin(self, fakes, aiohttp_client) -> None:
        a, b = await fakes(), await fakes()
        gw = await start(aiohttp_client, mesh_text([a.url, b.url], balancer="round_robin"))
        for _ in range(4):
            assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 200
        assert (len(a.requests), len(b.requests)) == (2, 2)

    async def test_dead_replica_costs_nothing(self, fakes, aiohttp_client) -> None:
        live = await fakes()
        dead = f"http://127.0.0.1:{free_port()}"
        gw = await start(aiohttp_client, mesh_text([dead, live.url]))
        for stream in (True, False, True, False):
            resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            assert resp.status == 200
        assert len(live.requests) == 4
        replica = llm_of(gw).replicas.replicas[0]
        assert replica.served == 1  # then out for its cool-down
        await settled(gw)

    async def test_replica_dying_before_first_byte_is_retried(self, fakes, aiohttp_client) -> None:
        """The request was sent, the replica died before answering: another answers."""
        dying = FakeLLM(first_delay=30)
        cm = dying.serve()
        await cm.__aenter__()
        live = await fakes()
        gw = await start(aiohttp_client, mesh_text([dying.url, live.url], balancer="round_robin"))
        post = asyncio.create_task(gw.post("/v1/chat/completions", json={**CHAT, "stream": True}))
        await until(lambda: len(dying.requests) == 1)
        dying.crash()
        resp = await post
        await cm.__aexit__(None, None, None)
        assert resp.status == 200
        assert sse_events(await resp.read())[-1] == "[DONE]"
        assert len(live.requests) == 1
        await settled(gw)

    async def test_health_probe_takes_out_and_puts_back(self, fakes, aiohttp_client) -> None:
        a = FakeLLM()
        cm = a.serve()
        await cm.__aenter__()
        b = await fakes()
        gw = await start(aiohttp_client, mesh_text([a.url, b.url], health_interval=0.05))
        ra = llm_of(gw).replicas.replicas[0]
        port = int(a.url.rsplit(":", 1)[1])
        await cm.__aexit__(None, None, None)
        await until(lambda: ra.unreachable, within=3)
        for _ in range(3):
            assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 200
        assert len(b.requests) == 3 and ra.served == 0
        back = FakeLLM()
        async with back.serve(port=port):
            await until(lambda: not ra.unreachable, within=3)
            for _ in range(4):
                assert (await gw.post("/v1/chat/completions", json=CHAT)).status == 200
            assert len(back.requests) == 2
        await settled(gw)


class TestBreaker:
    """The per-replica state machine, on a fake clock."""

    def make(self) -> tuple[ReplicaSet, list[float]]:
        now = [100.0]
        return ReplicaSet(
            "llm",
            ["http://a", "http://b"],
            threshold=3,
            cooldown=1.0,
            max_cooldown=4.0,
            clock=lambda: now[0],
        ), now

    def test_opens_after_threshold_and_half_opens(self) -> None:
        rs, now = self.make()
        a, b = rs.replicas
        for _ in range(2):
            rs.failed(a, UpstreamError("boom", upstream_status=500))
        assert a.state(now[0]) == "closed"
        rs.failed(a, UpstreamError("boom", upstream_status=500))
        assert a.state(now[0]) == "open"
        assert {rs.pick().url for _ in range(4)} == {"http://b"}  # type: ignore[union-attr]
        now[0] += 1.0
        assert a.state(now[0]) == "half_open"
        rs.acquire(a)  # the one trial
        assert not a.available(now[0])
        rs.release(a)
        rs.failed(a, UpstreamError("boom", upstream_status=500))
        assert a.state(now[0]) == "open"
        now[0] += 1.9
        assert a.state(now[0]) == "open"  # the cool-down doubled
        now[0] += 0.1
        rs.succeeded(a)
        assert a.state(now[0]) == "closed"
        assert b.state(now[0]) == "closed"

    def test_connect_error_opens_at_once_and_caps(self) -> None:
        rs, now = self.make()
        a, _ = rs.replicas
        for _ in range(5):
            rs.failed(a, UpstreamConnectError("refused"))
            assert a.open_until - now[0] <= 4.0
        assert rs.retry_in() == 0.0  # `b` is fine

    def test_least_inflight(self) -> None:
        rs, _ = self.make()
        a, b = rs.replicas
        rs.acquire(a)
        assert rs.pick() is b
        assert rs.pick() is b
        rs.acquire(b)
        rs.acquire(b)
        assert rs.pick() is a

    def test_probe_marks_out_and_back(self) -> None:
        rs, now = self.make()
        a, b = rs.replicas
        rs.probed(a, "cannot connect")
        assert rs.pick() is b and rs.pick() is b
        rs.probed(a, None)
        assert a.state(now[0]) == "closed"

    def test_all_out_is_circuit_open(self) -> None:
        rs, _ = self.make()
        for r in rs.replicas:
            rs.failed(r, UpstreamConnectError("refused"))
        assert rs.pick() is None
        assert 0 < rs.retry_in() <= 1.0


# -- deadlines and timeouts ----------------------------------------------------------------


class TestDeadlines:
    """The caller's budget shrinks across hops and bounds the whole call."""

    def test_header_round_trip(self) -> None:
        assert deadline_from({DEADLINE_HEADER: "1500"}, now=10.0) == 11.5
        assert deadline_from({DEADLINE_HEADER: "soon"}) is None
        assert deadline_from({}) is None
        assert header_value(11.5, now=10.0) == "1500"
        assert header_value(9.0, now=10.0) == "0"

    async def test_passed_downstream_smaller(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url))
        resp = await gw.post("/v1/chat/completions", json=CHAT, headers={DEADLINE_HEADER: "5000"})
        assert resp.status == 200
        sent = int(fake.headers[0][DEADLINE_HEADER])
        assert 0 < sent <= 5000

    async def test_short_deadline_is_504_promptly(self, fakes, aiohttp_client) -> None:
        fake = await fakes(first_delay=30)
        gw = await start(aiohttp_client, mesh_text(fake.url, timeout=60))
        async with asyncio.timeout(5):
            resp = await gw.post(
                "/api/chat", json={**CHAT, "stream": True}, headers={DEADLINE_HEADER: "200"}
            )
        assert resp.status == 504
        assert "error" in await resp.json()
        await fake.cancelled.wait()
        await settled(gw)

    async def test_deadline_bounds_a_running_stream(self, fakes, aiohttp_client) -> None:
        fake = await fakes(stall_after=2)
        gw = await start(aiohttp_client, mesh_text(fake.url, idle_timeout=60))
        resp = await gw.post(
            "/v1/chat/completions", json={**CHAT, "stream": True}, headers={DEADLINE_HEADER: "300"}
        )
        events = sse_events(await resp.read())
        assert resp.status == 200
        assert "error" in events[-1]
        await settled(gw)

    async def test_idle_gap_ends_stream_with_error(self, fakes, aiohttp_client) -> None:
        fake = await fakes(stall_after=2)
        gw = await start(aiohttp_client, mesh_text(fake.url, idle_timeout=0.2))
        resp = await gw.post("/api/chat", json={**CHAT, "stream": True})
        lines = ndjson(await resp.read())
        assert [x["message"]["content"] for x in lines[:-1]] == ["The", " sky"]
        assert "stalled" in lines[-1]["error"]
        await fake.cancelled.wait()
        await settled(gw)

    async def test_slow_first_token_on_every_replica_is_one_budget(
        self, fakes, aiohttp_client
    ) -> None:
        """LLM_TIMEOUT covers the whole call, retries included."""
        a = await fakes(first_delay=30)
        b = await fakes(first_delay=30)
        gw = await start(aiohttp_client, mesh_text([a.url, b.url], timeout=0.3))
        async with asyncio.timeout(3):
            resp = await gw.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 504
        assert len(a.requests) + len(b.requests) == 1


# -- fallbacks --------------------------------------------------------------------------------


class TestFallback:
    """A service may name another to ask when it fails before streaming."""

    async def test_used_when_primary_fails(self, fakes, aiohttp_client) -> None:
        backup = await fakes(tokens=["from", " backup"], model_names=("big",))
        dead = f"http://127.0.0.1:{free_port()}"
        text = mesh_text(
            dead,
            fallback="backup",
            extra={
                "backup": {
                    "type": "llm",
                    "endpoint": backup.url,
                    "model": "big",
                    "health_interval": 0,
                }
            },
        )
        gw = await start(aiohttp_client, text)
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True})
        events = sse_events(await resp.read())
        text_out = "".join(
            e["choices"][0]["delta"].get("content", "")
            for e in events
            if isinstance(e, dict) and e.get("choices")
        )
        assert text_out == "from backup"
        assert backup.requests[0]["model"] == "big"
        await settled(gw)

    async def test_not_used_for_a_rejected_request(self, fakes, aiohttp_client) -> None:
        primary = await fakes()
        backup = await fakes()
        text = mesh_text(
            primary.url,
            fallback="backup",
            extra={"backup": {"type": "llm", "endpoint": backup.url, "health_interval": 0}},
        )
        gw = await start(aiohttp_client, text)
        resp = await gw.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        assert resp.status == 404
        assert backup.requests == []

    def test_spec_checks_names_and_loops(self) -> None:
        from meshkit.errors import SpecError

        with pytest.raises(SpecError) as info:
            loads(mesh_text("http://a:1", fallback="ghost"), env={})
        assert "services.llm.fallback: unknown service 'ghost'" in info.value.problems
        loop = mesh_text(
            "http://a:1",
            fallback="b",
            extra={"b": {"type": "llm", "endpoint": "http://b:1", "fallback": "llm"}},
        )
        with pytest.raises(SpecError) as info:
            loads(loop, env={})
        assert any("fallbacks loop" in p for p in info.value.problems)


# -- hop hygiene ------------------------------------------------------------------------------


class TestHopHygiene:
    """Nothing of the caller's connection or credentials reaches the upstream."""

    async def test_headers_not_forwarded(self, fakes, aiohttp_client) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url, api_key="sk-upstream-secret"))
        resp = await gw.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={
                "Authorization": "Bearer client-key",
                "Connection": "keep-alive, X-Private",
                "X-Private": "1",
                "TE": "trailers",
                "Proxy-Authorization": "Basic eA==",
                "Cookie": "session=1",
                "Upgrade": "h2c",
                "X-Forwarded-Host": "evil.example",
            },
        )
        assert resp.status == 200
        seen = {k.lower(): v for k, v in fake.headers[0].items()}
        assert seen["authorization"] == "Bearer sk-upstream-secret"
        for name in (
            "x-private",
            "te",
            "proxy-authorization",
            "cookie",
            "upgrade",
            "x-forwarded-host",
        ):
            assert name not in seen

    async def test_upstream_key_never_in_errors(self, aiohttp_client) -> None:
        secret = "sk-upstream-secret-123"

        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"error": {"message": f"bad key {secret}"}}, status=401)

        app = web.Application()
        app.router.add_post("/v1/chat/completions", echo)
        upstream = TestServer(app)
        await upstream.start_server()
        try:
            url = str(upstream.make_url("")).rstrip("/")
            gw = await start(aiohttp_client, mesh_text(url, api_key=secret))
            resp = await gw.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 401
            assert secret not in await resp.text()
        finally:
            await upstream.close()

    async def test_request_cannot_choose_upstream(self, fakes, aiohttp_client) -> None:
        fake = await fakes(model_names=("http://evil.example:1/v1",))
        gw = await start(aiohttp_client, mesh_text(fake.url))
        resp = await gw.post(
            "/v1/chat/completions", json={**CHAT, "model": "http://evil.example:1/v1"}
        )
        assert resp.status == 200
        assert len(fake.requests) == 1  # the model name went to our upstream, as data


# -- admission and body size ---------------------------------------------------------------


class TestAdmission:
    """MESHKIT_MAX_INFLIGHT bounds concurrent requests; big bodies get 413."""

    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
    async def test_over_the_bound_is_429(self, fakes, aiohttp_client, path: str) -> None:
        fake = await fakes(hold_last=True)
        gw = await start(aiohttp_client, mesh_text(fake.url, gateway={"max_inflight": 2}))
        held = [asyncio.create_task(gw.post(path, json={**CHAT, "stream": True})) for _ in range(2)]
        await until(lambda: len(fake.requests) == 2)
        resp = await gw.post(path, json={**CHAT, "stream": True})
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        body = await resp.json()
        if path.startswith("/api/"):
            assert isinstance(body["error"], str)
        else:
            assert body["error"]["code"] == "rate_limit_exceeded"
        assert (await gw.get("/healthz")).status == 200  # health is never refused
        fake.release()
        for r in await asyncio.gather(*held):
            await r.read()
        await settled(gw)
        assert (await gw.post(path, json={**CHAT, "stream": False})).status == 200

    async def test_env_wires_the_shipped_file(self) -> None:
        text = (Path(__file__).parent.parent / "services.yaml").read_text()
        spec = loads(
            text,
            env={
                "LLM_ENDPOINT": "http://a:1, http://b:2",
                "MESHKIT_MAX_INFLIGHT": "7",
                "MESHKIT_API_KEYS": "k1,k2",
                "LLM_TIMEOUT": "3",
            },
        )
        assert spec.services["llm"].endpoints == ("http://a:1", "http://b:2")
        assert spec.services["llm"].timeout == 3.0
        assert spec.gateway.max_inflight == 7
        assert spec.gateway.api_keys == ("k1", "k2")
        assert "k1" not in repr(spec.gateway)

    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/generate"])
    async def test_big_body_is_413(self, fakes, aiohttp_client, path: str) -> None:
        fake = await fakes()
        gw = await start(aiohttp_client, mesh_text(fake.url, gateway={"max_body": "64KiB"}))
        body = json.dumps({**CHAT, "prompt": "x" * 100_000})
        resp = await gw.post(path, data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 413
        err = (await resp.json())["error"]
        message = err if isinstance(err, str) else err["message"]
        assert "64 KiB" in message
        await settled(gw)


# -- graceful shutdown ------------------------------------------------------------------------


class TestShutdown:
    """On shutdown, streams finish within the grace period or end with a final error."""

    async def serve(self, text: str) -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(
            build_app(Mesh(loads(text, env={}))), handler_cancellation=True, shutdown_timeout=2
        )
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, f"http://127.0.0.1:{port}"

    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
    async def test_stream_cut_at_grace_end_gets_final_error(self, fakes, path: str) -> None:
        fake = await fakes(hold_last=True)
        runner, url = await self.serve(mesh_text(fake.url, gateway={"shutdown_grace": 0.2}))
        async with ClientSession() as session:
            resp = await session.post(url + path, json={**CHAT, "stream": True})
            assert resp.status == 200
            await until(lambda: len(fake.sent) == 1 and len(fake.sent[0]) == 4)
            await runner.cleanup()
            raw = await resp.read()
        last = (sse_events(raw) if path.startswith("/v1") else ndjson(raw))[-1]
        err = last["error"]
        assert "shutting down" in (err if isinstance(err, str) else err["message"])

    async def test_stream_finishing_in_grace_is_whole(self, fakes) -> None:
        fake = await fakes(hold_last=True)
        runner, url = await self.serve(mesh_text(fake.url, gateway={"shutdown_grace": 10}))
        async with ClientSession() as session:
            resp = await session.post(url + "/v1/chat/completions", json={**CHAT, "stream": True})
            await until(lambda: len(fake.sent) == 1 and len(fake.sent[0]) == 4)
            closing = asyncio.create_task(runner.cleanup())
            await asyncio.sleep(0)
            fake.release()
            raw = await resp.read()
            await closing
        assert sse_events(raw)[-1] == "[DONE]"

    async def test_sigterm_exits_zero_after_draining(self, fakes, tmp_path: Path) -> None:
        fake = await fakes(hold_last=True)
        port = free_port()
        config = tmp_path / "services.yaml"
        config.write_text(mesh_text(fake.url, gateway={"shutdown_grace": 0.3, "port": port}))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshkit",
            "serve",
            str(config),
            "--host",
            "127.0.0.1",
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "MESHKIT_LOG_LEVEL": "warning"},
        )
        try:
            assert proc.stderr is not None
            async with asyncio.timeout(30):
                while b"ready on" not in await proc.stderr.readline():
                    pass
            async with ClientSession() as session:
                resp = await session.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions", json={**CHAT, "stream": True}
                )
                await until(lambda: len(fake.sent) == 1 and len(fake.sent[0]) == 4, 10)
                proc.send_signal(signal.SIGTERM)
                raw = await resp.read()
            assert "shutting down" in sse_events(raw)[-1]["error"]["message"]
            async with asyncio.timeout(15):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
