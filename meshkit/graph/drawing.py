"""Pictures of a pipeline: Mermaid and Graphviz DOT (``meshkit graph services.yaml``).

Each node is drawn with its type, optional nodes dashed, and every edge with its
condition's text when it has one.
"""

from __future__ import annotations

from .orchestrator import ServiceOrchestrator


def _ids(orchestrator: ServiceOrchestrator) -> dict[str, str]:
    return {name: f"n{i}" for i, name in enumerate(orchestrator.services)}


def _mermaid_text(text: str) -> str:
    return (
        text.replace('"', "#quot;").replace("|", "#124;").replace("<", "#lt;").replace(">", "#gt;")
    )


def to_mermaid(orchestrator: ServiceOrchestrator) -> str:
    """The graph as a Mermaid flowchart: request → nodes (name, type) → response."""
    ids = _ids(orchestrator)
    lines = ["flowchart LR", "  request([request])", "  response([response])"]
    for name, service in orchestrator.services.items():
        kind = service.service_type.value
        lines.append(f'  {ids[name]}["{_mermaid_text(name)}<br/><i>{kind}</i>"]')
        if orchestrator.is_optional(name):
            lines.append(f"  class {ids[name]} optional")
    for name in orchestrator.services:
        if not orchestrator.predecessors(name):
            lines.append(f"  request --> {ids[name]}")
    for e in orchestrator.edges:
        label: str | None = e.label or getattr(e.when, "source", None)
        if label is None and e.when is not None:
            label = "condition"
        arrow = f'-->|"{_mermaid_text(label)}"|' if label else "-->"
        lines.append(f"  {ids[e.src]} {arrow} {ids[e.dst]}")
    lines.append(f"  {ids[orchestrator.sink]} --> response")
    lines.append("  classDef optional stroke-dasharray: 4 4")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(orchestrator: ServiceOrchestrator) -> str:
    """The graph in Graphviz DOT, conditions as edge labels, optional nodes dashed."""
    ids = _ids(orchestrator)
    lines = [
        f'digraph "{_dot_text(orchestrator.name)}" {{',
        "  rankdir=LR;",
        "  node [shape=box, style=rounded];",
        "  request [shape=oval]; response [shape=oval];",
    ]
    for name, service in orchestrator.services.items():
        style = ', style="rounded,dashed"' if orchestrator.is_optional(name) else ""
        label = f"{_dot_text(name)}\\n({service.service_type.value})"
        lines.append(f'  {ids[name]} [label="{label}"{style}];')
    for name in orchestrator.services:
        if not orchestrator.predecessors(name):
            lines.append(f"  request -> {ids[name]};")
    for e in orchestrator.edges:
        edge_label: str | None = e.label or getattr(e.when, "source", None)
        attr = f' [label="{_dot_text(edge_label)}"]' if edge_label else ""
        lines.append(f"  {ids[e.src]} -> {ids[e.dst]}{attr};")
    lines.append(f"  {ids[orchestrator.sink]} -> response;")
    lines.append("}")
    return "\n".join(lines) + "\n"
