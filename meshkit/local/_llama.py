"""Glue to llama-cpp-python: a per-token watch for cancellation and token counts.

Imported only when a model is loaded, so ``meshkit.local`` imports without the
``local`` extra (the parent of a managed child process never needs llama.cpp).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Generator, Mapping
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar


class TokenWatch:
    """A llama.cpp stopping criterion called once per sampled token.

    It stops the decode loop as soon as ``cancel`` is set (the consumer left) and counts
    what was sampled. ``sampled`` includes the end-of-turn token when the model emitted
    one, as llama.cpp's own server counts it.
    """

    def __init__(self, cancel: threading.Event, turn_tokens: frozenset[int] = frozenset()) -> None:
        self.cancel = cancel
        self.turn_tokens = turn_tokens
        self.prompt_tokens = 0
        self.sampled = 0
        self.observed_cancel = False

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        # input_ids holds the prompt and every token sampled before this one.
        self.sampled = max(self.sampled, len(input_ids) - self.prompt_tokens + 1)
        if self.cancel.is_set():
            self.observed_cancel = True
            return True
        # A base model goes on to write the next user turn itself; that token renders
        # as nothing, so it is caught here (one token late) rather than by stop strings.
        return len(input_ids) > self.prompt_tokens and int(input_ids[-1]) in self.turn_tokens


class WatchedLlama(llama_cpp.Llama):
    """``llama_cpp.Llama`` whose completions obey the watch set in :attr:`watch`.

    The chat handlers format the prompt and then call :meth:`create_completion`; hooking
    there keeps llama.cpp's own chat templates while adding a per-token stop check and
    exact prompt token counts. Only the engine's worker thread touches an instance.
    """

    watch: TokenWatch | None = None
    turn_tokens: frozenset[int] = frozenset()
    #: The file has no chat template: chats are written as a plain transcript.
    transcript: bool = False

    def create_completion(self, prompt: str | list[int], *args: Any, **kwargs: Any) -> Any:
        watch = self.watch
        if watch is not None:
            if isinstance(prompt, list):
                watch.prompt_tokens = len(prompt)
            else:
                watch.prompt_tokens = len(self.tokenize(prompt.encode("utf-8"), special=True))
            criteria = llama_cpp.StoppingCriteriaList([watch])
            if kwargs.get("stopping_criteria"):
                criteria.extend(kwargs["stopping_criteria"])
            kwargs["stopping_criteria"] = criteria
        return super().create_completion(prompt, *args, **kwargs)


def load_chat(path: str, *, n_ctx: int, n_threads: int, chat_format: str | None) -> WatchedLlama:
    """Load a model for generation.

    With no ``chat_format`` and no template in the file (a base model), the model is
    marked for plain transcripts; llama.cpp's fallback template would not suit it.
    """
    llama = WatchedLlama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        chat_format=chat_format,
        verbose=False,
    )
    llama.transcript = chat_format is None and "tokenizer.chat_template" not in llama.metadata
    if chat_format == "gemma" or llama.transcript:
        tokens = llama.tokenize(b"<start_of_turn>", add_bos=False, special=True)
        if len(tokens) == 1:
            llama.turn_tokens = frozenset(tokens)
    return llama


def json_grammar(schema: Mapping[str, Any] | None) -> LlamaGrammar:
    """A grammar admitting only JSON valid for ``schema`` (None: any JSON object).

    Raises:
        ValueError: llama.cpp cannot compile ``schema``.
    """
    if schema is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except (AssertionError, AttributeError, KeyError, TypeError, ValueError) as exc:
        # The converter reports what it cannot handle with asserts and lookups.
        raise ValueError(f"unsupported JSON Schema: {exc}") from exc


def load_embedder(path: str, *, n_ctx: int, n_threads: int) -> llama_cpp.Llama:
    """Load a second context on the same file for mean-pooled embeddings.

    A context is created either for generation or for pooled embeddings; the weights
    are memory-mapped, so the second instance shares them with the first.
    """
    return llama_cpp.Llama(
        model_path=path,
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        verbose=False,
    )


def stream_chat(
    llama: WatchedLlama, kwargs: dict[str, Any]
) -> Generator[tuple[str, str | None], None, None]:
    """Run a streamed chat completion; yield (text delta, finish reason) pairs."""
    parts: Any = llama.create_chat_completion(**kwargs)
    try:
        for part in parts:
            choice = part["choices"][0]
            yield str(choice["delta"].get("content") or ""), choice["finish_reason"]
    finally:
        parts.close()


def stream_text(
    llama: WatchedLlama, prompt: str, kwargs: dict[str, Any]
) -> Generator[tuple[str, str | None], None, None]:
    """Run a streamed plain completion of ``prompt``; yield (text delta, finish reason)."""
    parts: Any = llama.create_completion(prompt, **kwargs)
    try:
        for part in parts:
            choice = part["choices"][0]
            yield str(choice.get("text") or ""), choice["finish_reason"]
    finally:
        parts.close()


def embed(llama: llama_cpp.Llama, texts: list[str]) -> tuple[list[list[float]], int]:
    """Unit-length mean-pooled vectors for ``texts`` and the number of tokens read."""
    vectors, tokens = llama.embed(texts, normalize=True, truncate=True, return_count=True)
    return [[float(x) for x in vector] for vector in vectors], int(tokens)


def n_embd(llama: llama_cpp.Llama) -> int:
    """Width of the model's vectors."""
    return int(llama.n_embd())
