"""`PromptBuilder`: a template turns the question (and retrieved documents) into messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import BadRequest
from ..protocol.types import ChatRequest, Message
from .base import Context, MicroService, ServiceType
from .ports import Documents, Inputs, documents_in

DEFAULT_SYSTEM = (
    "Answer the question using only the numbered context passages. Cite the passages "
    "you use as [1], [2]. If the context does not contain the answer, say so."
)
DEFAULT_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}"
DEFAULT_DOCUMENT = "[{index}] ({source}) {text}"
_FIELD = re.compile(r"\{(question|context|index|source|text|score)\}")


def fill(template: str, values: Mapping[str, Any]) -> str:
    """Replace ``{name}`` for the known names only; other braces stay as written."""
    return _FIELD.sub(lambda m: str(values.get(m.group(1), m.group(0))), template)


class PromptBuilder(MicroService):
    """Builds the chat request an LLM answers from.

    Takes documents (from a retriever or reranker), the request, or a join of them.
    The caller's turns (and system messages) are kept in their order, with the
    request's tools and response format; the last user message's text becomes
    ``template`` filled with ``{question}`` and ``{context}`` (the documents, each
    written with ``document``), in place and keeping its images, and ``system`` goes
    first. The documents used are reported to the client as ``sources`` (see
    :class:`~meshkit.orchestrator.ServiceOrchestrator`).

    Params: ``system``, ``template``, ``document``, ``empty`` (template used when no
    document arrived; default: the question unchanged), ``max_documents``, ``input``.
    """

    service_type = ServiceType.PROMPT

    def __init__(
        self, name: str, *, params: Mapping[str, Any] | None = None, timeout: float = 60.0
    ) -> None:
        super().__init__(name, params=params, timeout=timeout)
        p = self.params
        self.system = str(p.get("system", DEFAULT_SYSTEM))
        self.template = str(p.get("template", DEFAULT_TEMPLATE))
        self.document = str(p.get("document", DEFAULT_DOCUMENT))
        self.empty = p.get("empty")
        self.max_documents = int(p.get("max_documents", 8))
        self.excerpt = int(p.get("source_excerpt", 240))

    async def process(self, data: Any, ctx: Context) -> ChatRequest:
        """The request to send on, with the context filled in."""
        request = ctx.request
        if isinstance(data, ChatRequest):
            request = data
        elif isinstance(data, Inputs):
            found = data.of_type(ChatRequest)
            request = found[0] if found else request
        if not isinstance(request, ChatRequest):
            raise BadRequest(f"{self.name} needs the chat request to build a prompt")
        try:
            docs = documents_in(data, prefer=self.params.get("input"))
        except ValueError as exc:
            raise BadRequest(f"{self.name}: {exc}") from exc
        docs = (docs or ())[: self.max_documents]
        ctx.meta["sources"] = [self._source(i, d) for i, d in enumerate(docs, 1)]
        return self.build(request, docs)

    def build(self, request: ChatRequest, docs: Documents) -> ChatRequest:
        """Fill the templates for ``request`` and ``docs``."""
        question = request.prompt
        context = "\n\n".join(
            fill(self.document, {"index": i, "source": d.source, "text": d.text, "score": d.score})
            for i, d in enumerate(docs, 1)
        )
        if docs:
            user = fill(self.template, {"question": question, "context": context})
        elif self.empty is not None:
            user = fill(str(self.empty), {"question": question, "context": ""})
        else:
            user = question
        # The question is rewritten where it stands, keeping its images and the turns
        # after it (a tool follow-up must still read assistant(tool_calls), tool, ...).
        turns = list(request.messages)
        for i in range(len(turns) - 1, -1, -1):
            if turns[i].role == "user":
                turns[i] = turns[i].with_text(user)
                break
        else:
            turns.append(Message("user", user))
        system = [Message("system", self.system)] if self.system else []
        return attrs.evolve(request, messages=(*system, *turns))

    def _source(self, index: int, doc: Any) -> dict[str, Any]:
        text = doc.text if len(doc.text) <= self.excerpt else doc.text[: self.excerpt] + "…"
        return {
            "index": index,
            "id": doc.id,
            "source": doc.source,
            "score": doc.score,
            "text": text,
        }
