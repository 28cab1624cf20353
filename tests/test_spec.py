"""services.yaml: interpolation, validation with paths, every problem reported at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from meshkit import Mesh, SpecError
from meshkit.spec import interpolate, load, loads, variables

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
