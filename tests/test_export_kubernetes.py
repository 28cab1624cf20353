"""`meshkit export kubernetes`: valid manifests with every property the deployment needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshkit.cli import main
from meshkit.spec import variables

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = "1.34.0"  # a recent release the bundled schemas cover

CUSTOM = """\
services:
  example:
    type: custom
    class: examples.example_service:FormatRequest
    params: {model: "${LLM_MODEL:-llama3.2:1b}"}
  llm:
    type: llm
    endpoint: ${LLM_ENDPOINTS:-http://vllm-0:8000,http://vllm-1:8000}
    model: ${LLM_MODEL:-llama3.2:1b}
    api_key: ${LLM_API_KEY:-}
pipelines:
  chat: {edges: [example -> llm]}
gateway:
  port: ${MESHKIT_PORT:-9000}
  api_keys: ${MESHKIT_API_KEYS:-}
  shutdown_grace: 20
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["export", "kubernetes", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def export(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    code, out, err = run(capsys, *args)
    assert code == 0, err
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (one,) = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return one


@pytest.fixture
def custom(tmp_path: Path) -> Path:
    path = tmp_path / "custom.yaml"
    path.write_text(CUSTOM)
    return path


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate is missing: make test-deps installs it (test extra)"
    return subprocess.run(
        [tool, "--strict", "-k", KUBERNETES, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestValidates:
    """kubernetes-validate --strict accepts every document."""

    @pytest.mark.parametrize(
        "source", ["services.yaml", "examples/rag/services.yaml", "custom"], ids=str
    )
    def test_strict_schema(
        self, source: str, custom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        file = custom if source == "custom" else ROOT / source
        extra = ["--replicas", "3", "--namespace", "genai"] if source == "custom" else []
        out = tmp_path / "manifests.yaml"
        code, _, err = run(capsys, str(file), "--out", str(out), *extra)
        assert code == 0, err
        kinds = [d["kind"] for d in yaml.safe_load_all(out.read_text()) if d]
        result = validate(out)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("passed for resource") == len(kinds), result.stdout

    def test_an_invalid_document_is_refused(self, tmp_path: Path) -> None:
        """The validator is strict: an unknown field fails it (so passing means something)."""
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
            "spec: {ports: [{port: 80, targtPort: http}]}\n"
        )
        result = validate(bad)
        assert result.returncode != 0
        assert "targtPort" in result.stdout + result.stderr


class TestConfiguration:
    """The file as written, its variables from a ConfigMap or a Secret."""

    def test_configmap_holds_the_file_exactly(self, capsys: pytest.CaptureFixture[str]) -> None:
        docs = export(capsys, str(ROOT / "services.yaml"))
        data = find(docs, "ConfigMap", "meshkit-pipeline")["data"]
        assert data == {"services.yaml": (ROOT / "services.yaml").read_text()}

    @pytest.mark.parametrize("source", ["services.yaml", "examples/rag/services.yaml"])
    def test_every_variable_comes_from_a_configmap_or_secret(
        self, source: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        docs = export(capsys, str(ROOT / source))
        env = container(docs, "meshkit-gateway")["env"]
        assert {e["name"] for e in env} == variables((ROOT / source).read_text())
        assert all("value" not in e for e in env), "no value is written inline"
        config = find(docs, "ConfigMap", "meshkit-env")["data"]
        for entry in env:
            ref = entry["valueFrom"].get("configMapKeyRef") or entry["valueFrom"]["secretKeyRef"]
            holder = "ConfigMap" if "configMapKeyRef" in entry["valueFrom"] else "Secret"
            doc = find(docs, holder, ref["name"])
            assert ref["key"] in (config if holder == "ConfigMap" else doc["stringData"])

    def test_credentials_go_to_a_secret_template(
        self, custom: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        docs = export(capsys, str(custom))
        secret = find(docs, "Secret", "meshkit-credentials")
        assert secret["stringData"] == {"LLM_API_KEY": "", "MESHKIT_API_KEYS": ""}
        config = find(docs, "ConfigMap", "meshkit-env")["data"]
        assert "MESHKIT_API_KEYS" not in config and "LLM_API_KEY" not in config
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
            for e in container(docs, "meshkit-gateway")["env"]
            if "secretKeyRef" in e["valueFrom"]
        }
        assert refs == {
            "LLM_API_KEY": "meshkit-credentials",
            "MESHKIT_API_KEYS": "meshkit-credentials",
        }

    def test_an_existing_secret_is_referenced_by_name(
        self, custom: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        docs = export(capsys, str(custom), "--secret", "team-keys")
        assert not [d for d in docs if d["kind"] == "Secret"]
        names = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container(docs, "meshkit-gateway")["env"]
            if "secretKeyRef" in e["valueFrom"]
        }
        assert names == {"team-keys"}

    def test_an_inline_credential_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "inline.yaml"
        path.write_text(CUSTOM.replace("${LLM_API_KEY:-}", "sk-live-123"))
        code, out, err = run(capsys, str(path))
        assert code == 1 and out == ""
        assert "services.llm.api_key" in err and "sk-live-123" not in err

    def test_env_overrides_a_default(
        self, custom: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        docs = export(capsys, str(custom), "--env", "LLM_ENDPOINTS=http://tgi:80")
        assert find(docs, "ConfigMap", "meshkit-env")["data"]["LLM_ENDPOINTS"] == "http://tgi:80"

    @pytest.mark.parametrize(
        ("args", "named"),
        [
            (["--env", "NOT_READ=1"], "--env NOT_READ"),
            (["--env", "MESHKIT_API_KEYS=k"], "--env MESHKIT_API_KEYS"),
            (["--env", "LLM_MODEL"], "--env 'LLM_MODEL'"),
            (["--name", "Bad_Name"], "--name 'Bad_Name'"),
            (["--replicas", "3", "--max-replicas", "2"], "--max-replicas 2"),
        ],
    )
    def test_bad_arguments_are_named(
        self, custom: Path, args: list[str], named: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = run(capsys, str(custom), *args)
        assert code == 1 and out == ""
        assert named in err

    def test_a_spec_problem_is_reported_with_its_path(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "broken.yaml"
        path.write_text(
            CUSTOM.replace(
                "${LLM_ENDPOINTS:-http://vllm-0:8000,http://vllm-1:8000}", "${LLM_ENDPOINTS}"
            )
        )
        code, _, err = run(capsys, str(path))
        assert code == 1
        assert "services.llm.endpoint" in err and "--env" in err


class TestModelServer:
    """A service that would embed the model gets a model server Deployment of its own."""

    def test_shipped_file_points_the_gateway_at_it(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        docs = export(capsys, str(ROOT / "services.yaml"), "--model-image", "reg/meshkit-local:1")
        config = find(docs, "ConfigMap", "meshkit-env")["data"]
        service = find(docs, "Service", "meshkit-model")
        (port,) = service["spec"]["ports"]
        assert config["LLM_ENDPOINT"] == f"http://meshkit-model:{port['port']}"
        assert config["LLM_MODEL"] == config["EMBED_MODEL"] == "gemma-3-270m"
        model = container(docs, "meshkit-model")
        assert model["image"] == "reg/meshkit-local:1"
        assert model["command"][:3] == ["python", "-m", "meshkit.local"]
        assert model["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert model["resources"]["requests"]["cpu"] == "2"  # the file's llama.cpp threads
        assert {p["name"] for p in model["ports"]} == {port["targetPort"]}

    def test_an_endpoint_keeps_the_llm_external(self, capsys: pytest.CaptureFixture[str]) -> None:
        docs = export(capsys, str(ROOT / "services.yaml"), "--env", "LLM_ENDPOINT=http://vllm:8000")
        assert not [d for d in docs if d["metadata"]["name"] == "meshkit-model"]
        config = find(docs, "ConfigMap", "meshkit-env")["data"]
        assert config["LLM_ENDPOINT"] == "http://vllm:8000"
        assert config["LLM_MODEL"] == "llama3.2:1b"

    def test_an_endpoint_written_without_a_variable_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "fixed.yaml"
        path.write_text(
            "services:\n  llm:\n    type: llm\n    model: gemma-3-270m\n    local: {}\n"
            "pipelines:\n  chat: {nodes: [llm]}\n"
        )
        code, _, err = run(capsys, str(path))
        assert code == 1 and "services.llm.endpoint" in err

    def test_a_model_the_server_does_not_have_is_refused(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(capsys, str(ROOT / "services.yaml"), "--env", "LLM_MODEL=llama3.2:1b")
        assert code == 1 and "--env LLM_MODEL" in err and "gemma-3-270m" in err


class TestGateway:
    """The gateway's Deployment, Service, disruption budget and autoscaler."""

    def test_deployment(self, custom: Path, capsys: pytest.CaptureFixture[str]) -> None:
        docs = export(capsys, str(custom), "--replicas", "3", "--image", "reg/meshkit:2")
        deployment = find(docs, "Deployment", "meshkit-gateway")
        spec = deployment["spec"]
        assert spec["replicas"] == 3
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        gateway = container(docs, "meshkit-gateway")
        assert gateway["image"] == "reg/meshkit:2"
        assert gateway["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
        probes = {k: gateway[k]["httpGet"]["path"] for k in gateway if k.endswith("Probe")}
        assert probes == {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        assert set(gateway["resources"]) == {"requests", "limits"}
        security = gateway["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["terminationGracePeriodSeconds"] > 20  # longer than shutdown_grace
        mount = next(m for m in gateway["volumeMounts"] if m["name"] == "config")
        assert gateway["command"][:3] == ["meshkit", "serve", mount["mountPath"]]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/component"] == "gateway"
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance"} <= set(labels)

    def test_project_file_is_mounted_over_its_copy_in_the_image(self) -> None:
        """Relative paths in it (the retriever's docs/) resolve as in the project."""
        result = subprocess.run(
            [sys.executable, "-m", "meshkit", "export", "kubernetes", "examples/rag/services.yaml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        mount = container(docs, "meshkit-gateway")["volumeMounts"][0]
        assert mount["mountPath"] == "/app/examples/rag/services.yaml"
        assert mount["subPath"] == "services.yaml"

    def test_service_budget_and_autoscaler(
        self, custom: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        docs = export(capsys, str(custom), "--replicas", "3", "--max-replicas", "7")
        (port,) = find(docs, "Service", "meshkit-gateway")["spec"]["ports"]
        assert port == {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}
        budget = find(docs, "PodDisruptionBudget", "meshkit-gateway")["spec"]
        assert budget["maxUnavailable"] == 1
        scaler = find(docs, "HorizontalPodAutoscaler", "meshkit-gateway")
        assert scaler["apiVersion"] == "autoscaling/v2"
        assert scaler["spec"]["scaleTargetRef"]["name"] == "meshkit-gateway"
        assert (scaler["spec"]["minReplicas"], scaler["spec"]["maxReplicas"]) == (3, 7)

    def test_a_changed_file_rolls_the_pods(
        self, custom: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def checksum(*args: str) -> str:
            docs = export(capsys, str(custom), *args)
            template = find(docs, "Deployment", "meshkit-gateway")["spec"]["template"]
            return str(template["metadata"]["annotations"]["checksum/config"])

        first = checksum()
        assert checksum() == first
        assert checksum("--env", "LLM_ENDPOINTS=http://tgi:80") != first
        custom.write_text(CUSTOM + "# a comment changes the file too\n")
        assert checksum() != first

    def test_metrics_scrape_annotations_and_service_monitor(
        self, custom: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        docs = export(capsys, str(custom))
        template = find(docs, "Deployment", "meshkit-gateway")["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "9000"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
        docs = export(capsys, str(custom), "--service-monitor")
        monitor = find(docs, "ServiceMonitor", "meshkit-gateway")["spec"]
        assert monitor["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]

    def test_namespace_and_labels_on_every_object(self, capsys: pytest.CaptureFixture[str]) -> None:
        docs = export(capsys, str(ROOT / "services.yaml"), "--namespace", "genai")
        for doc in docs:
            assert doc["metadata"]["namespace"] == "genai", doc["kind"]
            assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshkit"

    def test_out_writes_the_file(
        self, custom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "k8s.yaml"
        code, printed, err = run(capsys, str(custom), "--out", str(out))
        assert code == 0 and printed == ""
        assert out.read_text().startswith("# Generated by `meshkit export kubernetes")
        assert f"{out}: written" in err
