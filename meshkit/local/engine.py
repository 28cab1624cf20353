"""`LlamaEngine`: one llama.cpp model served to asyncio from one worker thread.

llama.cpp contexts are not thread-safe, so every call into them runs on a single
dedicated thread; requests queue there and are served in turn, and an arriving request
never disturbs one in flight. Tokens cross back to the event loop through
``loop.call_soon_threadsafe`` into an ``asyncio.Queue``, so the loop never waits on
generation. A consumer that stops iterating sets its job's ``threading.Event``: the
decode loop checks it on every token, and a job still queued is dropped unrun.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from ..errors import BadRequest, MeshError
from ..protocol import Chunk, Usage
from . import transcript
from .model import ModelFile
from .transcript import JsonOutput

if TYPE_CHECKING:
    from collections.abc import Generator

    import llama_cpp

    from ._llama import WatchedLlama

log = structlog.get_logger(__name__)

# Sampling options a request may pass through ``extra`` to llama.cpp.
SAMPLING_OPTIONS = frozenset(
    {"top_k", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}
)


@attrs.frozen
class Generation:
    """What to generate: chat messages (role, content), sampling settings, and the
    JSON the answer must be (``output``; None for free text)."""

    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    output: JsonOutput | None = None


@attrs.define
class EngineStats:
    """Counters of what the worker did; read them, never write them."""

    completed: int = 0
    cancelled: int = 0
    dropped: int = 0
    failed: int = 0
    embedded: int = 0


_END = object()


class _Job:
    """One generation's hand-off between the worker thread and the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.cancel = threading.Event()

    def put(self, item: object) -> None:
        """Hand ``item`` to the consumer (from the worker thread)."""
        if self.cancel.is_set():
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()


class TokenStream:
    """Chunks of one generation, as an async iterator; :meth:`aclose` stops it.

    Text chunks come first, then one chunk with the finish reason (``"stop"`` or
    ``"length"``) and the token usage. Leaving early — ``aclose()``, or cancelling the
    task that awaits the next chunk — ends the decode loop within a token.
    """

    def __init__(self, job: _Job) -> None:
        self._job = job
        self._pending: list[object] = []
        self._done = False

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> Chunk:
        if self._done:
            raise StopAsyncIteration
        item = self._pending.pop() if self._pending else await self._get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        assert isinstance(item, Chunk)
        return item

    async def started(self) -> None:
        """Wait until the first chunk (or the error) exists, without consuming it.

        Lets a caller turn an early failure (a prompt too long for the context) into a
        plain error before it commits to streaming.
        """
        if not self._pending and not self._done:
            self._pending.append(await self._get())

    async def aclose(self) -> None:
        """Stop the generation; its queue slot or decode loop ends promptly."""
        self._done = True
        self._job.cancel.set()

    def __del__(self) -> None:
        # A stream dropped without aclose() must not keep the model busy.
        self._job.cancel.set()

    async def _get(self) -> object:
        try:
            return await self._job.queue.get()
        except BaseException:  # cancelled while waiting: the consumer is gone
            self._done = True
            self._job.cancel.set()
            raise


@attrs.define
class LlamaEngine:
    """One GGUF model behind a single llama.cpp worker thread.

    Args:
        model: The file to load and the name to report in chunks.
        threads: CPU threads llama.cpp uses for one request.
        context: Context window in tokens (prompt plus answer).
        embedding_context: Tokens one embedding batch may hold (per input, at most).
    """

    model: ModelFile
    threads: int = 2
    context: int = 4096
    embedding_context: int = 512
    stats: EngineStats = attrs.field(factory=EngineStats, init=False)
    load_seconds: float | None = attrs.field(default=None, init=False)
    _executor: concurrent.futures.ThreadPoolExecutor | None = attrs.field(default=None, init=False)
    _chat: WatchedLlama | None = attrs.field(default=None, init=False)
    _embedder: llama_cpp.Llama | None = attrs.field(default=None, init=False)
    _jobs: weakref.WeakSet[_Job] = attrs.field(factory=weakref.WeakSet, init=False)

    @property
    def name(self) -> str:
        """The model's public name."""
        return self.model.name

    @property
    def loaded(self) -> bool:
        """Whether :meth:`start` has loaded the model."""
        return self._chat is not None

    async def start(self) -> None:
        """Start the worker thread and load the model on it (idempotent)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="meshkit-llama"
            )
        if self._chat is None:
            await self._call(self._load)

    async def close(self) -> None:
        """Stop every job, free the model and end the worker thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        for job in list(self._jobs):
            job.cancel.set()
        await asyncio.get_running_loop().run_in_executor(executor, self._unload)
        executor.shutdown(wait=True)
        log.info("meshkit.local.engine_closed", model=self.name, **attrs.asdict(self.stats))

    def generate(self, generation: Generation) -> TokenStream:
        """Queue a generation and return its chunks as they are produced."""
        executor = self._require()
        job = _Job(asyncio.get_running_loop())
        self._jobs.add(job)
        executor.submit(self._run_chat, job, generation)
        return TokenStream(job)

    async def embed(self, texts: tuple[str, ...]) -> tuple[list[list[float]], int]:
        """Mean-pooled unit vectors for ``texts`` and the number of tokens read."""
        self._require()
        if not texts:
            return [], 0
        vectors, tokens = await self._call(self._run_embed, list(texts))
        return vectors, tokens

    async def width(self) -> int:
        """Length of the vectors :meth:`embed` returns."""
        from . import _llama

        self._require()
        return _llama.n_embd(await self._call(self._embedding_model))

    # -- worker thread -----------------------------------------------------------------

    def _require(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None or self._chat is None:
            raise MeshError(f"local model {self.name!r} is not loaded")
        return self._executor

    async def _call(self, func: Any, *args: Any) -> Any:
        executor = self._executor
        assert executor is not None
        # A queued call whose awaiting task is cancelled is removed from the queue.
        return await asyncio.get_running_loop().run_in_executor(executor, func, *args)

    def _load(self) -> None:
        from . import _llama

        started = time.monotonic()
        self._chat = _llama.load_chat(
            str(self.model.path),
            n_ctx=self.context,
            n_threads=self.threads,
            chat_format=self.model.chat_format,
        )
        self.load_seconds = time.monotonic() - started
        log.info(
            "meshkit.local.model_loaded",
            model=self.name,
            path=str(self.model.path),
            seconds=round(self.load_seconds, 2),
            threads=self.threads,
        )

    def _unload(self) -> None:
        for llama in (self._chat, self._embedder):
            if llama is not None:
                llama.close()
        self._chat = self._embedder = None

    def _embedding_model(self) -> llama_cpp.Llama:
        from . import _llama

        if self._embedder is None:
            self._embedder = _llama.load_embedder(
                str(self.model.path), n_ctx=self.embedding_context, n_threads=self.threads
            )
        return self._embedder

    def _run_embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        from . import _llama

        result = _llama.embed(self._embedding_model(), texts)
        self.stats.embedded += len(texts)
        return result

    def _run_chat(self, job: _Job, generation: Generation) -> None:
        if job.cancel.is_set():
            self.stats.dropped += 1
            log.info("meshkit.local.generation_dropped", model=self.name)
            return
        from . import _llama

        chat = self._chat
        assert chat is not None
        watch = _llama.TokenWatch(job.cancel, chat.turn_tokens)
        chat.watch = watch
        started = time.monotonic()
        first: float | None = None
        finish: str | None = None
        try:
            parts = _stream(chat, generation)
            # In a transcript the answer follows "Assistant: " and ends where the next
            # turn would start; the blanks around it belong to the transcript (and a
            # JSON grammar lets the model pad the end), so they are not the answer's.
            trim = chat.transcript or generation.output is not None
            blanks = ""
            for text, reason in parts:
                if trim:
                    text = blanks + (text.lstrip() if first is None else text)
                    blanks = text[len(text.rstrip()) :]
                    text = text.rstrip()
                if text:
                    first = first or time.monotonic()
                    job.put(Chunk(text=text, model=self.name))
                finish = reason or finish
                if job.cancel.is_set():
                    parts.close()
                    break
        except Exception as exc:
            self.stats.failed += 1
            log.warning("meshkit.local.generation_failed", model=self.name, error=str(exc))
            job.put(_wrap(exc))
            job.put(_END)
            return
        finally:
            chat.watch = None
        elapsed = time.monotonic() - started
        if job.cancel.is_set():
            self.stats.cancelled += 1
            log.info(
                "meshkit.local.generation_cancelled",
                model=self.name,
                tokens=watch.sampled,
                observed_in_decode=watch.observed_cancel,
            )
            return
        usage = Usage(watch.prompt_tokens, watch.sampled)
        # Count and log before the last put, so a consumer that saw the end sees both.
        self.stats.completed += 1
        log.info(
            "meshkit.local.generation_done",
            model=self.name,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            finish_reason=finish,
            ttft_ms=round(((first or started) - started) * 1000),
            tokens_per_s=round(usage.completion_tokens / elapsed, 1) if elapsed else None,
        )
        job.put(Chunk(finish_reason=finish or "stop", usage=usage, model=self.name))
        job.put(_END)


def _stream(chat: WatchedLlama, generation: Generation) -> Generator[tuple[str, str | None]]:
    """Start the generation: a plain transcript for a base model, else the file's chat
    template; a JSON output is enforced by a grammar either way."""
    from . import _llama

    kwargs = _sampling_kwargs(generation)
    if generation.output is not None:
        try:
            kwargs["grammar"] = _llama.json_grammar(generation.output.schema)
        except ValueError as exc:
            raise BadRequest(str(exc), param="response_format.json_schema.schema") from exc
    if chat.transcript:
        kwargs["stop"] = [*transcript.STOPS, *generation.stop]
        prompt = transcript.render(generation.messages, generation.output)
        return _llama.stream_text(chat, prompt, kwargs)
    kwargs["messages"] = [{"role": role, "content": text} for role, text in generation.messages]
    return _llama.stream_chat(chat, kwargs)


def _sampling_kwargs(generation: Generation) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"stream": True, "max_tokens": generation.max_tokens}
    if generation.temperature is not None:
        kwargs["temperature"] = generation.temperature
    if generation.top_p is not None:
        kwargs["top_p"] = generation.top_p
    if generation.stop:
        kwargs["stop"] = list(generation.stop)
    if generation.seed is not None:
        kwargs["seed"] = generation.seed
    kwargs.update({k: v for k, v in generation.options.items() if k in SAMPLING_OPTIONS})
    return kwargs


def _wrap(exc: Exception) -> MeshError:
    """llama.cpp signals an over-long prompt with a plain ValueError."""
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, ValueError) and "context window" in str(exc):
        error: MeshError = BadRequest(str(exc), param="messages")
    else:
        error = MeshError(f"local model failed: {exc}")
    error.__cause__ = exc
    return error
