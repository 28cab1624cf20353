"""Graph checks at build time, the condition language, and the pictures of a graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshkit import ChatRequest, Mesh, Message, SpecError
from meshkit.cli import main
from meshkit.graph.conditions import ConditionError, compile_condition
from meshkit.nodes.base import Context
from meshkit.nodes.ports import Document
from meshkit.spec import loads

LLM = {"type": "llm", "endpoint": "http://llm:1"}
EMBED = {"type": "embedding", "endpoint": "http://embed:1"}


def mesh(services: dict[str, Any], edges: list[Any]) -> Mesh:
    return Mesh(
        loads(yaml.safe_dump({"services": services, "pipelines": {"p": {"edges": edges}}}), env={})
    )


def problems(services: dict[str, Any], edges: list[Any]) -> str:
    with pytest.raises(SpecError) as err:
        mesh(services, edges)
    return "\n".join(err.value.problems)


class TestValidation:
    """Ports, shape and references are checked when the YAML is loaded, naming both ends."""

    @pytest.mark.parametrize(
        ("services", "edges", "expected"),
        [
            (
                {
                    "retrieve": {"type": "retriever", "params": {"embedding": "embed"}},
                    "embed": EMBED,
                    "llm": LLM,
                },
                ["embed -> retrieve", "retrieve -> llm"],
                "pipelines.p: edge retrieve -> llm: 'retrieve' gives documents but 'llm' takes "
                "request or text",
            ),
            (
                {"rerank": {"type": "reranker"}, "llm": LLM},
                ["rerank -> llm"],
                "node 'rerank' starts the graph, so it gets the chat request, "
                "but it takes documents",
            ),
            (
                {"a": LLM, "b": LLM, "c": {"type": "prompt"}},
                ["c -> a", "c -> b"],
                "node 'a': its output reaches no final node",
            ),
            (
                {"a": {"type": "prompt"}, "b": {"type": "prompt"}},
                ["a -> b", "b -> a"],
                "b -> a: would make a cycle",
            ),
            (
                {"retrieve": {"type": "retriever", "params": {"embedding": "nope"}}, "llm": LLM},
                ["retrieve -> llm"],
                "services.retrieve.params.embedding: unknown service 'nope'",
            ),
            (
                {"a": {"type": "prompt"}, "b": LLM},
                [{"from": "a", "to": "b", "when": "len(x) > 0"}],
                "pipelines.p.edges[0].when: a -> b: unknown name 'x'",
            ),
            (
                {"a": {"type": "prompt"}, "b": LLM},
                [{"from": "a", "to": "b", "when": "__import__('os').system('x')"}],
                "only these functions may be called",
            ),
            (
                {"llm": LLM, "g": {"type": "guardrail", "params": {"words": ["x"]}}},
                [{"from": "llm", "to": "g", "when": "len(output) > 3"}],
                "edge llm -> g: the condition reads 'llm''s output, a stream",
            ),
            (
                {
                    "llm": LLM,
                    "g": {"type": "guardrail", "params": {"words": ["x"]}},
                    "p": {"type": "prompt"},
                    "j": {"type": "custom", "class": "meshkit:MicroService"},
                },
                ["llm -> g", "llm -> p", "g -> j", "p -> j"],
                "edges llm -> g and llm -> p: 'p' reads 'llm''s stream whole while 'g' reads it",
            ),
            (
                {"g": {"type": "guardrail", "params": {"action": "explode", "words": ["x"]}}},
                ["g"],
                "services.g: params.action must be one of redact, block",
            ),
        ],
        ids=[
            "incompatible-ports",
            "bad-first-node",
            "unreachable-output",
            "cycle",
            "dangling-service-ref",
            "unknown-name",
            "no-calls",
            "condition-on-stream",
            "tee-would-stall",
            "bad-param",
        ],
    )
    def test_problem(self, services: dict[str, Any], edges: list[Any], expected: str) -> None:
        if edges == ["g"]:
            with pytest.raises(SpecError) as err:
                Mesh(
                    loads(
                        yaml.safe_dump(
                            {"services": services, "pipelines": {"p": {"nodes": ["g"]}}}
                        ),
                        env={},
                    )
                )
            assert expected in "\n".join(err.value.problems)
            return
        assert expected in problems(services, edges)

    def test_every_problem_is_reported_at_once(self) -> None:
        found = problems(
            {"rerank": {"type": "reranker"}, "llm": LLM, "x": EMBED}, ["rerank -> llm", "x -> llm"]
        )
        assert "starts the graph" in found and "'x' gives vectors but 'llm' takes" in found

    def test_the_example_is_valid(self) -> None:
        rag = Mesh.from_file(Path("examples/rag/services.yaml"), env={}).pipelines["rag"]
        assert rag.sink == "guard"


def ctx(**headers: str) -> Context:
    return Context(
        client=None,
        headers=headers,  # type: ignore[arg-type]
        request=ChatRequest(messages=(Message("user", "why?"),), model="m1"),
    )


DOCS = (Document("a", "a.md", 0.9), Document("b", "b.md", 0.2))


class TestConditions:
    """The ``when:`` language reads output, request and headers, and nothing else."""

    @pytest.mark.parametrize(
        ("source", "output", "expected"),
        [
            ("len(output) > 0", DOCS, True),
            ("len(output) > 0", (), False),
            ("output[0].score >= 0.5 and output[0].source == 'a.md'", DOCS, True),
            ("output[5].score > 0", DOCS, False),  # out of range reads as none → comparison false
            ('request.model == "m1"', None, True),
            ('request.model in ["m2", "m3"]', None, False),
            ('headers["X-Tier"] == "pro"', None, True),
            ('headers["missing"] == none', None, True),
            ("lower(request.prompt) == 'why?' and not false", None, True),
            ('matches(output, "^err")', "error: x", True),
            ("1 < len(output) <= 2", DOCS, True),
        ],
    )
    def test_evaluates(self, source: str, output: Any, expected: bool) -> None:
        cond = compile_condition(source)
        try:
            assert cond(output, ctx(**{"x-tier": "pro"})) is expected
        except TypeError:
            assert expected is False

    @pytest.mark.parametrize(
        "source",
        [
            "output.__class__",
            "().__class__.__bases__",
            "open('f')",
            "[x for x in output]",
            "lambda: 1",
            "output if true else 1",
            "a := 1",
            "request.messages.__len__()",
            "len(output, key=1)",
            "output ** 2",
        ],
    )
    def test_rejects(self, source: str) -> None:
        with pytest.raises(ConditionError):
            compile_condition(source)

    def test_unknown_attribute_fails_when_read(self) -> None:
        with pytest.raises(ConditionError):
            compile_condition("output.nope")(DOCS[0], ctx())


class TestPictures:
    """``meshkit graph`` draws the pipeline with types and conditions."""

    def test_mermaid(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["graph", "examples/rag/services.yaml"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("flowchart LR")
        assert '"retrieve<br/><i>retriever</i>"' in out
        assert '-->|"len(output) #gt; 0"|' in out

    def test_dot(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["graph", "examples/rag/services.yaml", "--format", "dot"]) == 0
        out = capsys.readouterr().out
        assert out.startswith('digraph "rag"')
        assert '[label="len(output) == 0"]' in out
        assert 'label="guard\\n(guardrail)"' in out

    def test_unknown_pipeline(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["graph", "examples/rag/services.yaml", "--pipeline", "x"]) == 1
