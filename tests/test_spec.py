"""services.yaml: interpolation, validation with paths, every problem reported at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshkit import Mesh, SpecError
from meshkit.spec import ServiceSpec, interpolate, load, loads, variables

GOOD = """
services:
  llm:
    type: llm
    endpoint: ${LLM_ENDPOINT:-http://localhost:11434}
    model: ${LLM_MODEL:-llama3.2:1b}
    timeout: ${LLM_TIMEOUT:-60}
pipelines:
  chat:
    nodes: [llm]
gateway:
  port: ${MESHKIT_PORT:-8008}
  routes:
    - {dialect: openai, pipeline: chat}
    - {dialect: ollama, pipeline: chat}
"""

BROKEN = """
services:
  llm:
    type: llm
    endpoint: not-a-url
    timeout: soon
  guard:
    type: teleporter
pipelines:
  chat:
    edges: ["llm -> ghost"]
gateway:
  port: 99999
  routes:
    - {dialect: grpc, pipeline: nowhere}
"""


class TestInterpolation:
    """${VAR}, ${VAR:-default}, ${VAR-default} and $$."""

    @pytest.mark.parametrize(
        ("text", "env", "expected"),
        [
            ("${A}", {"A": "x"}, "x"),
            ("${A}", {}, ""),
            ("${A:-d}", {}, "d"),
            ("${A:-d}", {"A": ""}, "d"),
            ("${A-d}", {"A": ""}, ""),
            ("${A-d}", {}, "d"),
            ("http://${H:-localhost}:${P:-80}/x", {"P": "81"}, "http://localhost:81/x"),
            ("cost $$5", {}, "cost $5"),
        ],
    )
    def test_cases(self, text: str, env: dict[str, str], expected: str) -> None:
        assert interpolate(text, env) == expected

    def test_environment_cannot_change_structure(self) -> None:
        spec = loads(GOOD, env={"LLM_MODEL": "a\n  evil: true"})
        assert spec.services["llm"].model == "a\n  evil: true"

    def test_variables_lists_names(self) -> None:
        assert variables(GOOD) == {"LLM_ENDPOINT", "LLM_MODEL", "LLM_TIMEOUT", "MESHKIT_PORT"}


class TestLoading:
    """Good files load into frozen specs; defaults come from the environment."""

    def test_defaults(self) -> None:
        spec = loads(GOOD, env={})
        llm = spec.services["llm"]
        assert llm.endpoints == ("http://localhost:11434",)
        assert llm.model == "llama3.2:1b"
        assert llm.timeout == 60.0
        assert spec.gateway.port == 8008
        assert [r.dialect for r in spec.gateway.routes] == ["openai", "ollama"]

    def test_environment_overrides(self) -> None:
        spec = loads(
            GOOD,
            env={
                "LLM_ENDPOINT": "http://a:1,http://b:2/",
                "LLM_MODEL": "qwen",
                "MESHKIT_PORT": "9000",
                "LLM_TIMEOUT": "2.5",
            },
        )
        assert spec.services["llm"].endpoints == ("http://a:1", "http://b:2")
        assert spec.services["llm"].model == "qwen"
        assert spec.services["llm"].timeout == 2.5
        assert spec.gateway.port == 9000

    def test_shipped_file_is_valid(self) -> None:
        spec = load("services.yaml", env={})
        Mesh(spec)
        assert spec.services["llm"].model == "llama3.2:1b" or spec.services["llm"].local


class TestProblems:
    """A broken file lists every problem with its path."""

    def test_all_problems_at_once(self) -> None:
        with pytest.raises(SpecError) as info:
            loads(BROKEN, env={})
        problems = "\n".join(info.value.problems)
        for expected in (
            "services.llm.endpoint: not a URL",
            "services.llm.timeout: must be a positive number",
            "services.guard.type: must be one of",
            "pipelines.chat.edges[0]: unknown service 'ghost'",
            "gateway.port: must be a port number",
            "gateway.routes[0].dialect: must be one of openai, ollama",
            "gateway.routes[0].pipeline: unknown pipeline 'nowhere'",
        ):
            assert expected in problems
        assert len(info.value.problems) >= 7

    def test_unknown_keys_are_reported(self) -> None:
        with pytest.raises(SpecError) as info:
            loads(GOOD.replace("    timeout:", "    timout:"), env={})
        assert any("services.llm.timout: unknown key" in p for p in info.value.problems)

    def test_graph_problems(self) -> None:
        text = GOOD.replace(
            "nodes: [llm]", "nodes: [llm, other]\n    edges: ['llm -> other', 'other -> llm']"
        ).replace("pipelines:", "  other:\n    type: llm\n    endpoint: http://x:1\npipelines:")
        with pytest.raises(SpecError) as info:
            Mesh(loads(text, env={}))
        assert "cycle" in "\n".join(info.value.problems)

    def test_not_yaml(self) -> None:
        with pytest.raises(SpecError) as info:
            loads("services: [", env={})
        assert "not valid YAML" in info.value.problems[0]


class TestValidateCommand:
    """`meshkit validate` prints every problem and exits non-zero."""

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshkit", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_broken_file(self, tmp_path) -> None:
        path = tmp_path / "broken.yaml"
        path.write_text(textwrap.dedent(BROKEN))
        result = self.run("validate", str(path))
        assert result.returncode == 1
        assert "services.llm.endpoint: not a URL" in result.stderr
        assert "gateway.routes[0].pipeline: unknown pipeline 'nowhere'" in result.stderr
        assert result.stderr.count("\n  ") >= 7

    def test_good_file(self) -> None:
        result = self.run("validate", "services.yaml")
        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout


def services_file(services: dict[str, Any], pipelines: dict[str, Any], **gateway: Any) -> str:
    return yaml.safe_dump({"services": services, "pipelines": pipelines, "gateway": gateway})


LLM = {"type": "llm", "endpoint": "http://llm:1"}


class TestKeysPerType:
    """A key the service's type does not use is an error naming the type."""

    @pytest.mark.parametrize(
        ("service", "key"),
        [
            ({"type": "embedding", "endpoint": "http://e:1", "retries": 3}, "retries"),
            ({"type": "reranker", "fallback": "llm"}, "fallback"),
            (
                {"type": "guardrail", "params": {"words": ["x"]}, "balancer": "round_robin"},
                "balancer",
            ),
            ({"type": "prompt", "health_interval": 0}, "health_interval"),
            ({"type": "retriever", "max_connections": 5}, "max_connections"),
        ],
    )
    def test_refused(self, service: dict[str, Any], key: str) -> None:
        with pytest.raises(SpecError) as info:
            loads(services_file({"llm": LLM, "s": service}, {"p": {"nodes": ["llm"]}}), env={})
        article = "an" if service["type"][0] in "aeiou" else "a"
        assert info.value.problems == [
            f"services.s.{key}: {article} {service['type']} service does not use this key "
            + info.value.problems[0].split("does not use this key ", 1)[1]
        ]
        assert f"services.s.{key}: {article} {service['type']} service" in info.value.problems[0]

    def test_a_class_reads_what_it_likes(self) -> None:
        spec = loads(
            services_file(
                {"s": {"type": "guardrail", "class": "meshkit:MicroService", "retries": 1}},
                {"p": {"nodes": ["s"]}},
            ),
            env={},
        )
        assert spec.services["s"].retries == 1

    def test_upstream_services_take_max_connections(self) -> None:
        services = {
            "llm": {**LLM, "max_connections": "8"},
            "embed": {"type": "embedding", "endpoint": "http://e:1", "max_connections": 4},
            "rerank": {"type": "reranker", "endpoint": "http://r:1"},
        }
        spec = loads(services_file(services, {"p": {"nodes": ["llm"]}}), env={})
        found = {name: s.max_connections for name, s in spec.services.items()}
        assert found == {"llm": 8, "embed": 4, "rerank": 1000}


class TestGatewayKeys:
    """``metrics`` and ``send_timeout`` on the gateway, with their defaults."""

    def test_defaults(self) -> None:
        gateway = loads(GOOD, env={}).gateway
        assert gateway.metrics is True
        assert gateway.send_timeout == 60.0

    def test_from_the_environment(self) -> None:
        text = services_file(
            {"llm": LLM},
            {"p": {"nodes": ["llm"]}},
            metrics="${METRICS:-true}",
            send_timeout="${SEND_TIMEOUT:-60}",
        )
        gateway = loads(text, env={"METRICS": "off", "SEND_TIMEOUT": "2.5"}).gateway
        assert gateway.metrics is False
        assert gateway.send_timeout == 2.5


class TestEveryProblemAtOnce:
    """No problem hides another: sections, references and graphs are checked apart."""

    def test_unknown_service_does_not_stop_other_graphs(self, tmp_path: Path) -> None:
        path = tmp_path / "services.yaml"
        path.write_text(
            services_file(
                {"llm": LLM, "rerank": {"type": "reranker"}, "bad": {**LLM, "timeout": "soon"}},
                {
                    "ghostly": {"nodes": ["llm", "ghost"]},
                    "backwards": {"edges": ["rerank -> llm"]},
                    "uses_bad": {"edges": ["bad -> llm"]},
                },
            )
        )
        with pytest.raises(SpecError) as info:
            Mesh.from_file(path, env={})
        assert info.value.problems == [
            "services.bad.timeout: must be a positive number of seconds, not 'soon'",
            "pipelines.ghostly.nodes: unknown service 'ghost'",
            "pipelines.backwards: node 'rerank' starts the graph, so it gets the chat request, "
            "but it takes documents",
            "pipelines.backwards: edge rerank -> llm: 'rerank' gives documents but 'llm' "
            "takes request or text",
        ]

    def test_a_class_that_cannot_be_imported_has_its_path(self) -> None:
        text = services_file(
            {"llm": LLM, "c": {"type": "custom", "class": "no_such_module_x:Thing"}},
            {"p": {"edges": ["c -> llm"]}},
        )
        with pytest.raises(SpecError) as info:
            Mesh(loads(text, env={}))
        assert info.value.problems[0].startswith(
            "services.c.class: cannot load 'no_such_module_x:Thing': No module named"
        )

    def test_a_broken_section_still_gets_its_other_checks(self) -> None:
        text = services_file(
            {"embed": {"type": "embedding", "api": "ollama", "timeout": 0}},
            {"p": {"nodes": ["embed"]}},
        )
        with pytest.raises(SpecError) as info:
            loads(text, env={})
        assert info.value.problems == [
            "services.embed.timeout: must be a positive number of seconds, not 0",
            "services.embed.api: must be one of openai, tei for an embedding service, not 'ollama'",
            "services.embed.endpoint: is required (a base URL such as http://host:11434)",
        ]


class TestJoins:
    """A join into a node that takes one value fails at load time, naming both edges."""

    @pytest.mark.parametrize(
        ("target", "service"),
        [("llm", LLM), ("guard", {"type": "guardrail", "params": {"words": ["x"]}})],
    )
    def test_fan_in_is_refused(self, target: str, service: dict[str, Any]) -> None:
        services = {"a": {"type": "prompt"}, "b": {"type": "prompt"}, target: service}
        if target != "llm":
            services = {"a": LLM, "b": {**LLM, "endpoint": "http://b:1"}, target: service}
        text = services_file(services, {"p": {"edges": [f"a -> {target}", f"b -> {target}"]}})
        with pytest.raises(SpecError) as info:
            Mesh(loads(text, env={}))
        assert len(info.value.problems) == 1
        assert info.value.problems[0].startswith(
            f"pipelines.p: edges a -> {target} and b -> {target}: '{target}' takes one "
        )

    def test_a_prompt_joins(self) -> None:
        text = services_file(
            {"a": {"type": "prompt"}, "b": {"type": "prompt"}, "j": {"type": "prompt"}, "llm": LLM},
            {"p": {"edges": ["a -> j", "b -> j", "j -> llm"]}},
        )
        assert Mesh(loads(text, env={})).pipelines["p"].sink == "llm"


class TestPythonApi:
    """The spec classes check values given in code as the YAML would."""

    def test_defaults_follow_the_timeout(self) -> None:
        spec = ServiceSpec(name="x", type="llm", timeout=2.0)
        assert (spec.connect_timeout, spec.idle_timeout) == (2.0, 30.0)

    def test_bad_values_are_refused(self) -> None:
        with pytest.raises(ValueError, match="timeout: must be a positive number of seconds"):
            ServiceSpec(name="x", type="llm", timeout=-1)
        with pytest.raises(ValueError, match="type: must be one of llm"):
            ServiceSpec(name="x", type="teleporter")
