"""The exported manifests run: a stand-in for the kubelet starts them as local processes.

No cluster runs on these machines, so :class:`Kubelet` does what a node would do with
the Deployments of ``meshkit export kubernetes``: it starts each container's command
with the environment the manifest gives it (ConfigMap and Secret keys resolved, a
missing key is an error as in Kubernetes), writes each ConfigMap volume where the
container mounts it, maps every Service name to a loopback address and port, and
waits on the readiness probes the manifests declare. Then the official ``openai``
client streams a chat answer through the exported gateway.

What it maps, like a container runtime would: the image is this checkout (its
``/app`` is the project root, ``python`` and ``meshkit`` are this interpreter); a pod's
network is the host's loopback, so each container port moves to a free port (a value
naming the port, or the wildcard address, is rewritten like a NAT would), and volume
mount paths move to a temporary directory. Nothing else is rewritten: a wrong port, an
env name the file does not read, a probe on a missing path, or a command that does not
start fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import openai
import pytest
import yaml

from meshkit.cli import main
from meshkit.testing import FakeLLM

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def export(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    """Run ``meshkit export kubernetes ARGS`` and parse its documents."""
    code = main(["export", "kubernetes", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return [doc for doc in yaml.safe_load_all(out.out) if doc]


@attrs.define
class Pod:
    """One running replica of a Deployment."""

    name: str
    container: dict[str, Any]
    ports: dict[str, tuple[int, int]]  # port name -> (containerPort, host port)
    log: Path
    process: asyncio.subprocess.Process | None = None

    def host_port(self, port: int | str) -> int:
        for name, (container, host) in self.ports.items():
            if port in (name, container):
                return host
        raise AssertionError(f"{self.name}: a probe names port {port!r}, which is not declared")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@attrs.define
class Kubelet:
    """Runs the Deployments of a list of manifests as local processes (one replica each)."""

    docs: list[dict[str, Any]]
    work: Path
    pods: dict[str, Pod] = attrs.field(factory=dict)
    services: dict[str, str] = attrs.field(factory=dict)  # host[:port] -> 127.0.0.1:port

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def config(self, kind: str, name: str, key: str) -> str:
        for doc in self.kinds(kind):
            if doc["metadata"]["name"] == name:
                if key in (doc.get("stringData") or {}):
                    return str(doc["stringData"][key])
                if key in (doc.get("data") or {}):
                    value = doc["data"][key]
                    return base64.b64decode(value).decode() if kind == "Secret" else str(value)
                raise AssertionError(f"{kind} {name} has no key {key!r}")
        raise AssertionError(f"no {kind} named {name!r}")

    def plan(self) -> None:
        """Give every container port a free host port; map every Service to its pod."""
        for deployment in self.kinds("Deployment"):
            spec = deployment["spec"]
            labels = spec["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
            (container,) = spec["template"]["spec"]["containers"]
            ports = {
                p["name"]: (p["containerPort"], free_port()) for p in container.get("ports", [])
            }
            name = deployment["metadata"]["name"]
            self.pods[name] = Pod(name, container, ports, self.work / f"{name}.log")
        for service in self.kinds("Service"):
            selector = service["spec"]["selector"]
            matching = [
                pod
                for d in self.kinds("Deployment")
                for pod in [self.pods[d["metadata"]["name"]]]
                if all(
                    d["spec"]["template"]["metadata"]["labels"].get(k) == v
                    for k, v in selector.items()
                )
            ]
            name = service["metadata"]["name"]
            assert matching, f"Service {name} selects no pod"
            namespace = service["metadata"].get("namespace", "default")
            for port in service["spec"]["ports"]:
                target = matching[0].host_port(port.get("targetPort", port["port"]))
                for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc"):
                    for dns in (host, f"{host}.cluster.local") if host.endswith("svc") else (host,):
                        self.services[f"{dns}:{port['port']}"] = f"{LOOPBACK}:{target}"

    def rewrite(self, pod: Pod, value: str, mounts: dict[str, Path]) -> str:
        """A value as this pod sees it through the stand-in's network and volumes."""
        for path, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
            if value == path or value.startswith(path.rstrip("/") + "/"):
                return str(local) + value[len(path) :]
        if value == "0.0.0.0":
            return LOOPBACK
        for container, host in pod.ports.values():
            if value == str(container):
                return str(host)

        def service(match: re.Match[str]) -> str:
            return match.group(1) + self.services.get(match.group(2), match.group(2))

        return re.sub(r"(https?://)([A-Za-z0-9.-]+:\d+)", service, value)

    def environment(self, pod: Pod, mounts: dict[str, Path]) -> dict[str, str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(self.work)),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        for item in pod.container.get("env", []):
            if "value" in item:
                raw = str(item["value"])
            else:
                source = item["valueFrom"]
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    raw = self.config("ConfigMap", ref["name"], ref["key"])
                else:
                    ref = source["secretKeyRef"]
                    raw = self.config("Secret", ref["name"], ref["key"])
            env[item["name"]] = self.rewrite(pod, raw, mounts)
        return env

    def volumes(self, deployment: dict[str, Any], pod: Pod) -> dict[str, Path]:
        """Lay out the pod's volumes under the work dir; mount path -> local path."""
        pod_spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in pod.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = self.work / pod.name / mount["mountPath"].lstrip("/")
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                if "subPath" in mount:
                    local.parent.mkdir(parents=True, exist_ok=True)
                    local.write_text(self.config("ConfigMap", name, mount["subPath"]))
                else:
                    local.mkdir(parents=True, exist_ok=True)
                    (doc,) = [c for c in self.kinds("ConfigMap") if c["metadata"]["name"] == name]
                    for key, text in doc["data"].items():
                        (local / key).write_text(text)
            else:
                assert "emptyDir" in volume, f"volume {mount['name']}: not stood in for"
                local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local
        return mounts

    async def start(self) -> None:
        """Start every pod, then wait for each one's startup and readiness probes."""
        self.plan()
        for deployment in self.kinds("Deployment"):
            pod = self.pods[deployment["metadata"]["name"]]
            mounts = self.volumes(deployment, pod)
            argv = [*pod.container.get("command", []), *pod.container.get("args", [])]
            assert argv, f"{pod.name}: no command (the stand-in has no image entrypoint)"
            program = {"python": [sys.executable], "meshkit": [sys.executable, "-m", "meshkit"]}
            assert argv[0] in program, f"{pod.name}: command {argv[0]!r} is not in the image"
            argv = program[argv[0]] + [self.rewrite(pod, a, mounts) for a in argv[1:]]
            workdir = pod.container.get("workingDir", "/app")
            assert workdir == "/app", f"{pod.name}: the image's project is in /app"
            with pod.log.open("wb") as log:
                pod.process = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=ROOT,
                    env=self.environment(pod, mounts),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await asyncio.gather(*(self.ready(session, pod) for pod in self.pods.values()))

    async def ready(self, session: aiohttp.ClientSession, pod: Pod) -> None:
        """Probe like the kubelet: startup first (its whole budget), then readiness."""
        for kind in ("startupProbe", "readinessProbe"):
            probe = pod.container.get(kind)
            assert probe, f"{pod.name}: no {kind}"
            budget = probe.get("initialDelaySeconds", 0) + probe.get(
                "periodSeconds", 10
            ) * probe.get("failureThreshold", 3)
            if kind == "readinessProbe":
                budget = 60  # after startup, readiness follows within a few periods
            await self.probe(session, pod, probe, budget, kind)

    async def probe(
        self,
        session: aiohttp.ClientSession,
        pod: Pod,
        probe: dict[str, Any],
        budget: float,
        kind: str,
    ) -> None:
        get = probe["httpGet"]
        url = f"http://{LOOPBACK}:{pod.host_port(get['port'])}{get['path']}"
        assert pod.process is not None
        try:
            async with asyncio.timeout(budget):
                while True:
                    if pod.process.returncode is not None:
                        raise AssertionError(
                            f"{pod.name} exited ({pod.process.returncode}):\n{pod.tail()}"
                        )
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(url) as response:
                            if response.status == 200:
                                return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(
                f"{pod.name}: {kind} {get['path']} not 200 within {budget} s:\n{pod.tail()}"
            ) from None

    async def check_probes(self) -> None:
        """Every probe a container declares answers 200 once it is ready."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for pod in self.pods.values():
                for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                    get = pod.container[kind]["httpGet"]
                    url = f"http://{LOOPBACK}:{pod.host_port(get['port'])}{get['path']}"
                    async with session.get(url) as response:
                        assert response.status == 200, f"{pod.name} {kind} {url}"

    def url(self, service: str) -> str:
        """Base URL of a Service, as a client inside the cluster would reach it."""
        (doc,) = [s for s in self.kinds("Service") if s["metadata"]["name"] == service]
        port = doc["spec"]["ports"][0]["port"]
        return "http://" + self.services[f"{service}:{port}"]

    async def stop(self, name: str | None = None) -> None:
        """SIGTERM, like a pod deletion; SIGKILL after the manifest's grace period."""
        for pod in [self.pods[name]] if name else list(self.pods.values()):
            process = pod.process
            if process is None or process.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def running(docs: list[dict[str, Any]], work: Path) -> AsyncIterator[Kubelet]:
    kubelet = Kubelet(docs, work)
    try:
        await kubelet.start()
        await kubelet.check_probes()
        yield kubelet
    finally:
        await kubelet.stop()


CUSTOM = """\
# A custom node in front of two LLM replicas, with credentials from the environment.
services:
  example:
    type: custom
    class: examples.example_service:FormatRequest
    params:
      model: ${LLM_MODEL:-llama3.2:1b}
      system: You are a concise assistant.
  llm:
    type: llm
    endpoint: ${LLM_ENDPOINTS}
    model: ${LLM_MODEL:-llama3.2:1b}
    api_key: ${LLM_API_KEY:-}
    balancer: round_robin
pipelines:
  chat:
    edges: [example -> llm]
gateway:
  host: ${MESHKIT_HOST:-0.0.0.0}
  port: ${MESHKIT_PORT:-8008}
  api_keys: ${MESHKIT_API_KEYS:-}
  routes:
    - {dialect: openai, pipeline: chat}
    - {dialect: ollama, pipeline: chat}
"""


class TestKubeletStandIn:
    """The exported Deployments start, pass their probes and answer through the gateway."""

    @pytest.mark.timeout(180)
    async def test_custom_node_replicas_and_secret(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        first, second = FakeLLM(), FakeLLM()
        async with first.serve(), second.serve():
            source = tmp_path / "pipeline.yaml"
            source.write_text(CUSTOM)
            docs = export(
                capsys,
                str(source),
                "--replicas",
                "3",
                "--secret",
                "chat-keys",
                "--env",
                f"LLM_ENDPOINTS={first.url},{second.url}",
            )
            assert not [d for d in docs if d["kind"] == "Secret"]
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "chat-keys"},
                    "data": {
                        "MESHKIT_API_KEYS": base64.b64encode(b"k-123").decode(),
                        "LLM_API_KEY": base64.b64encode(b"upstream-key").decode(),
                    },
                }
            )
            async with running(docs, tmp_path / "node") as kubelet:
                base = kubelet.url("meshkit-gateway")
                async with openai.AsyncOpenAI(
                    base_url=f"{base}/v1", api_key="k-123", max_retries=0
                ) as client:
                    for _ in range(2):  # round robin: one request to each replica
                        stream = await client.chat.completions.create(
                            model="llama3.2:1b",
                            messages=[{"role": "user", "content": "Why is the sky blue?"}],
                            stream=True,
                        )
                        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
                        assert "".join(p for p in pieces if p) == "The sky appears blue."
                async with openai.AsyncOpenAI(
                    base_url=f"{base}/v1", api_key="wrong", max_retries=0
                ) as client:
                    with pytest.raises(openai.AuthenticationError):
                        await client.models.list()
        for fake in (first, second):
            assert len(fake.requests) == 1
            assert fake.headers[0]["Authorization"] == "Bearer upstream-key"
            # The custom node ran in the gateway: it added its system prompt.
            assert fake.requests[0]["messages"][0]["role"] == "system"

    @pytest.mark.slow
    @pytest.mark.timeout(900)
    async def test_shipped_file_with_the_embedded_model_server(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        docs = export(capsys, str(ROOT / "services.yaml"))
        assert {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"} == {
            "meshkit-gateway",
            "meshkit-model",
        }
        async with running(docs, tmp_path / "node") as kubelet:
            async with openai.AsyncOpenAI(
                base_url=f"{kubelet.url('meshkit-gateway')}/v1", api_key="unused", max_retries=0
            ) as client:
                stream = await client.chat.completions.create(
                    model="gemma-3-270m",
                    messages=[{"role": "user", "content": "Say hello in three words."}],
                    max_tokens=24,
                    stream=True,
                )
                pieces = [c.choices[0].delta.content async for c in stream if c.choices]
            text = "".join(p for p in pieces if p)
            assert len([p for p in pieces if p]) >= 2 and text.strip(), pieces
            # The answer came from the model server's pod, not from a model the gateway
            # started itself: without that pod the gateway is no longer ready.
            await kubelet.stop("meshkit-model")
            ready = f"{kubelet.url('meshkit-gateway')}/readyz"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                try:
                    async with asyncio.timeout(60):
                        while True:
                            async with session.get(ready) as response:
                                if response.status == 503:
                                    break
                            await asyncio.sleep(0.5)
                except TimeoutError:
                    raise AssertionError(
                        "the gateway stayed ready without the model server's pod: it does "
                        "not use it (an env name that does not match the file?)"
                    ) from None
