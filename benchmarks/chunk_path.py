"""Per-chunk parse and render, without servers: µs per relayed chunk of meshkit's own
Python on the spliced path's pure part.

A 64-token stream as ``benchmarks/upstream.py`` writes it (one event per read) is fed
through the OpenAI upstream's line parser and each chunk encoded for the caller, as
``Sink.emit`` would (the HTTP chunk framing included): to an OpenAI caller (the raw
relay of the upstream's events) and to an Ollama ``/api/chat`` caller (NDJSON records).

Run: ``PYTHONPATH=TREE python benchmarks/chunk_path.py`` (compare trees by running it
with each tree first on the path, pinned to one core: ``taskset -c 1``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import upstream as fake

from meshkit.nodes.upstream import LineParser
from meshkit.protocol import ollama_ndjson, openai, openai_sse
from meshkit.protocol.types import ChatRequest, Chunk, Message

REQUEST = ChatRequest(messages=(Message("user", "hi"),), model="bench", stream=True)


def reads(chunks: int) -> list[bytes]:
    """The stream's reads: each HTTP chunk's payload (one SSE event, the last with the
    finish, usage and ``[DONE]`` events)."""
    out = []
    for frame in fake.stream_frames("bench", chunks, "s", True):
        size, _, rest = frame.partition(b"\r\n")
        out.append(rest[: int(size, 16)])
    return out


def one_stream(data: list[bytes], encoder: Callable[[ChatRequest], object]) -> float:
    """Seconds to parse and encode one stream."""
    parser = LineParser("llm", openai.Upstream("llm").line_parser())
    encode: Callable[[Chunk], bytes | None] = encoder(REQUEST).chunk  # type: ignore[attr-defined]
    ends = []
    start = time.perf_counter()
    for piece in data:
        for chunk in parser.feed(piece):
            if chunk.finish_reason is not None or chunk.usage is not None:
                ends.append(chunk)
            event = encode(chunk)
            if event:
                _ = b"%x\r\n%b\r\n" % (len(event), event)
    elapsed = time.perf_counter() - start
    assert parser.done and ends
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--streams", type=int, default=300, help="streams per repetition")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    data = reads(a.chunks)
    for name, encoder in (
        ("openai caller", openai_sse.ChatEncoder),
        ("ollama caller", ollama_ndjson.ChatEncoder),
    ):
        for _ in range(a.streams // 3):  # warm-up
            one_stream(data, encoder)
        per_chunk = [
            sum(one_stream(data, encoder) for _ in range(a.streams)) / a.streams / a.chunks * 1e6
            for _ in range(a.reps)
        ]
        print(
            f"{name}: {statistics.median(per_chunk):.2f} µs per chunk "
            f"(min {min(per_chunk):.2f}, max {max(per_chunk):.2f}; {a.reps} x {a.streams} streams)"
        )


if __name__ == "__main__":
    main()
