"""The Compose stack validates offline and configures meshkit by environment alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from meshkit.spec import variables

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose" / "docker-compose.yaml"


CI_OVERRIDE = ROOT / "compose" / "docker-compose.ci.yaml"


def rendered(*overrides: Path) -> dict:
    """`docker-compose config` output (Debian's docker-compose, installed by `make test`)."""
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: run `make test` (it installs it) or apt-get it"
    files = [arg for path in (COMPOSE, *overrides) for arg in ("-f", str(path))]
    result = subprocess.run(
        [tool, *files, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


class TestCompose:
    """compose/docker-compose.yaml."""

    def test_config_is_valid_and_complete(self) -> None:
        config = rendered()
        assert {"ollama", "ollama-pull", "gateway", "example"} <= set(config["services"])
        gateway = config["services"]["gateway"]
        assert gateway["environment"]["LLM_ENDPOINT"] == "http://ollama:11434"
        assert gateway["environment"]["LLM_MODEL"] == "llama3.2:1b"
        assert any(p["target"] == 8008 for p in gateway["ports"])
        for name in ("ollama", "gateway", "example"):
            assert "healthcheck" in config["services"][name], name

    def test_every_variable_the_yaml_reads_is_set(self) -> None:
        config = rendered()
        wanted = variables((ROOT / "services.yaml").read_text())
        given = set(config["services"]["gateway"]["environment"])
        assert wanted - given == set(), f"set these in compose: {sorted(wanted - given)}"

    def test_example_service_gets_its_variables(self) -> None:
        env = rendered()["services"]["example"]["environment"]
        assert {"LLM_ENDPOINT", "LLM_MODEL", "EXAMPLE_PORT"} <= set(env)

    def test_dockerfile_serves_the_shipped_file(self) -> None:
        text = (ROOT / "compose" / "Dockerfile").read_text()
        assert 'CMD ["meshkit", "serve", "services.yaml"]' in text
        assert "HEALTHCHECK" in text

    def test_dockerfile_builds_the_model_server_image_too(self) -> None:
        text = (ROOT / "compose" / "Dockerfile").read_text()
        assert "ARG BASE=python:3.11-slim" in text and "FROM ${BASE}" in text
        assert "ARG EXTRAS=fast" in text and '".[$EXTRAS]"' in text
        assert "USER 10001:10001" in text  # numeric: runAsNonRoot can check it


class TestComposeWithoutRegistry:
    """compose/docker-compose.ci.yaml: the stack smoke.sh runs, with nothing to pull."""

    def test_ollama_is_meshkits_model_server_on_its_port(self) -> None:
        services = rendered(CI_OVERRIDE)["services"]
        ollama = services["ollama"]
        assert ollama["command"][:3] == ["python", "-m", "meshkit.local"]
        assert ollama["command"][ollama["command"].index("--port") + 1] == "11434"
        assert ollama["build"]["args"]["EXTRAS"] == "local,fast"
        assert "11434/readyz" in ollama["healthcheck"]["test"][-1]
        assert "ollama/ollama" not in str(services)  # nothing left to pull

    def test_model_names_are_the_local_models(self) -> None:
        services = rendered(CI_OVERRIDE)["services"]
        for name in ("gateway", "example"):
            env = services[name]["environment"]
            assert env["LLM_MODEL"] == env["EMBED_MODEL"] == "gemma-3-270m", name
            assert env["LLM_ENDPOINT"] == "http://ollama:11434", name
        assert "gemma-3-270m" in services["ollama-pull"]["entrypoint"][-1]
