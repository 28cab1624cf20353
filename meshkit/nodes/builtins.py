"""Factories for the built-in service types, keyed by their YAML ``type``."""

from __future__ import annotations

from collections.abc import Callable

from ..client.http import Timeouts
from ..errors import SpecError
from ..spec import ServiceSpec
from .base import MicroService
from .embedding import RemoteEmbedding
from .guardrail import Guardrail
from .prompt import PromptBuilder
from .reranker import Reranker
from .retriever import VectorRetriever


def _timeouts(spec: ServiceSpec) -> Timeouts:
    return Timeouts(connect=spec.connect_timeout, first_byte=spec.timeout, idle=spec.idle_timeout)


def _checked(spec: ServiceSpec, build: Callable[[], MicroService]) -> MicroService:
    """Run ``build``, turning a bad parameter into a SpecError with the service's path."""
    try:
        return build()
    except (ValueError, TypeError) as exc:
        raise SpecError([f"services.{spec.name}: {exc}"]) from exc


def build_embedding(spec: ServiceSpec) -> MicroService:
    """A `RemoteEmbedding` (``api: openai`` or ``tei``) from its spec."""
    return _checked(
        spec,
        lambda: RemoteEmbedding(
            spec.name,
            endpoint=spec.endpoints,
            api=spec.api,
            path=spec.path,
            model=spec.model,
            timeouts=_timeouts(spec),
            api_key=spec.api_key,
            params=spec.params,
        ),
    )


def build_retriever(spec: ServiceSpec) -> MicroService:
    """A `VectorRetriever` over ``params.path``, embedding through ``params.embedding``."""
    return _checked(
        spec, lambda: VectorRetriever(spec.name, params=spec.params, timeout=spec.timeout)
    )


def build_reranker(spec: ServiceSpec) -> MicroService:
    """A `Reranker`: TEI ``/rerank`` with an endpoint, the local scorer without one."""
    api = spec.api if spec.endpoints else "local"
    if api == "openai":
        api = "tei"
    return _checked(
        spec,
        lambda: Reranker(
            spec.name,
            endpoint=spec.endpoints,
            api=api,
            path=spec.path,
            timeouts=_timeouts(spec),
            params=spec.params,
        ),
    )


def build_guardrail(spec: ServiceSpec) -> MicroService:
    """A `Guardrail` from ``params.patterns``/``words`` and ``action``."""
    return _checked(spec, lambda: Guardrail(spec.name, params=spec.params, timeout=spec.timeout))


def build_prompt(spec: ServiceSpec) -> MicroService:
    """A `PromptBuilder` from its templates."""
    return _checked(
        spec, lambda: PromptBuilder(spec.name, params=spec.params, timeout=spec.timeout)
    )


BUILTINS: dict[str, Callable[[ServiceSpec], MicroService]] = {
    "embedding": build_embedding,
    "guardrail": build_guardrail,
    "prompt": build_prompt,
    "reranker": build_reranker,
    "retriever": build_retriever,
}
