"""One OpenAI stream's events in, with the plain text delta recognised without parsing.

Nearly every event of a streamed answer is a text delta that differs from the one
before only in its text: the same id, object, created time, model and choice fields
around ``"content":"..."``. :class:`Events` parses events as
:meth:`~meshkit.protocol.openai.Upstream.line` does, and from the first plain delta it
parses learns the bytes before and after that text (a *template*), proven by parsing
the event again with other text in its place. A later event made of the template's
bytes around a plain JSON string (no quote, backslash or control character, valid
UTF-8) is the same object with other text, so its chunk is built straight from the
bytes: the same :class:`~meshkit.protocol.types.Chunk`, with the same raw payload, that
parsing it would give. Anything else is parsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import _json
from .types import Chunk, relayed_chunk

#: Bytes that end or escape a JSON string, or may not appear in one unescaped.
_NOT_PLAIN = re.compile(rb'["\\\x00-\x1f]')
#: The same, and any byte that is not ASCII (the text is then checked as UTF-8).
_NOT_PLAIN_ASCII = re.compile(rb'["\\\x00-\x1f\x80-\xff]')
#: Text put in the content's place to prove a template (a plain JSON string).
_PROBE = "meshkit template probe 7f3a"
_PROBE_TOKEN = b'"' + _PROBE.encode() + b'"'
#: Plain deltas a stream tries to learn a template from before it stops trying.
_TRIES = 8
#: JSON's whitespace.
_JSON_SPACE = frozenset(b" \t\r\n")


class Events:
    """One OpenAI stream's SSE line parser (a :class:`~meshkit.protocol.codec.LineParse`).

    Args:
        parse: The dialect's parser of one SSE line (every event it is not sure of
            goes there).
    """

    __slots__ = (
        "_after",
        "_before",
        "_end",
        "_head",
        "_id",
        "_model",
        "_parse",
        "_relayed",
        "_seen",
        "_start",
        "_stop",
        "_tail",
        "_tries",
    )

    def __init__(self, parse: Callable[[bytes], Sequence[Chunk]]) -> None:
        self._parse = parse
        self._head: bytes | None = None  # the line up to the text's opening quote
        self._tail = b""  # the line from the text's closing quote
        self._end = b""  # the tail, then the blank line that ends the event
        self._start = 0  # len(head)
        self._stop = 0  # len(tail)
        self._before = 0  # bytes of the line before its payload
        self._after = 0  # and after it
        self._model: str | None = None
        self._id: str | None = None
        self._relayed: str | None = None  # the id, when the template's events are canonical
        self._tries = _TRIES
        self._seen = False  # a plain delta was parsed

    def __call__(self, line: bytes) -> Sequence[Chunk]:
        head = self._head
        if head is not None and line.startswith(head) and line.endswith(self._tail):
            chunk = self._plain(line, len(line))
            if chunk is not None:
                return (chunk,)
        chunks = self._parse(line)
        if self._tries and len(chunks) == 1 and _is_plain(chunks[0]):
            # The first text usually comes with the role (no later event has it, so its
            # template would fit none; a one-event answer would pay for it and use it
            # never): learn from the next. A stream that sends the role every time is
            # learned from its second event.
            if self._seen or b'"role"' not in line:
                self._learn(line, chunks[0])
            self._seen = True
        return chunks

    def whole(self, data: bytes) -> Chunk | None:
        """The chunk of ``data`` when it is one whole plain delta event (its line and the
        blank line after it: the usual read), else None."""
        head = self._head
        if head is None or not data.startswith(head) or not data.endswith(self._end):
            return None
        # A plain text has no newline, so ``data`` is exactly one line and a blank one.
        return self._plain(data, len(data) - 2)

    def verbatim(self, data: bytes) -> str | None:
        """The answer's id when ``data`` is one whole plain delta event (as :meth:`whole`
        finds it) written ``data: <payload>`` and a blank line, exactly as an OpenAI
        caller is sent the event (``sse_event(chunk.raw)``), else None.

        No chunk is made: a sink that relays the upstream's events as they came writes
        ``data`` itself (the spliced OpenAI route's usual event).
        """
        ident = self._relayed
        head = self._head
        if ident is None or head is None or not data.startswith(head):
            return None
        if not data.endswith(self._end):
            return None
        start = self._start
        stop = len(data) - 2 - self._stop
        if stop <= start:
            return None
        if _NOT_PLAIN_ASCII.search(data, start, stop) is None:
            return ident  # plain ASCII text (no slice of it made)
        middle = data[start:stop]
        if _NOT_PLAIN.search(middle) is not None:
            return None
        try:
            middle.decode()
        except UnicodeDecodeError:
            return None  # parsed, to be refused as a malformed event
        return ident

    def _plain(self, data: bytes, size: int) -> Chunk | None:
        """The chunk of the line ``data[:size]``, which starts with the head and ends
        with the tail, when what lies between is a plain, non-empty JSON string."""
        middle = data[self._start : size - self._stop]
        if not middle or _NOT_PLAIN.search(middle) is not None:
            return None
        try:
            text = middle.decode()
        except UnicodeDecodeError:
            return None  # parsed, to be refused as a malformed event
        payload = data[self._before : size - self._after]
        return relayed_chunk(text, self._model, self._id, payload)

    def _learn(self, line: bytes, chunk: Chunk) -> None:
        """Take the template of ``line``, whose parse is the plain delta ``chunk``, if
        putting other text in the text's place is proven to change nothing else."""
        self._tries -= 1
        payload = chunk.raw
        assert payload is not None
        for start, stop in _text_tokens(payload, chunk.text):
            probe = payload[:start] + _PROBE_TOKEN + payload[stop:]
            try:
                expected: Any = _json.loads(payload)
                expected["choices"][0]["delta"]["content"] = _PROBE
                if _json.loads(probe) == expected:
                    break
            except (ValueError, TypeError, KeyError, IndexError):
                pass
        else:
            return  # no place where other text changes the text and nothing else
        # The payload is the line from its sixth byte on, stripped (as it was parsed).
        rest = line[5:]
        before = 5 + len(rest) - len(rest.lstrip())
        self._head = line[: before + start + 1]
        self._tail = line[before + stop - 1 :]
        self._end = self._tail + b"\n\n"
        self._start = len(self._head)
        self._stop = len(self._tail)
        self._before = before
        self._after = len(line) - before - len(payload)
        self._model = chunk.model
        self._id = chunk.id
        # ``data: `` before the payload and nothing after it: the event's bytes are
        # exactly what relaying its chunk writes.
        self._relayed = chunk.id if before == 6 and self._after == 0 else None


def _is_plain(chunk: Chunk) -> bool:
    """Whether ``chunk`` is a text delta and nothing else, parsed from a raw payload."""
    return (
        chunk.raw is not None
        and isinstance(chunk.text, str)
        and bool(chunk.text)
        and chunk.finish_reason is None
        and chunk.usage is None
        and chunk.meta is None
        and not chunk.reasoning
        and not chunk.tool_calls
        and chunk.logprobs is None
    )


def _text_tokens(payload: bytes, text: str) -> Iterator[tuple[int, int]]:
    """Where in ``payload`` a ``"content"`` member's value is the string ``text``
    written plainly (start and end of each such string token, quotes included)."""
    token = text.encode()
    if _NOT_PLAIN.search(token) is not None:
        return
    at = payload.find(b'"content"')
    while at >= 0:
        i = _after_space(payload, at + 9)
        if payload[i : i + 1] == b":":
            i = _after_space(payload, i + 1)
            if payload[i : i + 1] == b'"':
                end = payload.find(b'"', i + 1)
                if end > i and payload[i + 1 : end] == token:
                    yield i, end + 1
        at = payload.find(b'"content"', at + 9)


def _after_space(data: bytes, i: int) -> int:
    """The index of the first byte from ``i`` on that is not JSON whitespace."""
    while i < len(data) and data[i] in _JSON_SPACE:
        i += 1
    return i
