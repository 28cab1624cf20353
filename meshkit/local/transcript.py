"""A chat as a plain transcript, for base models that have no chat template.

The bundled Gemma 3 270M is a base model: it continues text rather than answering a
turn. Written as a conversation transcript (``User: ...`` then ``Assistant:``), the
next thing it writes is the answer, and the point where it starts the next ``User:``
line is where the answer ends. Given the same chat through Gemma's turn markup it
echoes the question instead.

This module also turns a request's ``response_format`` into what the engine needs: a
JSON Schema (or None for any JSON object) that llama.cpp compiles into a grammar, so
the model can only write JSON valid for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..errors import BadRequest

#: Where the answer ends: the model starting the next turn of the transcript.
STOPS = ("\nUser:",)

_SPEAKERS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


@attrs.frozen
class JsonOutput:
    """The model must write JSON: an object valid for ``schema``, or any object."""

    schema: Mapping[str, Any] | None = None

    @property
    def hint(self) -> str:
        """A line telling the model what to write (the grammar enforces it)."""
        if self.schema is None:
            return "Answer with a JSON object."
        return "Answer with a JSON object valid for this JSON Schema: " + json.dumps(
            self.schema, separators=(",", ":")
        )


def render(messages: Sequence[tuple[str, str]], output: JsonOutput | None = None) -> str:
    """``messages`` (role, text) as a transcript ending where the answer begins.

    System and developer text comes first as a preamble, then one line per turn.
    """
    preamble = [text for role, text in messages if role in ("system", "developer") and text]
    if output is not None:
        preamble.append(output.hint)
    lines = [
        f"{_SPEAKERS.get(role, 'User')}: {text.strip()}".rstrip()
        for role, text in messages
        if role not in ("system", "developer")
    ]
    head = "\n\n".join(preamble) + "\n\n" if preamble else ""
    return head + "\n".join(lines) + "\nAssistant:"


def json_output(response_format: Mapping[str, Any] | None) -> JsonOutput | None:
    """What ``response_format`` (OpenAI's shape) asks of the local model.

    Raises:
        BadRequest: An unknown type, or a ``json_schema`` without a schema object.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise BadRequest("'response_format' must be an object", param="response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonOutput()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise BadRequest(
                "'response_format.json_schema.schema' must be a JSON Schema object",
                param="response_format.json_schema.schema",
            )
        return JsonOutput(schema)
    raise BadRequest(
        "'response_format.type' must be one of text, json_object, json_schema",
        param="response_format.type",
    )
