"""A :class:`~meshkit.export.plan.Stack` as Kubernetes manifests (``kubectl apply -f``).

Objects, in the order they are applied: the ConfigMap holding the services file as
written, the ConfigMap of its variables, the Secret template of its credentials, the
model server's Service and Deployment (when the file uses the embedded model), the
gateway's Service and Deployment, its PodDisruptionBudget and HorizontalPodAutoscaler,
and a ServiceMonitor when asked for. Labels follow ``app.kubernetes.io/*``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import attrs

from .._version import __version__
from ..observability.observer import METRICS_PATH
from ._yaml import dump
from .plan import RUN_AS, Stack

Doc = dict[str, Any]


@attrs.frozen
class Options:
    """How the stack is deployed.

    Attributes:
        image: The gateway's image.
        model_image: The model server's image (built with ``EXTRAS=local,fast,otel``).
        namespace: Namespace of every object; None leaves it to ``kubectl -n``.
        replicas: Gateway replicas, also the autoscaler's floor.
        max_replicas: The autoscaler's ceiling.
        secret: An existing Secret holding the credentials; None emits a template.
        service_monitor: Also emit a Prometheus Operator ServiceMonitor.
    """

    image: str = f"meshkit:{__version__}"
    model_image: str = f"meshkit-local:{__version__}"
    namespace: str | None = None
    replicas: int = 2
    max_replicas: int | None = None
    secret: str | None = None
    service_monitor: bool = False


def render(stack: Stack, options: Options) -> str:
    """The manifests as one multi-document YAML text, with comments for a reader."""
    parts = [_header(stack, options)]
    for comment, doc in documents(stack, options):
        text = dump(doc)
        parts.append("---\n" + "".join(f"# {line}\n" for line in comment) + text)
    return "".join(parts)


def documents(stack: Stack, options: Options) -> list[tuple[list[str], Doc]]:
    """Each object with the comment lines that go above it."""
    docs: list[tuple[list[str], Doc]] = []
    meta = _Meta(stack, options)
    docs.append(
        (
            [f"{stack.file_name} exactly as written; the pods interpolate it from their env."],
            meta.object(
                "v1", "ConfigMap", "pipeline", "gateway", data={stack.file_name: stack.text}
            ),
        )
    )
    if stack.config_env:
        docs.append(
            (
                ["Every variable the file reads (credentials apart), as the gateway gets them."]
                + [f"  {v.name}: {v.reason}" for v in stack.env if not v.secret],
                meta.object("v1", "ConfigMap", "env", "gateway", data=stack.config_env),
            )
        )
    if stack.secret_env and options.secret is None:
        docs.append(
            (
                [
                    "Credentials: fill in the values before applying (plain text: stringData),",
                    "or create the Secret yourself and export with --secret NAME.",
                    "An empty MESHKIT_API_KEYS leaves the gateway open (no key needed).",
                ],
                meta.object(
                    "v1",
                    "Secret",
                    "credentials",
                    "gateway",
                    type="Opaque",
                    stringData=dict.fromkeys(stack.secret_env, ""),
                ),
            )
        )
    if stack.model is not None:
        docs += _model_server(stack, meta)
    docs += _gateway(stack, options, meta)
    return docs


@attrs.frozen
class _Meta:
    """Names, labels and namespace shared by every object."""

    stack: Stack
    options: Options

    def name(self, suffix: str) -> str:
        return f"{self.stack.name}-{suffix}"

    def selector(self, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "meshkit",
            "app.kubernetes.io/instance": self.stack.name,
            "app.kubernetes.io/component": component,
        }

    def labels(self, component: str) -> dict[str, str]:
        return {
            **self.selector(component),
            "app.kubernetes.io/part-of": self.stack.name,
            "app.kubernetes.io/version": __version__,
            "app.kubernetes.io/managed-by": "meshkit",
        }

    def object(self, api: str, kind: str, suffix: str, component: str, **body: Any) -> Doc:
        metadata: Doc = {"name": self.name(suffix), "labels": self.labels(component)}
        if self.options.namespace:
            metadata["namespace"] = self.options.namespace
        return {"apiVersion": api, "kind": kind, "metadata": metadata, **body}


def _gateway(stack: Stack, options: Options, meta: _Meta) -> list[tuple[list[str], Doc]]:
    port = stack.gateway_port
    config = {"name": "config", "configMap": {"name": meta.name("pipeline")}}
    mount = {
        "name": "config",
        "mountPath": str(stack.mount_path),
        "subPath": stack.file_name,
        "readOnly": True,
    }
    container = {
        "name": "gateway",
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": stack.gateway_command(),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": _env(stack, meta, options),
        "startupProbe": _probe("/healthz", period=2, failures=30),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        "readinessProbe": _probe("/readyz", period=5, failures=2, timeout=3),
        "resources": {
            "requests": {"cpu": "250m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [mount, {"name": "tmp", "mountPath": "/tmp"}],
    }
    # A changed pipeline or variable changes the pod template: the pods roll.
    annotations = {"checksum/config": _checksum(stack)}
    metrics = stack.spec.gateway.metrics
    if metrics:
        annotations |= {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": METRICS_PATH,
        }
    grace = math.ceil(stack.spec.gateway.shutdown_grace) + 5
    pod = _pod(container, [config, _tmp()], grace)
    deployment = meta.object(
        "apps/v1",
        "Deployment",
        "gateway",
        "gateway",
        spec={
            "replicas": options.replicas,
            "selector": {"matchLabels": meta.selector("gateway")},
            # Never below the wanted replicas during a rollout: one extra pod at a time.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": meta.labels("gateway"), "annotations": annotations},
                "spec": pod,
            },
        },
    )
    service = meta.object(
        "v1",
        "Service",
        "gateway",
        "gateway",
        spec={
            "type": "ClusterIP",
            "selector": meta.selector("gateway"),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    )
    budget = meta.object(
        "policy/v1",
        "PodDisruptionBudget",
        "gateway",
        "gateway",
        spec={"maxUnavailable": 1, "selector": {"matchLabels": meta.selector("gateway")}},
    )
    ceiling = options.max_replicas or max(options.replicas * 4, options.replicas + 1)
    scaler = meta.object(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "gateway",
        "gateway",
        spec={
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": meta.name("gateway"),
            },
            "minReplicas": options.replicas,
            "maxReplicas": ceiling,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    )
    docs = [
        ([f"The gateway: OpenAI and Ollama dialects on port {port}."], service),
        (
            [
                f"{options.replicas} replicas by default; the autoscaler below keeps them",
                f"between {options.replicas} and {ceiling} (scale: edit its minReplicas).",
            ],
            deployment,
        ),
        (["Voluntary evictions (node drains) take one gateway pod at a time."], budget),
        (["Scale the gateway on CPU (it is stateless)."], scaler),
    ]
    if options.service_monitor and metrics:
        monitor = meta.object(
            "monitoring.coreos.com/v1",
            "ServiceMonitor",
            "gateway",
            "gateway",
            spec={
                "selector": {"matchLabels": meta.selector("gateway")},
                "endpoints": [{"port": "http", "path": METRICS_PATH, "interval": "30s"}],
            },
        )
        docs.append((["For the Prometheus Operator."], monitor))
    return docs


def _model_server(stack: Stack, meta: _Meta) -> list[tuple[list[str], Doc]]:
    model = stack.model
    assert model is not None
    container = {
        "name": "model-server",
        "image": meta.options.model_image,
        "imagePullPolicy": "IfNotPresent",
        "command": model.command(),
        "ports": [{"name": "http", "containerPort": model.port, "protocol": "TCP"}],
        # Loading takes seconds from the image's assembled model; the bound is generous
        # for a GGUF given by path on slow storage.
        "startupProbe": _probe("/healthz", period=5, failures=120),
        "livenessProbe": _probe("/healthz", period=20, failures=3, timeout=5),
        "readinessProbe": _probe("/readyz", period=10, failures=3, timeout=5),
        "resources": {
            "requests": {"cpu": str(model.threads), "memory": "1Gi"},
            "limits": {"cpu": str(model.threads), "memory": "2Gi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment = meta.object(
        "apps/v1",
        "Deployment",
        "model",
        "model-server",
        spec={
            "replicas": 1,
            "selector": {"matchLabels": meta.selector("model-server")},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": meta.labels("model-server")},
                "spec": _pod(container, [_tmp()], 15),
            },
        },
    )
    service = meta.object(
        "v1",
        "Service",
        "model",
        "model-server",
        spec={
            "type": "ClusterIP",
            "selector": meta.selector("model-server"),
            "ports": [
                {"name": "http", "port": model.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    )
    served = ", ".join(model.services)
    return [
        (
            [
                f"The embedded model server ({model.model_name} on llama.cpp) for: {served}.",
                f"The gateway reaches it as http://{model.name}:{model.port}.",
            ],
            service,
        ),
        ([f"{model.threads} llama.cpp threads: CPU requests match them."], deployment),
    ]


def _env(stack: Stack, meta: _Meta, options: Options) -> list[Doc]:
    secret = options.secret or meta.name("credentials")
    out: list[Doc] = []
    for var in stack.env:
        if var.secret:
            ref = {"secretKeyRef": {"name": secret, "key": var.name}}
        else:
            ref = {"configMapKeyRef": {"name": meta.name("env"), "key": var.name}}
        out.append({"name": var.name, "valueFrom": ref})
    return out


def _probe(path: str, *, period: int, failures: int, timeout: int = 2) -> Doc:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _pod(container: Doc, volumes: list[Doc], grace: int) -> Doc:
    return {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": grace,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }


def _container_security() -> Doc:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _tmp() -> Doc:
    return {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}


def _checksum(stack: Stack) -> str:
    payload = json.dumps([stack.text, stack.config_env, stack.secret_env], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _header(stack: Stack, options: Options) -> str:
    lines = [
        f"Generated by `meshkit export kubernetes {stack.spec.source}` (meshkit {__version__}).",
        "Apply:  kubectl apply -f THIS_FILE" + ("" if options.namespace else "  [-n NAMESPACE]"),
        f"Gateway: service {stack.name}-gateway, port {stack.gateway_port}.",
    ]
    for service, endpoints in stack.external.items():
        lines.append(f"External: {service} -> {', '.join(endpoints)} (set in {stack.name}-env)")
    return "".join(f"# {line}\n" for line in lines)
