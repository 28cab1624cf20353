"""`LocalLLM`: the bundled local model as a meshkit node (the framework serving itself)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ..errors import BadRequest, NotFound
from ..nodes.base import Context, MicroService, ServiceType
from ..protocol import ChatRequest, Completion, EmbeddingRequest, Embeddings, Usage
from ..protocol.streams import aggregate
from .engine import Generation, LlamaEngine, TokenStream
from .model import Progress, resolve_model
from .transcript import json_output

if TYPE_CHECKING:
    from ..client.http import HttpClient

log = structlog.get_logger(__name__)

DEFAULT_MAX_TOKENS = 512


class LocalLLM(MicroService):
    """An LLM node that runs a GGUF model in this process through llama.cpp.

    Without ``model`` it serves the bundled Gemma 3 270M (assembled on first use), a
    base model, so chats reach it as a plain transcript (see
    :mod:`meshkit.local.transcript`). A ``response_format`` of ``json_object`` or
    ``json_schema`` is enforced with a llama.cpp grammar: the answer is JSON valid for
    the schema. Streams when the request asks to, answers ``/v1/embeddings`` with
    mean-pooled vectors, and rejects a request naming another model with
    :class:`NotFound`.

    Args:
        name: Node name in a graph.
        model: Path of a GGUF file; None for the bundled model.
        engine: An engine to use instead of loading one (the caller opens and closes it).
        threads: CPU threads for llama.cpp.
        context: Context window in tokens.
        max_tokens: Answer length when a request does not set one.
        model_dir: Where the bundled model is assembled (default ``$MESHKIT_MODEL_DIR``).
        progress: Called with human-readable lines while the model is prepared.
        **kwargs: Passed to :class:`~meshkit.nodes.base.MicroService`.
    """

    service_type = ServiceType.LLM

    def __init__(
        self,
        name: str = "local-llm",
        *,
        model: str | os.PathLike[str] | None = None,
        engine: LlamaEngine | None = None,
        threads: int = 2,
        context: int = 4096,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        model_dir: Path | None = None,
        progress: Progress | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.model_path = model
        self.threads = threads
        self.context = context
        self.max_tokens = max_tokens
        self.model_dir = model_dir
        self.progress = progress
        self._engine = engine
        self._owns_engine = engine is None

    @property
    def engine(self) -> LlamaEngine:
        """The engine behind this node (after :meth:`open`)."""
        if self._engine is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._engine

    async def open(self, client: HttpClient | None = None) -> None:
        """Prepare the model file and load it (idempotent)."""
        if self._engine is None:
            model = await asyncio.to_thread(
                resolve_model, self.model_path, directory=self.model_dir, progress=self.progress
            )
            if self.progress:
                self.progress(f"loading {model.name} from {model.path} ...")
            self._engine = LlamaEngine(model, threads=self.threads, context=self.context)
        await self._engine.start()

    async def close(self) -> None:
        """Free the model if this node loaded it."""
        if self._engine is not None and self._owns_engine:
            await self._engine.close()
            self._engine = None

    async def ready(self, client: HttpClient) -> bool:
        """Ready once the model is loaded."""
        return self._engine is not None and self._engine.loaded

    async def models(self, client: HttpClient) -> Sequence[str]:
        """The one model this node serves."""
        return (self.engine.name,)

    async def process(self, data: Any, ctx: Context) -> Completion | TokenStream:
        """Answer a :class:`ChatRequest`: a stream if it asks for one, else a Completion.

        A stream is returned once its first chunk exists, so a request that fails early
        (a prompt longer than the context) raises here, before anything is sent.
        """
        if not isinstance(data, ChatRequest):
            raise BadRequest(f"{self.name} expects a chat request, got {type(data).__name__}")
        self._check_model(data.model)
        stream = self.engine.generate(self._generation(data))
        try:
            await stream.started()
        except BaseException:
            await stream.aclose()
            raise
        if data.stream:
            return stream
        return await aggregate(stream)

    async def embed(self, request: EmbeddingRequest, ctx: Context) -> Embeddings:
        """One mean-pooled, unit-length vector per input text."""
        self._check_model(request.model)
        vectors, tokens = await self.engine.embed(request.input)
        return Embeddings(
            vectors=tuple(tuple(vector) for vector in vectors),
            model=self.engine.name,
            usage=Usage(prompt_tokens=tokens),
        )

    def _check_model(self, model: str | None) -> None:
        engine = self.engine
        if not engine.model.answers_to(model):
            raise NotFound(
                f"model {model!r} not found; this server serves {engine.name!r}", param="model"
            )

    def _generation(self, request: ChatRequest) -> Generation:
        _refuse_unsupported(request)
        messages = [(m.role, m.text) for m in request.messages]
        if self.engine.model.chat_format == "gemma":
            messages = fold_for_gemma(messages)
        if not messages:
            raise BadRequest("a chat request needs at least one message", param="messages")
        return Generation(
            messages=tuple(messages),
            max_tokens=request.max_tokens or self.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            options=request.extra,
            output=json_output(request.response_format),
        )


def _refuse_unsupported(request: ChatRequest) -> None:
    """What a small local text model cannot do is a 400 naming the field, never ignored."""
    if request.tools:
        raise BadRequest("the local model cannot call tools", param="tools")
    if request.think not in (None, False):
        raise BadRequest("the local model does not reason before answering", param="think")
    if request.logprobs or request.top_logprobs:
        raise BadRequest("the local model does not return logprobs", param="logprobs")
    for i, message in enumerate(request.messages):
        for part in message.parts:
            if part.type != "text":
                raise BadRequest(
                    f"the local model reads text only, not {part.type!r} parts",
                    param=f"messages[{i}].content",
                )


def fold_for_gemma(messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Gemma's template knows only user and model turns (llama.cpp drops the rest).

    System and developer text goes in front of the first user turn, as Google's own
    template does; tool results become user turns.
    """
    system = [text for role, text in messages if role in ("system", "developer")]
    turns = [
        ("assistant" if role == "assistant" else "user", text)
        for role, text in messages
        if role not in ("system", "developer")
    ]
    if system:
        preamble = "\n\n".join(system)
        if turns and turns[0][0] == "user":
            turns[0] = ("user", f"{preamble}\n\n{turns[0][1]}")
        else:
            turns.insert(0, ("user", preamble))
    return turns
