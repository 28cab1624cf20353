"""Typed ports: what each service type takes and gives, and the values that flow.

A port names the kind of value on an edge. The orchestrator checks every connection
when a graph is planned and adapts values where the conversion is lossless and
obvious (a chunk stream is read whole for a node that takes text; text becomes a user
message for a node that takes a chat request).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from .base import MicroService, ServiceType


class Port(enum.StrEnum):
    """The kind of value a node takes or gives."""

    REQUEST = "request"  #: a ChatRequest
    TEXT = "text"  #: a str
    VECTORS = "vectors"  #: an Embeddings
    DOCUMENTS = "documents"  #: a tuple of Document
    STREAM = "stream"  #: a chunk stream (or a whole Completion when not streaming)
    ANY = "any"  #: anything (custom nodes that declare nothing)


@attrs.frozen
class Document:
    """A piece of text a retriever found, with where it came from and how well it scored."""

    text: str
    source: str = ""
    score: float = 0.0
    id: str = ""
    meta: Mapping[str, Any] = attrs.field(factory=dict)


Documents = tuple[Document, ...]

#: (takes, gives) per built-in type; ``None`` as gives means "the same as its input".
_DEFAULTS: dict[ServiceType, tuple[frozenset[Port], Port | None]] = {
    ServiceType.LLM: (frozenset({Port.REQUEST, Port.TEXT}), Port.STREAM),
    ServiceType.EMBEDDING: (frozenset({Port.REQUEST, Port.TEXT}), Port.VECTORS),
    ServiceType.RETRIEVER: (frozenset({Port.VECTORS, Port.REQUEST, Port.TEXT}), Port.DOCUMENTS),
    ServiceType.RERANKER: (frozenset({Port.DOCUMENTS}), Port.DOCUMENTS),
    ServiceType.GUARDRAIL: (frozenset({Port.STREAM, Port.TEXT, Port.REQUEST}), None),
    ServiceType.PROMPT: (frozenset({Port.DOCUMENTS, Port.REQUEST, Port.TEXT}), Port.REQUEST),
    ServiceType.CUSTOM: (frozenset({Port.ANY}), Port.ANY),
}


def takes(service: MicroService) -> frozenset[Port]:
    """Ports ``service`` accepts: its ``takes`` attribute, else its type's default."""
    declared = getattr(service, "takes", None)
    if declared is not None:
        return frozenset(Port(p) for p in declared)
    return _DEFAULTS[service.service_type][0]


def gives(service: MicroService) -> Port | None:
    """Port ``service`` produces (None: the same as its input)."""
    if hasattr(service, "gives"):
        declared = service.gives
        return None if declared is None else Port(declared)
    return _DEFAULTS[service.service_type][1]


#: Built-in types whose nodes read an :class:`Inputs` of several predecessors (the
#: documents in it); the others take one value, so a join into them could never serve.
_JOINS = frozenset({ServiceType.PROMPT, ServiceType.RERANKER})


def joins(service: MicroService) -> bool:
    """Whether ``service`` can take the :class:`Inputs` of several predecessors."""
    return Port.ANY in takes(service) or service.service_type in _JOINS


def connects(src: Port, dst: frozenset[Port]) -> bool:
    """Whether a value on port ``src`` can feed a node taking ``dst``."""
    if src is Port.ANY or Port.ANY in dst or src in dst:
        return True
    return _conversion(src, dst) is not None


def _conversion(src: Port, dst: frozenset[Port]) -> Port | None:
    """The port a value is converted to on its way from ``src`` into ``dst``."""
    for target in _CONVERSIONS.get(src, ()):
        if target in dst:
            return target
    return None


#: Lossless conversions, in order of preference.
_CONVERSIONS: dict[Port, tuple[Port, ...]] = {
    Port.STREAM: (Port.TEXT, Port.REQUEST),  # read whole, then as a user message
    Port.TEXT: (Port.REQUEST, Port.STREAM),
    Port.REQUEST: (Port.TEXT,),  # the last user message
}


def arrival(src: Port, dst: frozenset[Port]) -> Port:
    """The port a value from ``src`` has when it reaches a node taking ``dst``."""
    if Port.ANY in dst:
        return Port.ANY  # delivered exactly as produced
    if src in dst or src is Port.ANY:
        return src
    target = _conversion(src, dst)
    if target is None:
        raise ValueError(f"{src.value} does not connect to {sorted(p.value for p in dst)}")
    return target


@attrs.frozen
class Inputs(Mapping[str, Any]):
    """What a node with several predecessors gets: each live input by node name.

    Inputs whose edge was not taken (or whose node was skipped) are absent, so a join
    sees exactly the branches that ran; nothing is merged or overwritten.
    """

    by_node: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.by_node[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_node)

    def __len__(self) -> int:
        return len(self.by_node)

    def of_type(self, kind: type[Any] | tuple[type[Any], ...]) -> list[Any]:
        """The inputs that are instances of ``kind``, in edge order."""
        return [v for v in self.by_node.values() if isinstance(v, kind)]


def documents_in(data: Any, *, prefer: str | None = None) -> Documents | None:
    """The documents in a node's input: a tuple of them, or one joined input holding them.

    With several document inputs, ``prefer`` names the node to take them from; without
    it, the last one in edge order wins only if the others are empty (a fallback path).
    """
    if isinstance(data, tuple) and all(isinstance(d, Document) for d in data):
        return data
    if not isinstance(data, Inputs):
        return None
    if prefer is not None and prefer in data:
        found = documents_in(data[prefer])
        if found is not None:
            return found
    candidates = [(k, v) for k, v in data.items() if documents_in(v) is not None]
    if not candidates:
        return None
    nonempty = [v for _, v in candidates if v]
    if len(nonempty) > 1:
        names = ", ".join(k for k, v in candidates if v)
        raise ValueError(f"documents arrive from several nodes ({names}); set params.input")
    return tuple(nonempty[0]) if nonempty else ()
