"""`LocalServer` runs ``python -m meshkit.local`` as a managed, health-checked child."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from meshkit.local import LocalServer, LocalServerError
from meshkit.local.__main__ import main

pytestmark = pytest.mark.slow


class TestLocalServer:
    """Start, serve, stop; a child that dies is reported at once."""

    async def test_serves_until_exit_then_stops(self) -> None:
        lines: list[str] = []
        server = LocalServer(port=0, on_line=lines.append)
        async with server:
            pid = server.pid
            assert pid is not None
            assert server.url.startswith("http://127.0.0.1:")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{server.url}/readyz") as ready:
                    assert ready.status == 200
                body = {
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 4,
                    "stream": True,
                }
                async with session.post(f"{server.url}/v1/chat/completions", json=body) as r:
                    events = [line async for line in r.content if line.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]\n" and len(events) >= 3
        assert any(line.startswith("loading gemma-3-270m") for line in lines)
        assert any(line.startswith("ready on http://") for line in lines)
        assert lines[-1] == "stopping ..."
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    async def test_child_that_dies_fails_fast_with_its_output(self, tmp_path: Path) -> None:
        bogus = tmp_path / "not-a-model.gguf"
        bogus.write_bytes(b"nope")
        server = LocalServer(model=str(bogus), startup_timeout=60, on_line=lambda line: None)
        with pytest.raises(LocalServerError, match="not a GGUF model file"):
            await server.open()
        assert server.pid is None

    def test_command_line(self) -> None:
        server = LocalServer(host="0.0.0.0", port=8009, model="/m.gguf", threads=4)
        assert server.command()[1:] == [
            "-m", "meshkit.local", "--host", "0.0.0.0", "--port", "8009",
            "--threads", "4", "--watch-stdin", "--model", "/m.gguf",
        ]  # fmt: skip


class TestMain:
    """``python -m meshkit.local`` reports bad input without a traceback."""

    @pytest.fixture(autouse=True)
    def _keep_logging_config(self) -> Iterator[None]:
        saved = structlog.get_config()  # main() configures logging, as a CLI does
        yield
        structlog.configure(**saved)

    def test_missing_model_file(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--model", "/nonexistent/model.gguf", "--port", "0"]) == 1
        assert "model file not found" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
