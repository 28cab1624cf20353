"""`Stack`: what a services file needs to run as containers, decided once for every target.

The file itself is shipped exactly as written (interpolation happens where it runs),
so the plan is made of the ``${VAR}`` references of the raw text plus the loaded
spec. Every variable the file reads becomes an environment entry, credentials apart;
an LLM or embedding service that would start meshkit's embedded model gets a model
server of its own, and the variables of its ``endpoint`` and ``model`` point the
gateway at that server.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import yaml

from ..errors import MeshError, SpecError
from ..graph.embedded import DEFAULT_MODEL_NAME
from ..graph.mesh import wanting_local
from ..spec import MeshSpec, ServiceSpec, loads

#: Port of the model server container (``python -m meshkit.local``'s default).
MODEL_PORT = 8009
#: Where the project lives in the image (compose/Dockerfile's WORKDIR).
APP_DIR = PurePosixPath("/app")
#: The numeric user of compose/Dockerfile's images.
RUN_AS = 10001
#: Where a services file from outside the project is mounted.
CONFIG_DIR = PurePosixPath("/etc/meshkit")

_REF = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\})")
_CREDENTIAL = re.compile(r"(^|_)(API_?KEYS?|KEYS?|TOKEN|SECRETS?|PASSWORDS?|PASS)($|_)")


class ExportError(MeshError, ValueError):
    """The services file cannot be exported as asked; the message names the field."""

    code = "export_failed"


@attrs.frozen
class EnvVar:
    """One variable the file reads, with the value the stack gives it.

    Attributes:
        name: The variable.
        value: Its value (always empty for a credential: it is filled in a Secret).
        secret: True for a credential, which never appears in plain configuration.
        reason: Why it has this value (shown as a comment).
    """

    name: str
    value: str
    secret: bool = False
    reason: str = "default in the file"


@attrs.frozen
class ModelServer:
    """The embedded model server, run as its own workload."""

    name: str
    port: int
    threads: int
    model_path: str | None
    model_name: str
    services: tuple[str, ...]

    def command(self) -> list[str]:
        """The container's command line (binds every interface: it is reached by name)."""
        cmd = ["python", "-m", "meshkit.local", "--host", "0.0.0.0", "--port", str(self.port)]
        cmd += ["--threads", str(self.threads), "--name", self.name]
        if self.model_path:
            cmd += ["--model", self.model_path]
        return cmd


@attrs.frozen
class Stack:
    """Everything the exporters render: one gateway, maybe a model server, their env.

    Attributes:
        name: Prefix of every object's name.
        file_name: The services file's name (ConfigMap key).
        text: The services file exactly as written.
        mount_path: Where the file is mounted in the gateway container.
        spec: The spec as the gateway will load it from ``env``.
        env: Every variable the file reads, in the order it first reads them.
        model: The model server, or None when every service has an endpoint.
        gateway_port: Port the gateway listens on.
    """

    name: str
    file_name: str
    text: str
    mount_path: PurePosixPath
    spec: MeshSpec
    env: tuple[EnvVar, ...]
    model: ModelServer | None
    gateway_port: int

    @property
    def config_env(self) -> dict[str, str]:
        """Plain variables and their values."""
        return {v.name: v.value for v in self.env if not v.secret}

    @property
    def secret_env(self) -> list[str]:
        """Names of the credentials."""
        return [v.name for v in self.env if v.secret]

    @property
    def external(self) -> dict[str, tuple[str, ...]]:
        """Services reached over the network, with the endpoints the gateway will use."""
        served = set(self.model.services) if self.model else set()
        return {
            s.name: s.endpoints
            for s in self.spec.services.values()
            if s.endpoints and s.name not in served
        }

    def gateway_command(self) -> list[str]:
        """``meshkit serve`` on the mounted file, on every interface of the pod."""
        return ["meshkit", "serve", str(self.mount_path), "--host", "0.0.0.0"]


def plan(
    path: str | os.PathLike[str],
    *,
    name: str = "meshkit",
    env: Mapping[str, str] | None = None,
) -> Stack:
    """Plan the stack for a services file.

    Args:
        path: The services file.
        name: Prefix of the objects' names (a DNS label).
        env: Values to give some of the file's variables instead of their defaults.

    Raises:
        SpecError: The file is not a valid services file with these values.
        ExportError: It cannot run as exported (a name, an override, an inline
            credential, an embedded model the gateway cannot be pointed away from).
    """
    file = Path(path)
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,40}[a-z0-9])?", name):
        raise ExportError(
            f"--name {name!r}: use lower-case letters, digits and '-' (at most 42)",
            param="name",
        )
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"{file}: cannot read ({exc.strerror})"]) from exc
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raw = None
    if not isinstance(raw, dict):
        loads(text, env={}, source=str(file))  # meshkit's own message for a broken file
        raise SpecError([f"{file}: the top level must be a mapping"])
    defaults = _defaults(text)
    overrides = dict(env or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ExportError(
            f"--env {unknown[0]}: {file} does not read ${{{unknown[0]}}} "
            f"(it reads: {', '.join(defaults) or 'nothing'})",
            param="env",
        )
    credentials = _credentials(raw, defaults)
    for var in credentials:
        if var in overrides:
            raise ExportError(
                f"--env {var}: a credential goes in the Secret, not in the export",
                param="env",
            )
    values = {var: overrides.get(var, default) for var, default in defaults.items()}
    reasons = {var: "set with --env" for var in overrides}
    spec = loads(text, env=values, source=str(file))
    model = _model_server(spec, raw, name, values, reasons, overrides)
    spec = loads(text, env=values, source=str(file))
    stack_env = tuple(
        EnvVar(var, "", True, "credential")
        if var in credentials
        else EnvVar(var, values[var], False, reasons.get(var, "default in the file"))
        for var in defaults
    )
    return Stack(
        name=name,
        file_name=file.name,
        text=text,
        mount_path=_mount_path(file),
        spec=spec,
        env=stack_env,
        model=model,
        gateway_port=spec.gateway.port,
    )


def _defaults(text: str) -> dict[str, str]:
    """Each variable of ``text`` with the first default written for it ("" if none)."""
    found: dict[str, str] = {}
    for match in _REF.finditer(text):
        var, op, default = match.groups()
        if var is None:
            continue
        if op is not None and not found.get(var):
            found[var] = default
        found.setdefault(var, "")
    return found


def _refs(value: Any) -> list[str]:
    """Variables referenced in a raw YAML value (a string, or a list of strings)."""
    items = value if isinstance(value, list) else [value]
    return [m.group(1) for item in items if isinstance(item, str) for m in _REF.finditer(item)]


def _credentials(raw: Mapping[str, Any], defaults: Mapping[str, str]) -> list[str]:
    """Variables that carry credentials; an inline credential is refused."""
    found: list[str] = []
    fields: list[tuple[str, Any]] = []
    gateway = raw.get("gateway") or {}
    if isinstance(gateway, dict) and gateway.get("api_keys") not in (None, "", []):
        fields.append(("gateway.api_keys", gateway["api_keys"]))
    services = raw.get("services") or {}
    for name, node in services.items() if isinstance(services, dict) else ():
        if isinstance(node, dict) and node.get("api_key") not in (None, ""):
            fields.append((f"services.{name}.api_key", node["api_key"]))
    for where, value in fields:
        refs = _refs(value)
        if not refs:
            raise ExportError(
                f"{where}: a credential written in the file would be shipped in a "
                "ConfigMap; read it from a variable (${NAME}) and give it in the Secret",
                param=where,
            )
        found += refs
    found += [var for var in defaults if _CREDENTIAL.search(var)]
    return list(dict.fromkeys(found))


def _model_server(
    spec: MeshSpec,
    raw: Mapping[str, Any],
    name: str,
    values: dict[str, str],
    reasons: dict[str, str],
    overrides: Mapping[str, str],
) -> ModelServer | None:
    """Point every service that would start the embedded model at one model server."""
    wanting = wanting_local(spec)
    if not wanting:
        return None
    first = wanting[0].local
    assert first is not None
    server = ModelServer(
        name=f"{name}-model",
        port=MODEL_PORT,
        threads=first.threads,
        model_path=first.model_path,
        model_name=Path(first.model_path).stem if first.model_path else _bundled_name(),
        services=tuple(s.name for s in wanting),
    )
    url = f"http://{server.name}:{server.port}"
    raw_services = raw.get("services") or {}
    for service in wanting:
        node = raw_services.get(service.name) or {}
        _point(service, "endpoint", node.get("endpoint"), url, values, reasons, overrides)
        if service.model not in (server.model_name, None):
            _point(
                service, "model", node.get("model"), server.model_name, values, reasons, overrides
            )
    return server


def _point(
    service: ServiceSpec,
    key: str,
    raw_value: Any,
    value: str,
    values: dict[str, str],
    reasons: dict[str, str],
    overrides: Mapping[str, str],
) -> None:
    """Give the variable behind ``services.<name>.<key>`` the model server's ``value``."""
    refs = _refs(raw_value)
    if not refs:
        raise ExportError(
            f"services.{service.name}.{key}: the embedded model runs in its own container, "
            f"so this field must come from a variable the export can set "
            f"(for example {key}: ${{LLM_{key.upper()}:-}})",
            param=f"services.{service.name}.{key}",
        )
    for var in refs:
        if var in overrides and overrides[var] != value:
            raise ExportError(
                f"--env {var}: services.{service.name} is served by the embedded model "
                f"server, so its {key} is {value!r}, not {overrides[var]!r} (give the "
                "service an endpoint instead to use another server)",
                param="env",
            )
        values[var] = value
        field = f"services.{service.name}.{key}"
        before = reasons.get(var, "")
        reasons[var] = f"{before}, {field}" if before else f"the model server, for {field}"


def _bundled_name() -> str:
    return DEFAULT_MODEL_NAME


def _mount_path(file: Path) -> PurePosixPath:
    """The project's files are in the image's /app: a file of the project replaces its
    own copy there (so relative paths in it resolve as on the developer's machine); any
    other file is mounted under /etc/meshkit."""
    try:
        relative = file.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return CONFIG_DIR / file.name
    return APP_DIR.joinpath(*relative.parts)
