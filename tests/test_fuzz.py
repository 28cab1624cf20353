"""Fuzzed input on every route: always a 4xx in the dialect's shape (or a real answer),
never a 500 or a hang, and the gateway keeps serving.

The gateway and a fake LLM run in a thread with their own event loop, so hypothesis
drives plain blocking HTTP calls (``http.client``) at them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit import Mesh, build_app
from meshkit.spec import loads
from meshkit.testing import FakeLLM

from .test_resilience import mesh_text

POSTS = ["/v1/chat/completions", "/v1/embeddings", "/api/generate", "/api/chat"]
GETS = ["/v1/models", "/api/tags", "/healthz", "/readyz"]
MAX_BODY = 256 * 1024


class LiveGateway:
    """A gateway over a fake LLM, served from a background thread."""

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-gateway", daemon=True)

    def __enter__(self) -> LiveGateway:
        self._thread.start()
        assert self._ready.wait(10), "gateway did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        fake = FakeLLM()
        async with fake.serve():
            text = mesh_text(fake.url, gateway={"max_body": MAX_BODY})
            runner = web.AppRunner(
                build_app(Mesh(loads(text, env={}))), handler_cancellation=True, access_log=None
            )
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(
                method,
                path,
                body=body,
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveGateway]:
    with LiveGateway() as gateway:
        yield gateway


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
FIELDS = [
    "model",
    "messages",
    "prompt",
    "stream",
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "n",
    "options",
    "format",
    "system",
    "input",
    "stream_options",
    "max_completion_tokens",
]
VALID: dict[str, Any] = {
    "model": "llama3.2:1b",
    "prompt": "hi",
    "input": "hi",
    "messages": [{"role": "user", "content": "hi"}],
}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A near-valid body: fields dropped, retyped or added at random."""
    body = dict(VALID)
    for key in draw(st.lists(st.sampled_from(sorted(body)), max_size=3)):
        body.pop(key, None)
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        body[key] = draw(json_values)
    if draw(st.booleans()):
        body["messages"] = draw(
            st.lists(
                st.fixed_dictionaries({"role": json_values, "content": json_values}), max_size=3
            )
        )
    return json.dumps(body).encode()


bodies = st.one_of(
    st.binary(max_size=300),  # includes invalid UTF-8 and non-JSON
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated(),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.text(max_size=200).map(lambda t: t.encode("utf-16")),
)


def check_shape(path: str, status: int, raw: bytes) -> None:
    assert status < 500, (path, status, raw[:300])
    if status < 400:
        return
    body = json.loads(raw)
    if path.startswith("/api/"):
        assert isinstance(body["error"], str) and body["error"]
    else:
        assert isinstance(body["error"]["message"], str) and body["error"]["code"]


class TestFuzz:
    """Random and malformed requests against a running gateway."""

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(path=st.sampled_from(POSTS), body=bodies)
    def test_posts(self, live: LiveGateway, path: str, body: bytes) -> None:
        status, raw = live.call("POST", path, body)
        check_shape(path, status, raw)

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        path=st.sampled_from(GETS + POSTS),
        method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
        body=st.binary(max_size=50),
    )
    def test_methods(self, live: LiveGateway, path: str, method: str, body: bytes) -> None:
        status, raw = live.call(method, path, body)
        check_shape(path, status, raw)

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        path=st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#%"),
            max_size=40,
        )
    )
    def test_unknown_paths(self, live: LiveGateway, path: str) -> None:
        status, raw = live.call("POST", "/" + path.lstrip("/"), b"{}")
        check_shape("/" + path.lstrip("/"), status, raw)

    @pytest.mark.parametrize("path", POSTS)
    def test_huge_strings(self, live: LiveGateway, path: str) -> None:
        near = json.dumps({**VALID, "prompt": "x" * (MAX_BODY - 1000)}).encode()
        status, raw = live.call("POST", path, near)
        check_shape(path, status, raw)
        over = json.dumps({**VALID, "prompt": "x" * (MAX_BODY * 4)}).encode()
        status, raw = live.call("POST", path, over)
        # This mesh has no embedding service: that route says so before reading.
        assert status == (404 if path == "/v1/embeddings" else 413)
        check_shape(path, status, raw)

    @pytest.mark.parametrize("path", POSTS)
    def test_deep_nesting(self, live: LiveGateway, path: str) -> None:
        for depth in (100, 10_000, 100_000):
            body = json.dumps(VALID)[:-1].encode() + b', "x": ' + b"[" * depth + b"]" * depth + b"}"
            if len(body) > MAX_BODY:
                continue
            status, raw = live.call("POST", path, body)
            check_shape(path, status, raw)

    def test_still_serving(self, live: LiveGateway) -> None:
        status, raw = live.call("POST", "/v1/chat/completions", json.dumps(VALID).encode())
        assert status == 200, raw
        assert json.loads(raw)["choices"][0]["message"]["content"] == "The sky appears blue."
        status, raw = live.call(
            "POST", "/api/generate", json.dumps({"prompt": "hi", "stream": True}).encode()
        )
        assert status == 200
        assert json.loads(raw.splitlines()[-1])["done"] is True
