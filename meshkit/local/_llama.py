"""Glue to llama-cpp-python: a per-token watch for cancellation and token counts.

Imported only when a model is loaded, so ``meshkit.local`` imports without the
``local`` extra (the parent of a managed child process never needs llama.cpp).
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt


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
    """Load a model for generation."""
    llama = WatchedLlama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        chat_format=chat_format,
        verbose=False,
    )
    if chat_format == "gemma":
        tokens = llama.tokenize(b"<start_of_turn>", add_bos=False, special=True)
        if len(tokens) == 1:
            llama.turn_tokens = frozenset(tokens)
    return llama


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


def embed(llama: llama_cpp.Llama, texts: list[str]) -> tuple[list[list[float]], int]:
    """Unit-length mean-pooled vectors for ``texts`` and the number of tokens read."""
    vectors, tokens = llama.embed(texts, normalize=True, truncate=True, return_count=True)
    return [[float(x) for x in vector] for vector in vectors], int(tokens)


def n_embd(llama: llama_cpp.Llama) -> int:
    """Width of the model's vectors."""
    return int(llama.n_embd())
