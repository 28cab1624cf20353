"""One structured access line per request; ``MESHKIT_LOG_FORMAT=json``; ``X-Request-ID``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from meshkit.testing import FakeLLM

from .processes import ROOT, Meshkit
from .test_resilience import CHAT, mesh_text, start

GATEWAY_KEY = "gw-key-SECRET-4711"
UPSTREAM_KEY = "up-key-SECRET-0815"
PROMPT = "PROMPT-SECRET-what-is-in-the-vault"
FIELDS = {
    "event",
    "level",
    "timestamp",
    "request_id",
    "pipeline",
    "dialect",
    "route",
    "model",
    "status",
    "stream",
    "ttft_ms",
    "duration_ms",
    "tokens_in",
    "tokens_out",
    "error",
    "trace_id",
    "disconnected",
}


class TestJsonLines:
    """``meshkit serve`` with ``MESHKIT_LOG_FORMAT=json``: every stderr line is JSON."""

    async def test_access_lines_parse_carry_fields_and_hide_secrets(
        self, fake: FakeLLM, tmp_path: Path
    ) -> None:
        text = mesh_text(fake.url, api_key=UPSTREAM_KEY, gateway={"api_keys": [GATEWAY_KEY]})
        auth = {"Authorization": f"Bearer {GATEWAY_KEY}"}
        body = {**CHAT, "messages": [{"role": "user", "content": PROMPT}]}
        async with Meshkit(text, tmp_path, {"MESHKIT_LOG_FORMAT": "json"}) as gw:
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    gw.url + "/v1/chat/completions",
                    json={**body, "stream": True},
                    headers={**auth, "X-Request-ID": "req-stream-1"},
                ) as resp:
                    assert resp.headers["X-Request-ID"] == "req-stream-1"
                    await resp.read()
                async with session.post(
                    gw.url + "/api/chat", json={**body, "stream": False}, headers=auth
                ) as resp:
                    generated = resp.headers["X-Request-ID"]
                    await resp.read()
                async with session.post(
                    gw.url + "/v1/chat/completions",
                    json={**body, "model": "ghost"},
                    headers={**auth, "X-Request-ID": "req-ghost"},
                ) as resp:
                    assert resp.status == 404
                async with session.post(
                    gw.url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": "Bearer wrong", "X-Request-ID": "req-401"},
                ) as resp:
                    assert resp.status == 401 and resp.headers["X-Request-ID"] == "req-401"
            await gw.stop()
        assert fake.headers[0]["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # it was sent
        lines = [line for line in gw.lines if line.strip()]
        parsed = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all(isinstance(obj, dict) for obj in parsed)
        for line in lines:
            assert GATEWAY_KEY not in line and UPSTREAM_KEY not in line
            assert PROMPT not in line and "appears" not in line
        access = {obj["request_id"]: obj for obj in parsed if obj["event"] == "meshkit.request"}
        assert set(access) == {"req-stream-1", generated, "req-ghost", "req-401"}
        for obj in access.values():
            assert FIELDS <= set(obj), obj
        stream = access["req-stream-1"]
        assert stream["status"] == 200 and stream["stream"] is True
        assert (stream["pipeline"], stream["dialect"]) == ("chat", "openai")
        assert stream["model"] == "llama3.2:1b"
        assert stream["route"] == "/v1/chat/completions"
        assert (stream["tokens_in"], stream["tokens_out"]) == (3, 5)
        assert 0 < stream["ttft_ms"] <= stream["duration_ms"]
        whole = access[generated]
        assert whole["dialect"] == "ollama" and whole["status"] == 200
        assert whole["ttft_ms"] is None and whole["tokens_out"] == 5
        assert access["req-ghost"]["status"] == 404
        assert access["req-ghost"]["error"] == "model_not_found"
        assert access["req-401"]["status"] == 401
        assert access["req-401"]["error"] == "invalid_api_key"
        assert access["req-401"]["model"] is None

    def test_an_unknown_format_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "services.yaml"
        path.write_text(mesh_text("http://127.0.0.1:9"))
        done = subprocess.run(
            [sys.executable, "-m", "meshkit", "serve", str(path)],
            env={"PYTHONPATH": str(ROOT), "MESHKIT_LOG_FORMAT": "xml", "PATH": "/usr/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert "MESHKIT_LOG_FORMAT must be one of console, json, not 'xml'" in done.stderr


class TestRequestId:
    """The caller's ``X-Request-ID`` is echoed, else a new one; the access line has it."""

    @pytest.mark.parametrize(
        ("sent", "path", "body"),
        [
            ("abc-123", "/v1/chat/completions", {**CHAT, "stream": True}),
            ("abc-124", "/v1/chat/completions", {"messages": 1}),
            ("abc-125", "/api/generate", {"prompt": "hi", "stream": False}),
            (None, "/v1/chat/completions", CHAT),
            ("x" * 200, "/v1/chat/completions", CHAT),
        ],
    )
    async def test_echoed_and_logged(
        self, fake: FakeLLM, aiohttp_client, sent: str | None, path: str, body: Any
    ) -> None:
        gw = await start(aiohttp_client, mesh_text(fake.url))
        headers = {"X-Request-ID": sent} if sent else {}
        with capture_logs() as logs:
            resp = await gw.post(path, json=body, headers=headers)
            await resp.read()
        echoed = resp.headers["X-Request-ID"]
        if sent and len(sent) <= 128:
            assert echoed == sent
        else:
            assert echoed and echoed != sent
        access = [e for e in logs if e["event"] == "meshkit.request"]
        assert [e["request_id"] for e in access] == [echoed]
        assert fake.headers[-1:] == [] or fake.headers[-1]["X-Request-ID"] == echoed


#: Runs in a fresh interpreter: the CLI's logging, then the same access line written
#: directly, through structlog, under ``capture_logs`` and with a context variable.
_LINES = """
import logging, sys
import structlog
from structlog.testing import capture_logs
from meshkit.cli import configure_logging
from meshkit.observability import access_log

fields = dict(request_id="r-1", trace_id=None, pipeline="chat", dialect="openai",
    route="/v1/chat/completions", model="m", status=200, stream=True, ttft_ms=1.5,
    duration_ms=12.25, tokens_in=3, tokens_out=None, error=None, disconnected=False)
configure_logging(sys.argv[1], sys.argv[2])
access_log.line(**fields)
access_log.request(**fields)
with capture_logs() as captured:
    access_log.line(**fields)
print("captured", len(captured), file=sys.stderr)
structlog.contextvars.bind_contextvars(tenant="t-9")
access_log.line(**fields)
structlog.contextvars.clear_contextvars()
access_log.direct(None, level=logging.INFO)
access_log.line(**fields)
"""


def _lines(level: str, fmt: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _LINES, level, fmt],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def _stamp(line: str, fmt: str) -> datetime:
    stamp = json.loads(line)["timestamp"] if fmt == "json" else line.split(" ", 1)[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamp), stamp
    return datetime.fromisoformat(stamp)


def _unstamped(line: str, fmt: str) -> Any:
    if fmt == "json":
        event = json.loads(line)
        del event["timestamp"]
        return event
    return line.split(" ", 1)[1]


class TestDirectLine:
    """Under the CLI's logging the access line skips structlog's dispatch, unchanged."""

    @pytest.mark.parametrize("fmt", ["console", "json"])
    def test_the_same_line_as_through_structlog(self, fmt: str) -> None:
        direct, record, captured, with_var, through = _lines("info", fmt)
        assert _unstamped(direct, fmt) == _unstamped(through, fmt)
        assert _unstamped(record, fmt) == _unstamped(through, fmt)  # a record's own line
        assert timedelta(0) <= _stamp(through, fmt) - _stamp(direct, fmt) < timedelta(seconds=5)
        assert captured == "captured 1"  # capture_logs still sees it
        if fmt == "json":
            assert list(json.loads(direct))[-3:] == ["event", "level", "timestamp"]
            assert json.loads(with_var)["tenant"] == "t-9"
        else:
            assert direct.split(" ", 1)[1].startswith("[info     ] meshkit.request ")
            assert "tenant=t-9" in with_var

    def test_no_line_below_info(self) -> None:
        assert _lines("warning", "console") == ["captured 0"]
