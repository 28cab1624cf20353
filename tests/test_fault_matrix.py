"""Every scripted upstream fault, streaming or not, in the OpenAI and Ollama dialects.

Each case states what the client must see: a status (the failure came before any
output) or a 200 whose stream ends with a final error event in the dialect's shape.
After each case no connection is left checked out of the pool and nothing is in flight,
and ``/metrics`` says so: in-flight exactly 0, the one request counted with its status.
Two faults need more than a scripted upstream and have their own tests below: a stale
keep-alive socket (the client sees nothing at all) and a caller that stops reading
(its stream is ended after ``send_timeout``).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from meshkit.testing import FakeLLM

from .test_metrics import scrape, value
from .test_outbound import BIG_TOKENS, StaleRelay, raw_stream_request, read_to_end
from .test_resilience import (
    CHAT,
    _instant,
    fakes,
    free_port,
    mesh_text,
    ndjson,
    settled,
    sse_events,
    start,
    until,
)

__all__ = ["_instant", "fakes"]  # fixtures shared with test_resilience


@attrs.frozen
class Case:
    """One fault and what the client sees (``stream``/``whole``: status, or "event")."""

    name: str
    fault: dict[str, Any]
    stream: int | str
    whole: int
    llm: dict[str, Any] = attrs.field(factory=dict)


OK = 200
EVENT = "event"  # 200, then a final error event
CASES = [
    Case("ok", {}, OK, OK),
    Case("slow_trickle", {"delay": 0.01}, OK, OK),
    Case("429_retry_after", {"status": 429, "retry_after": 3}, 429, 429),
    Case("429", {"status": 429}, 429, 429),
    Case("500", {"status": 500}, 502, 502),
    Case("503_retry_after", {"status": 503, "retry_after": 2}, 502, 502),
    Case("503", {"status": 503}, 502, 502),
    Case("503_once", {"status": 503, "fail_times": 1}, OK, OK),
    Case("429_once", {"status": 429, "fail_times": 1, "retry_after": 1}, OK, OK),
    Case("first_token_late", {"first_delay": 30}, 504, 504, {"timeout": 0.3}),
    Case("stall_mid_stream", {"stall_after": 2}, EVENT, 504, {"timeout": 0.3, "idle_timeout": 0.3}),
    Case("drop_mid_stream", {"drop_after": 2}, EVENT, 502),
    Case("drop_before_first_token", {"drop_after": 0}, 502, 502),
    Case("malformed_sse", {"malformed_after": 2}, EVENT, 502),
    Case("error_event", {"error_after": 2}, EVENT, 502),
    Case("refused", {}, 502, 502),
]
PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat"}


@pytest.mark.parametrize("upstream_api", ["openai", "ollama"])
@pytest.mark.parametrize("dialect", ["openai", "ollama"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_fault(
    fakes, aiohttp_client, case: Case, stream: bool, dialect: str, upstream_api: str
) -> None:
    fake: FakeLLM = await fakes(**case.fault)
    url = f"http://127.0.0.1:{free_port()}" if case.name == "refused" else fake.url
    gw = await start(aiohttp_client, mesh_text(url, api=upstream_api, **case.llm))
    resp = await gw.post(PATHS[dialect], json={**CHAT, "stream": stream})
    expected = case.stream if stream else case.whole
    raw = await resp.read()
    if expected == EVENT:
        assert resp.status == 200
        last = sse_events(raw)[-1] if dialect == "openai" else ndjson(raw)[-1]
        assert_error_shape(last, dialect)
    else:
        assert resp.status == expected, raw
        if expected == OK:
            if stream and dialect == "openai":
                assert sse_events(raw)[-1] == "[DONE]"
            elif stream:
                assert ndjson(raw)[-1]["done"] is True
        else:
            assert_error_shape(json.loads(raw), dialect)
            if case.fault.get("retry_after") and expected == 429:
                assert resp.headers["Retry-After"] == str(case.fault["retry_after"])
    fake.release()
    await settled(gw)
    samples = await scrape(gw)
    assert value(samples, "meshkit_requests_in_flight") == 0
    assert value(samples, "meshkit_requests_total", code=str(resp.status)) == 1
    await until(lambda: fake.in_flight == 0)  # the upstream saw its call end too


@pytest.mark.parametrize("upstream_api", ["openai", "ollama"])
@pytest.mark.parametrize("dialect", ["openai", "ollama"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_stale_socket(
    fakes, aiohttp_client, stream: bool, dialect: str, upstream_api: str
) -> None:
    """Fault: each idle connection is closed as the next request is written. Seen: none."""
    fake: FakeLLM = await fakes()
    async with StaleRelay(fake.url) as relay:
        gw = await start(aiohttp_client, mesh_text(relay.url, api=upstream_api, retries=0))
        for _ in range(3):
            resp = await gw.post(PATHS[dialect], json={**CHAT, "stream": stream})
            raw = await resp.read()
            assert resp.status == OK, raw
            if stream and dialect == "openai":
                assert sse_events(raw)[-1] == "[DONE]"
            elif stream:
                assert ndjson(raw)[-1]["done"] is True
            await settled(gw)
        assert relay.dropped == 2 and len(fake.requests) == 3
    samples = await scrape(gw)  # one attempt each, none failed; nothing in flight
    assert value(samples, "meshkit_upstream_requests_total", outcome="ok") == 3
    assert value(samples, "meshkit_upstream_requests_total") == 3
    assert value(samples, "meshkit_requests_in_flight") == 0


@pytest.mark.parametrize("upstream_api", ["openai", "ollama"])
@pytest.mark.parametrize("dialect", ["openai", "ollama"])
async def test_stalled_caller(fakes, aiohttp_client, dialect: str, upstream_api: str) -> None:
    """Fault: the caller stops reading. Seen: its stream ends after ``send_timeout``."""
    fake: FakeLLM = await fakes(tokens=BIG_TOKENS)
    text = mesh_text(fake.url, api=upstream_api, gateway={"send_timeout": 0.3})
    gw = await start(aiohttp_client, text)
    sock = await raw_stream_request(gw.server.host, gw.server.port, PATHS[dialect])
    try:
        await until(fake.cancelled.is_set, within=30)
        await settled(gw)
        raw, _ = await read_to_end(sock, within=30)
    finally:
        sock.close()
    assert raw.startswith(b"HTTP/1.1 200") and not raw.endswith(b"\r\n0\r\n\r\n")
    samples = await scrape(gw)  # counted as a caller that left, and nothing in flight
    assert value(samples, "meshkit_client_disconnects_total") == 1
    assert value(samples, "meshkit_requests_in_flight") == 0


def assert_error_shape(body: Any, dialect: str) -> None:
    """OpenAI: ``{"error": {"message", "type", "code", ...}}``; Ollama: ``{"error": str}``."""
    assert isinstance(body, dict), body
    if dialect == "openai":
        err = body["error"]
        assert isinstance(err["message"], str) and err["message"]
        assert isinstance(err["code"], str) and isinstance(err["type"], str)
    else:
        assert isinstance(body["error"], str) and body["error"]
