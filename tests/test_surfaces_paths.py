"""The surfaces on the paths around the matrix: re-streamed and aggregated answers,
spliced against pulled relays, one completion id, field mappings and documented 400s."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from meshkit.testing import FakeLLM

from .surfaces_kit import ARGS, CALL, CLIENTS, PNG_URL, TOOLS, UPSTREAMS, Answer, mesh, path, read

QUESTION = {"role": "user", "content": "Weather in Paris?"}
BOTH = [pytest.param(c, u, id=f"{c}-client-{u}-upstream") for c in CLIENTS for u in UPSTREAMS]


def rich() -> FakeLLM:
    """An upstream whose answer has every kind of piece: reasoning, text, a tool call."""
    return FakeLLM(reasoning=["Think", "ing."], tokens=["Let", " me", " check."], tool_calls=[CALL])


async def post(
    gateway: Any, fake: FakeLLM, upstream: str, pipeline: str, client: str, body: dict[str, Any]
) -> tuple[int, bytes]:
    async with fake.serve():
        gw = await gateway(mesh(fake.url, upstream, pipeline))
        resp = await gw.post(path(client), json=body)
        return resp.status, await resp.read()


class TestRestreamedAndAggregated:
    """A whole answer re-streamed, and a stream read whole, lose nothing."""

    @pytest.mark.parametrize(("client", "upstream"), BOTH)
    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
    async def test_flipped_answer_keeps_every_piece(self, gateway, client, upstream, stream):
        body = {
            "messages": [QUESTION],
            "tools": TOOLS,
            "stream": stream,
            "logprobs": True,
            "top_logprobs": 1,
        }
        status, raw = await post(gateway, rich(), upstream, "restream", client, body)
        assert status == 200, raw
        answer = read(client, stream, raw)
        assert answer.error is None
        assert answer.reasoning == "Thinking."
        assert answer.text == "Let me check."
        assert answer.arguments() == [ARGS]
        assert [e["token"] for e in answer.logprobs] == ["Let", " me", " check."]
        assert answer.finish == ("tool_calls" if client == "openai" else "stop")
        if client == "openai" and upstream == "openai":
            assert answer.calls[0][:2] == [CALL["id"], "get_weather"]
            assert answer.calls[0][2] == CALL["arguments"]


def normalised(client: str, answer: Answer) -> list[Any]:
    """The answer's events without what differs between two runs (ids, times, the ids
    made up for an Ollama upstream's calls) or what only a graph adds (its report)."""
    out = []
    for event in answer.events:
        if not isinstance(event, dict):
            out.append(event)
            continue
        text = json.dumps(event)
        for call_id in re.findall(r'"(call_[0-9a-f]{24})"', text):
            text = text.replace(call_id, "call_made_up")
        event = json.loads(text)
        event = {k: v for k, v in event.items() if k not in ("id", "created", "created_at")}
        if client == "openai" and event.get("choices") == [] and "meshkit" in event:
            continue
        event.pop("meshkit", None)
        for key in [k for k in event if k.endswith("_duration")]:
            event.pop(key)
        out.append(event)
    return out


class TestSplicedEqualsPulled:
    """The spliced one-LLM stream and a graph's pulled stream say the same, piece for piece."""

    @pytest.mark.parametrize(("client", "upstream"), BOTH)
    async def test_tool_calls_reasoning_and_logprobs(self, gateway, client, upstream) -> None:
        body = {"messages": [QUESTION], "tools": TOOLS, "stream": True, "logprobs": True}
        answers = []
        for pipeline in ("llm", "graph"):
            status, raw = await post(gateway, rich(), upstream, pipeline, client, body)
            assert status == 200
            answers.append(read(client, True, raw))
        spliced, pulled = answers
        assert spliced.reasoning == "Thinking." and spliced.arguments() == [ARGS]
        assert len(spliced.logprobs) == 3
        assert normalised(client, spliced) == normalised(client, pulled)


class TestOneCompletionId:
    """Every event of one streamed answer carries the same id, relayed or rebuilt."""

    @pytest.mark.parametrize("upstream", UPSTREAMS)
    async def test_a_guardrail_rewriting_some_chunks(self, gateway, upstream) -> None:
        fake = FakeLLM(tokens=["The", " sky", " is", " blue", "."])
        body = {"messages": [QUESTION], "stream": True, "stream_options": {"include_usage": True}}
        status, raw = await post(gateway, fake, upstream, "guard", "openai", body)
        assert status == 200
        answer = read("openai", True, raw)
        assert "[REDACTED]" in answer.text
        assert len(answer.ids) == 1
        assert len([e for e in answer.events if e != "[DONE]"]) >= 5


class TestRequestFields:
    """Fields reach the upstream under its own names; nothing is renamed or dropped."""

    @pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
    async def test_max_tokens_keeps_its_name_for_openai(self, gateway, field) -> None:
        fake = FakeLLM()
        body = {"messages": [QUESTION], field: 7, "user": "u1", "metadata": {"k": "v"}}
        status, _ = await post(gateway, fake, "openai", "llm", "openai", body)
        assert status == 200
        sent = fake.requests[0]
        assert sent[field] == 7
        other = ({"max_tokens", "max_completion_tokens"} - {field}).pop()
        assert other not in sent
        assert (sent["user"], sent["metadata"]) == ("u1", {"k": "v"})  # passed through

    async def test_max_tokens_is_num_predict_for_ollama(self, gateway) -> None:
        fake = FakeLLM()
        body = {"messages": [QUESTION], "max_completion_tokens": 7, "presence_penalty": 0.5}
        status, _ = await post(gateway, fake, "ollama", "llm", "openai", body)
        assert status == 200
        options = fake.requests[0]["options"]
        assert (options["num_predict"], options["presence_penalty"]) == (7, 0.5)

    async def test_ollama_options_become_openai_fields(self, gateway) -> None:
        fake = FakeLLM()
        options = {
            "temperature": 0.2,
            "top_p": 0.9,
            "num_predict": 12,
            "stop": ["\n"],
            "seed": 3,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.3,
            "num_ctx": 4096,
        }
        body = {"messages": [QUESTION], "stream": False, "options": options, "keep_alive": "5m"}
        status, raw = await post(gateway, fake, "openai", "llm", "ollama", body)
        assert status == 200, raw
        sent = fake.requests[0]
        assert {k: sent[k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed")} == {
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 12,
            "stop": ["\n"],
            "seed": 3,
        }
        assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.1, 0.3)
        # Never an unknown field: no options, no keep_alive (load-time settings).
        assert "options" not in sent and "keep_alive" not in sent and "num_ctx" not in sent

    async def test_keep_alive_and_options_reach_an_ollama_upstream(self, gateway) -> None:
        fake = FakeLLM()
        body = {
            "messages": [QUESTION],
            "keep_alive": "10m",
            "options": {"top_k": 20, "num_ctx": 2048, "temperature": 0.5},
        }
        status, _ = await post(gateway, fake, "ollama", "llm", "ollama", body)
        assert status == 200
        sent = fake.requests[0]
        assert sent["keep_alive"] == "10m"
        assert sent["options"] == {"top_k": 20, "num_ctx": 2048, "temperature": 0.5}

    @pytest.mark.parametrize(
        ("client", "fmt", "expected"),
        [
            ("ollama", "json", {"type": "json_object"}),
            ("openai", {"type": "json_object"}, "json"),
        ],
        ids=["ollama-json-to-openai", "openai-json-object-to-ollama"],
    )
    async def test_json_mode(self, gateway, client, fmt, expected) -> None:
        fake = FakeLLM(tokens=['{"a": 1}'])
        upstream = "openai" if client == "ollama" else "ollama"
        key = "format" if client == "ollama" else "response_format"
        body = {"messages": [QUESTION], key: fmt, "stream": False}
        status, _ = await post(gateway, fake, upstream, "llm", client, body)
        assert status == 200
        sent = fake.requests[0]
        assert sent["response_format" if upstream == "openai" else "format"] == expected

    async def test_http_image_passes_to_openai_unchanged(self, gateway) -> None:
        fake = FakeLLM()
        part = {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}}
        message = {"role": "user", "content": [{"type": "text", "text": "what?"}, part]}
        status, _ = await post(gateway, fake, "openai", "llm", "openai", {"messages": [message]})
        assert status == 200
        assert fake.requests[0]["messages"][0]["content"][1] == part

    async def test_tool_result_name_passes_to_openai(self, gateway) -> None:
        fake = FakeLLM()
        result = {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "18"}
        call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"},
        }
        turn = [QUESTION, {"role": "assistant", "content": None, "tool_calls": [call]}, result]
        status, _ = await post(gateway, fake, "openai", "llm", "openai", {"messages": turn})
        assert status == 200
        assert fake.requests[0]["messages"] == turn

    async def test_upstream_reasoning_named_reasoning(self, gateway) -> None:
        fake = FakeLLM(reasoning=["a", "b"], reasoning_field="reasoning", tokens=["c"])
        body = {"messages": [QUESTION], "stream": True}
        status, raw = await post(gateway, fake, "openai", "llm", "ollama", body)
        assert status == 200
        assert (read("ollama", True, raw).reasoning, read("ollama", True, raw).text) == ("ab", "c")

    async def test_tool_choice_none_sends_no_tools_to_ollama(self, gateway) -> None:
        fake = FakeLLM()
        body = {"messages": [QUESTION], "tools": TOOLS, "tool_choice": "none"}
        status, _ = await post(gateway, fake, "ollama", "llm", "openai", body)
        assert status == 200
        assert "tools" not in fake.requests[0]


HTTP_IMAGE = {
    "role": "user",
    "content": [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
    ],
}
AUDIO = {
    "role": "user",
    "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}],
}


class TestDocumentedRefusals:
    """What a route's upstream cannot express is a 400 naming the field, in the dialect."""

    @pytest.mark.parametrize("pipeline", ["llm", "graph"])
    @pytest.mark.parametrize(
        ("client", "upstream", "body", "param"),
        [
            (
                "openai",
                "ollama",
                {"messages": [HTTP_IMAGE]},
                "messages[0].content[1].image_url.url",
            ),
            ("openai", "ollama", {"messages": [AUDIO]}, "messages[0].content[0]"),
            (
                "openai",
                "ollama",
                {"messages": [QUESTION], "tools": TOOLS, "tool_choice": "required"},
                "tool_choice",
            ),
            ("openai", "ollama", {"messages": [QUESTION], "logit_bias": {"1": 2}}, "logit_bias"),
            ("openai", "openai", {"messages": [QUESTION], "n": 2}, "n"),
            (
                "ollama",
                "openai",
                {"messages": [QUESTION], "options": {"top_k": 5}},
                "options.top_k",
            ),
            (
                "ollama",
                "openai",
                {"messages": [{"role": "user", "content": "x", "images": ["bm90IGFuIGltYWdl"]}]},
                "messages[0].images[0]",
            ),
            ("ollama", "ollama", {"messages": [QUESTION], "bogus": 1}, "bogus"),
        ],
        ids=[
            "http-image-to-ollama",
            "audio-to-ollama",
            "tool-choice-required-to-ollama",
            "logit-bias-to-ollama",
            "n-above-one",
            "top-k-to-openai",
            "not-an-image",
            "unknown-ollama-field",
        ],
    )
    async def test_400_names_the_field(self, gateway, pipeline, client, upstream, body, param):
        fake = FakeLLM()
        status, raw = await post(gateway, fake, upstream, pipeline, client, body)
        assert status == 400, raw
        error = json.loads(raw)["error"]
        if client == "openai":
            assert error["param"] == param
        else:
            assert f"'{param}'" in error
        assert fake.requests == []  # refused before anything was sent

    async def test_generate_suffix_is_refused(self, gateway) -> None:
        fake = FakeLLM()
        async with fake.serve():
            gw = await gateway(mesh(fake.url, "ollama", "llm"))
            resp = await gw.post("/api/generate", json={"prompt": "a", "suffix": "b"})
            assert resp.status == 400
            assert "'suffix'" in (await resp.json())["error"]

    async def test_generate_images_reach_the_upstream(self, gateway) -> None:
        fake = FakeLLM()
        async with fake.serve():
            gw = await gateway(mesh(fake.url, "openai", "llm"))
            body = {"prompt": "what?", "images": [PNG_URL.split(",", 1)[1]], "stream": False}
            resp = await gw.post("/api/generate", json=body)
            assert resp.status == 200
        content = fake.requests[0]["messages"][0]["content"]
        assert content[1] == {"type": "image_url", "image_url": {"url": PNG_URL}}
