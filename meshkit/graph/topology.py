"""Graph checks at build time (ports, shape) and pictures of a graph (Mermaid, DOT).

:func:`analyse` is what :meth:`ServiceOrchestrator.plan` runs: it orders the nodes,
finds the final one, and works out the port on every edge, reporting every problem
at once with both ends named (a join into a node that takes one value names both
edges). :class:`Edge` is the shape's unit: an arrow with an optional condition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from ..nodes.base import Context, MicroService
from ..nodes.ports import Port, arrival, connects, gives, joins, takes

#: A condition on an edge: the source node's output and the request context in, a verdict out.
ConditionFn = Callable[[Any, Context], bool]


@attrs.frozen
class Edge:
    """A connection ``src -> dst``, taken only when ``when`` (if any) holds."""

    src: str
    dst: str
    when: ConditionFn | None = attrs.field(default=None, eq=False)
    label: str | None = None


class EdgeLike(Protocol):
    """What the checks read from an edge."""

    @property
    def src(self) -> str: ...
    @property
    def dst(self) -> str: ...
    @property
    def when(self) -> Any: ...
    @property
    def label(self) -> str | None: ...


@attrs.frozen
class Analysis:
    """The outcome of checking a graph."""

    order: tuple[str, ...]
    sink: str | None
    problems: tuple[str, ...]
    #: Port each node produces.
    output: Mapping[str, Port]
    #: Port a value has on arriving over each edge (after conversion).
    delivered: Mapping[tuple[str, str], Port]


def _port_names(ports: frozenset[Port]) -> str:
    return " or ".join(sorted(p.value for p in ports))


def analyse(services: Mapping[str, MicroService], edges: Sequence[EdgeLike]) -> Analysis:
    """Check a graph; never raises, returns the problems found."""
    problems: list[str] = []
    if not services:
        return Analysis((), None, ("the graph has no nodes",), {}, {})
    preds: dict[str, list[EdgeLike]] = {n: [] for n in services}
    succs: dict[str, list[EdgeLike]] = {n: [] for n in services}
    for e in edges:
        if e.src not in services or e.dst not in services:
            missing = e.src if e.src not in services else e.dst
            problems.append(f"edge {e.src} -> {e.dst}: unknown node {missing!r}")
            continue
        preds[e.dst].append(e)
        succs[e.src].append(e)
    # Topological order (Kahn), keeping declaration order among ready nodes.
    indegree = {n: len(preds[n]) for n in services}
    ready = [n for n in services if indegree[n] == 0]
    order: list[str] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for e in succs[node]:
            indegree[e.dst] -= 1
            if indegree[e.dst] == 0:
                ready.append(e.dst)
    if len(order) < len(services):
        stuck = [n for n in services if n not in order]
        problems.append(f"nodes {', '.join(stuck)} form a cycle")
        return Analysis(tuple(order), None, tuple(problems), {}, {})
    sinks = [n for n in order if not succs[n]]
    sink = sinks[-1]
    for other in sinks[:-1]:
        problems.append(
            f"node {other!r}: its output reaches no final node (the graph's "
            f"answer comes from {sink!r}; connect {other!r} on to it or remove it)"
        )
    output: dict[str, Port] = {}
    delivered: dict[tuple[str, str], Port] = {}
    for node in order:
        accepts = takes(services[node])
        incoming: list[Port] = []
        if len(preds[node]) > 1 and not joins(services[node]):
            first, second = preds[node][:2]
            problems.append(
                f"edges {first.src} -> {node} and {second.src} -> {node}: {node!r} takes one "
                f"{_port_names(accepts)}, not the inputs of several nodes; join them in a node "
                "that takes several (a prompt, a custom node) or keep one edge"
            )
        if not preds[node]:
            if not connects(Port.REQUEST, accepts):
                problems.append(
                    f"node {node!r} starts the graph, so it gets the chat request, "
                    f"but it takes {_port_names(accepts)}"
                )
            else:
                incoming.append(arrival(Port.REQUEST, accepts))
        for e in preds[node]:
            src_port = output.get(e.src, Port.ANY)
            when = e.when
            if getattr(when, "uses_output", False) and src_port is Port.STREAM:
                problems.append(
                    f"edge {e.src} -> {e.dst}: the condition reads {e.src!r}'s "
                    "output, a stream; conditions on streams may only read request "
                    "and headers"
                )
            if not connects(src_port, accepts):
                problems.append(
                    f"edge {e.src} -> {e.dst}: {e.src!r} gives {src_port.value} but "
                    f"{e.dst!r} takes {_port_names(accepts)}"
                )
                continue
            port = arrival(src_port, accepts)
            delivered[(e.src, e.dst)] = port
            incoming.append(port)
        declared = gives(services[node])
        output[node] = declared if declared is not None else (incoming[0] if incoming else Port.ANY)
    for node in order:
        if output.get(node) is not Port.STREAM or len(succs[node]) < 2:
            continue
        lazy = [e.dst for e in succs[node] if delivered.get((node, e.dst)) is Port.STREAM]
        whole = [
            e.dst for e in succs[node] if delivered.get((node, e.dst)) not in (Port.STREAM, None)
        ]
        if lazy and whole:
            problems.append(
                f"edges {node} -> {lazy[0]} and {node} -> {whole[0]}: {whole[0]!r} reads "
                f"{node!r}'s stream whole while {lazy[0]!r} reads it chunk by chunk, and the "
                "shared stream's bounded buffer would stall; give them separate upstream "
                "nodes or let both read chunk by chunk"
            )
    return Analysis(tuple(order), sink, tuple(problems), output, delivered)


# -- pictures ---------------------------------------------------------------------------
