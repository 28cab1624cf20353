"""`meshkit export compose`: a valid Compose file from the same plan as the manifests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshkit.cli import main

ROOT = Path(__file__).resolve().parent.parent


def export(capsys: pytest.CaptureFixture[str], target: str, *args: str) -> str:
    code = main(["export", target, *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def compose_config(path: Path) -> dict[str, Any]:
    """`docker-compose config` (Debian's docker-compose, installed by `make test`)."""
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: run `make test` (it installs it) or apt-get it"
    result = subprocess.run(
        [tool, "-f", str(path), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "MESHKIT_API_KEYS": "k-1"},
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def manifests(capsys: pytest.CaptureFixture[str], *args: str) -> dict[tuple[str, str], Any]:
    docs = yaml.safe_load_all(export(capsys, "kubernetes", *args))
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d}


class TestComposeExport:
    """The Compose file validates and says what the Kubernetes manifests say."""

    def test_valid_and_in_step_with_kubernetes(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        source = tmp_path / "services.yaml"
        source.write_text((ROOT / "services.yaml").read_text())
        out = tmp_path / "deploy" / "compose.yaml"
        out.parent.mkdir()
        assert main(["export", "compose", str(source), "--out", str(out)]) == 0
        capsys.readouterr()
        config = compose_config(out)["services"]
        k8s = manifests(capsys, str(source))
        env = k8s[("ConfigMap", "meshkit-env")]["data"]
        gateway = config["gateway"]
        assert {k: v for k, v in gateway["environment"].items() if k in env} == env
        # The credential comes from the shell, never from the file.
        assert gateway["environment"]["MESHKIT_API_KEYS"] == "k-1"
        assert "k-1" not in out.read_text()
        (k8s_gateway,) = k8s[("Deployment", "meshkit-gateway")]["spec"]["template"]["spec"][
            "containers"
        ]
        assert gateway["command"] == k8s_gateway["command"]
        (volume,) = gateway["volumes"]  # resolved against the Compose file's folder
        assert volume.split(":") == [
            str(source),
            k8s_gateway["volumeMounts"][0]["mountPath"],
            "ro",
        ]
        (k8s_model,) = k8s[("Deployment", "meshkit-model")]["spec"]["template"]["spec"][
            "containers"
        ]
        model = config["meshkit-model"]  # the Service's name: the gateway's URL holds
        assert model["command"] == k8s_model["command"]
        assert env["LLM_ENDPOINT"] == "http://meshkit-model:8009"
        assert gateway["depends_on"] == {"meshkit-model": {"condition": "service_healthy"}}
        for service, probe in ((gateway, k8s_gateway), (model, k8s_model)):
            assert probe["readinessProbe"]["httpGet"]["path"] in service["healthcheck"]["test"][-1]
            assert service["read_only"] is True and service["user"] == "10001:10001"

    def test_an_external_llm_has_no_model_service(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        out = tmp_path / "compose.yaml"
        text = export(
            capsys, "compose", str(ROOT / "services.yaml"), "--env", "LLM_ENDPOINT=http://x:1"
        )
        out.write_text(text.replace(str(ROOT), "."))
        config = compose_config(out)["services"]
        assert set(config) == {"gateway"}
        assert config["gateway"]["environment"]["LLM_ENDPOINT"] == "http://x:1"

    def test_a_dollar_in_a_value_is_not_interpolated_by_compose(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        source = tmp_path / "s.yaml"
        source.write_text(
            "services:\n  llm: {type: llm, endpoint: 'http://x:1', model: '${M:-a}'}\n"
            "pipelines:\n  chat: {nodes: [llm]}\n"
        )
        out = tmp_path / "compose.yaml"
        assert main(["export", "compose", str(source), "--env", "M=p$ss", "--out", str(out)]) == 0
        # `config` prints a literal dollar escaped again; unescaped, it would print "p".
        assert compose_config(out)["services"]["gateway"]["environment"]["M"] == "p$$ss"
