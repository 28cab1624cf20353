"""What both dialects share about an answer's pieces: images, tool calls, logprobs.

Images travel as OpenAI ``image_url`` parts; Ollama's bare base64 strings become
``data:`` URLs whose MIME type is read from the image's first bytes. Streamed tool-call
fragments are merged back into whole calls (for an aggregated answer, or for Ollama
clients, which get each call whole), and logprobs of several chunks into one object.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .types import ToolCall, ToolCallDelta
from .wire import new_id

#: Leading bytes of the image formats models take, and their MIME types.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff_mime(head: bytes) -> str | None:
    """The image MIME type ``head`` (an image's first bytes) starts, or None."""
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def b64_head(data: str, size: int = 16) -> bytes:
    """The first ``size``-odd bytes of base64 ``data`` (ValueError: not base64)."""
    take = (size + 2) // 3 * 4
    try:
        return base64.b64decode(data[:take], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc


def image_data_url(data: str) -> str:
    """A ``data:`` URL for a base64 image (ValueError: not base64 or not an image)."""
    data = data.strip()
    if data.startswith("data:"):
        return data
    mime = sniff_mime(b64_head(data))
    if mime is None:
        raise ValueError("not a PNG, JPEG, GIF, WebP or BMP image")
    return f"data:{mime};base64,{data}"


def data_url_payload(url: str) -> str | None:
    """The base64 payload of a ``data:...;base64,`` URL, None for any other URL."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return payload


def call_id() -> str:
    """A fresh tool-call id, for calls that came without one (Ollama's)."""
    return "call_" + new_id()[:24]


class ToolCallMerger:
    """Merges streamed tool-call fragments into whole calls, by ``index``."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def starts_new(self, deltas: Iterable[ToolCallDelta]) -> bool:
        """Whether ``deltas`` begin a call not seen yet (calls stream one after another,
        so the ones before it are complete)."""
        return any(d.index not in self._calls for d in deltas)

    def add(self, deltas: Iterable[ToolCallDelta]) -> None:
        """Take the fragments of one chunk."""
        calls = self._calls
        for d in deltas:
            entry = calls.get(d.index)
            if entry is None:
                calls[d.index] = [d.id, d.name, [d.arguments]]
                continue
            if entry[0] is None and d.id:
                entry[0] = d.id
            if entry[1] is None and d.name:
                entry[1] = d.name
            entry[2].append(d.arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        """The whole calls so far, in index order (ids made up where none came)."""
        out = []
        for index in sorted(self._calls):
            ident, name, pieces = self._calls[index]
            out.append(ToolCall(ident or call_id(), name or "", "".join(pieces) or "{}"))
        return tuple(out)

    def take(self) -> tuple[ToolCall, ...]:
        """The whole calls so far, forgetting them."""
        calls = self.calls()
        self._calls.clear()
        return calls


def as_deltas(calls: Sequence[ToolCall]) -> tuple[ToolCallDelta, ...]:
    """Whole calls as one fragment each."""
    return tuple(ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(calls))


class LogprobsMerger:
    """Joins the ``choice.logprobs`` objects of several chunks (their lists concatenated)."""

    __slots__ = ("_lists",)

    def __init__(self) -> None:
        self._lists: dict[str, list[Any]] = {}

    def add(self, logprobs: Mapping[str, Any]) -> None:
        for key, value in logprobs.items():
            if isinstance(value, list):
                self._lists.setdefault(key, []).extend(value)

    def result(self) -> dict[str, Any] | None:
        return dict(self._lists) if self._lists else None
