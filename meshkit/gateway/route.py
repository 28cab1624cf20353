"""A mounted route: one dialect's endpoints answering from one pipeline."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ..errors import MeshError
from ..graph.orchestrator import ServiceOrchestrator
from ..nodes.base import MicroService, ServiceType

#: A value looked up once per route (its default model, its whole-answer path) before it was.
UNSET = object()


@attrs.define
class Route:
    """Everything a dialect's handlers need to answer for one pipeline.

    Attributes:
        dialect: ``"openai"`` or ``"ollama"``.
        orchestrator: The pipeline requests run through.
        prefix: Path prefix the dialect's endpoints are mounted under.
        model: Default model for requests that name none (None: the LLM node's own).
        embeddings: The node answering ``/v1/embeddings``, if any.
    """

    dialect: str
    orchestrator: ServiceOrchestrator
    prefix: str = ""
    model: str | None = None
    embeddings: MicroService | None = None
    _default: str | object | None = attrs.field(default=UNSET, init=False, eq=False, repr=False)
    #: The route's whole-answer path (:class:`meshkit.gateway.whole.Whole`), once looked up.
    whole: object = attrs.field(default=UNSET, init=False, eq=False, repr=False)

    @property
    def llms(self) -> list[MicroService]:
        """The pipeline's LLM nodes."""
        return [s for s in self.orchestrator.services.values() if s.service_type is ServiceType.LLM]

    def default_model(self) -> str | None:
        """The model a request without one gets (looked up once: the pipeline is
        complete by the time it is first asked, when the app is built or at the first
        request)."""
        default = self._default
        if default is UNSET:
            default = self._default = self._find_default()
        return default  # type: ignore[return-value]

    def _find_default(self) -> str | None:
        if self.model:
            return self.model
        for llm in self.llms:
            model = getattr(llm, "model", None)
            if model:
                return str(model)
        return None

    async def model_names(self) -> Sequence[str]:
        """What the pipeline's LLMs list, falling back to the default model."""
        names: list[str] = []
        errors: list[MeshError] = []
        for llm in self.llms:
            try:
                for name in await llm.models(self.orchestrator.client):
                    if name not in names:
                        names.append(name)
            except MeshError as exc:
                errors.append(exc)
        if not names and errors:
            raise errors[0]
        default = self.default_model()
        if not names and default:
            names.append(default)
        return names
