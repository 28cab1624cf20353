"""The fault matrix's tool-call case: an upstream failing in the middle of a streamed
tool call. The client gets everything sent before the failure, unmerged and unlost, then
the dialect's final error event; no connection is left checked out."""

from __future__ import annotations

import pytest

from meshkit.testing import FakeLLM

from .surfaces_kit import ARGS, CALL, mesh, path, read
from .test_resilience import settled

SECOND = {"id": "call_w2", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
#: Pieces sent: 2 text, call 1 (head + 4 argument pieces), call 2's head and first piece.
BREAK_AT = 2 + 5 + 2


class TestFailureMidToolCall:
    """A stream broken inside a tool call ends with an error event, nothing lost before."""

    @pytest.mark.parametrize("pipeline", ["llm", "graph"])
    @pytest.mark.parametrize("client", ["openai", "ollama"])
    @pytest.mark.parametrize("fault", ["error_after", "drop_after"])
    async def test_error_event_after_what_was_sent(self, gateway, client, pipeline, fault):
        fake = FakeLLM(
            tokens=["Checking", "."], tool_calls=[CALL, SECOND], tool_pieces=4, **{fault: BREAK_AT}
        )
        async with fake.serve():
            gw = await gateway(mesh(fake.url, "openai", pipeline))
            body = {"messages": [{"role": "user", "content": "Paris, Oslo?"}], "stream": True}
            resp = await gw.post(path(client), json=body)
            raw = await resp.read()
            assert resp.status == 200
            await settled(gw)
        answer = read(client, True, raw)
        assert answer.text == "Checking."
        assert answer.error  # the final event is the dialect's error
        last = answer.events[-1]
        assert "error" in last
        if client == "openai":
            assert isinstance(last["error"]["message"], str)
            assert answer.finish is None  # never said to be complete
            # Call 1 whole and exact; call 2 as far as it came, not merged into call 1.
            assert answer.calls[0] == [CALL["id"], "get_weather", CALL["arguments"]]
            assert answer.calls[1][:2] == [SECOND["id"], "get_weather"]
            assert SECOND["arguments"].startswith(answer.calls[1][2])
            assert answer.calls[1][2] != SECOND["arguments"]
        else:
            assert isinstance(last["error"], str)
            # Ollama clients get whole calls only: the complete one, not the cut one.
            assert [c[2] for c in answer.calls] == [ARGS]
            assert not any(r.get("done") for r in answer.events)
