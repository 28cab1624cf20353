"""How chats reach the embedded base model: a plain transcript, and JSON it must write."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.errors import BadRequest
from meshkit.local.transcript import STOPS, JsonOutput, json_output, render

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


class TestRender:
    """Turns become transcript lines ending where the answer begins."""

    @pytest.mark.parametrize(
        ("messages", "expected"),
        [
            ([("user", "Why is the sky blue?")], "User: Why is the sky blue?\nAssistant:"),
            (
                [("system", "Be brief."), ("user", "hi")],
                "Be brief.\n\nUser: hi\nAssistant:",
            ),
            (
                [("developer", "A"), ("system", "B"), ("user", "q"), ("assistant", "a ")],
                "A\n\nB\n\nUser: q\nAssistant: a\nAssistant:",
            ),
            (
                [("user", "q"), ("assistant", ""), ("tool", "42"), ("user", "so?")],
                "User: q\nAssistant:\nTool: 42\nUser: so?\nAssistant:",
            ),
        ],
    )
    def test_render(self, messages: list[tuple[str, str]], expected: str) -> None:
        assert render(messages) == expected

    def test_the_answer_stops_at_the_next_user_turn(self) -> None:
        assert "\nUser:" in STOPS

    def test_json_output_is_asked_for_in_the_preamble(self) -> None:
        prompt = render([("system", "S"), ("user", "Capital of France?")], JsonOutput(SCHEMA))
        preamble, turns = prompt.split("\n\nUser: ")
        assert preamble.startswith("S\n\nAnswer with a JSON object valid for this JSON Schema: ")
        assert preamble.endswith('"required":["city"]}')
        assert turns == "Capital of France?\nAssistant:"


class TestResponseFormat:
    """OpenAI's response_format becomes a schema, or a 400 naming the field."""

    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            (None, None),
            ({"type": "text"}, None),
            ({"type": "json_object"}, JsonOutput()),
            (
                {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}},
                JsonOutput(SCHEMA),
            ),
        ],
    )
    def test_formats(self, given: Any, expected: JsonOutput | None) -> None:
        assert json_output(given) == expected

    @pytest.mark.parametrize(
        ("given", "param"),
        [
            ("json", "response_format"),
            ({"type": "yaml"}, "response_format.type"),
            ({"type": "json_schema"}, "response_format.json_schema.schema"),
            (
                {"type": "json_schema", "json_schema": {"schema": 3}},
                "response_format.json_schema.schema",
            ),
        ],
    )
    def test_bad_formats_name_the_field(self, given: Any, param: str) -> None:
        with pytest.raises(BadRequest) as caught:
            json_output(given)
        assert caught.value.param == param
