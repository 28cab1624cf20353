"""The spec's classes: every YAML key declared once, with its kind, default and use.

Each field made by :func:`setting` carries a :class:`Setting` in its metadata: the
YAML key (when it differs from the attribute), the :class:`~.kinds.Kind` that converts
and validates it, which service types use it, and a one-line description. The
structuring in :mod:`.structure` and the JSON Schema in :mod:`.schema` both read these
declarations, so a key added here is parsed, checked and documented for editors at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from . import kinds
from .kinds import Kind

SERVICE_TYPES = ("llm", "embedding", "retriever", "reranker", "guardrail", "prompt", "custom")
DIALECTS = ("openai", "ollama")

#: The ``api`` values each built-in type understands (a ``class:`` decides for itself).
APIS: Mapping[str, tuple[str, ...]] = {
    "llm": ("openai", "ollama"),
    "embedding": ("openai", "tei"),
    "reranker": ("openai", "tei", "local"),
}

#: Service types by what they do: calling an upstream over HTTP, an LLM's resilience.
REMOTE = frozenset({"llm", "embedding", "reranker"})
EVERY = frozenset(SERVICE_TYPES)

#: ``from``/``to`` written in one string.
EDGE_SHORTHAND = r"^\s*([^\s>-][^\s>]*)\s*->\s*([^\s>]+)\s*$"
#: Service and pipeline names.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


@attrs.frozen
class Setting:
    """What the spec knows about one YAML key (stored in its attrs field's metadata)."""

    kind: Kind
    doc: str
    key: str | None = None
    types: frozenset[str] = EVERY
    #: ``"services"`` or ``"pipelines"``: the value names one of those declared.
    refers: str | None = None


def setting(
    kind: Kind,
    doc: str,
    default: Any = attrs.NOTHING,
    *,
    key: str | None = None,
    types: frozenset[str] = EVERY,
    factory: Any = None,
    secret: bool = False,
    refers: str | None = None,
) -> Any:
    """An attrs field that is also a YAML key (``key``, default: the attribute's name)."""
    if factory is not None:
        default = attrs.Factory(factory)
    return attrs.field(
        default=default,
        validator=kind.validator,
        repr=not secret,
        metadata={"meshkit.spec": Setting(kind, doc, key, types, refers)},
    )


def settings(cls: type) -> dict[str, tuple[attrs.Attribute[Any], Setting]]:
    """The YAML keys of ``cls`` in declaration order, each with its field and setting."""
    found = {}
    for field in attrs.fields(cls):
        meta = field.metadata.get("meshkit.spec")
        if meta is not None:
            found[meta.key or field.name] = (field, meta)
    return found


def keys_for(service_type: str | None, *, has_class: bool = False) -> tuple[str, ...]:
    """The keys a service of ``service_type`` may use: all of them with a ``class``, or
    for a type the spec does not know (then only the type is reported)."""
    every = settings(ServiceSpec)
    if has_class or service_type not in EVERY:
        return tuple(every)
    return tuple(k for k, (_, s) in every.items() if service_type in s.types)


@attrs.frozen
class LocalSpec:
    """How meshkit runs the embedded model server when an LLM has no endpoint."""

    model_path: str | None = setting(kinds.TEXT, "a GGUF file; empty: the bundled model", None)
    host: str = setting(kinds.TEXT, "interface the embedded server binds", "127.0.0.1")
    port: int = setting(kinds.PORT_OR_ZERO, "its port (0: any free port)", 0)
    threads: int = setting(kinds.POSITIVE_INT, "llama.cpp threads", 2)


LOCAL = kinds.record(LocalSpec)


@attrs.frozen
class ServiceSpec:
    """One service (a graph node) as declared under ``services:``."""

    name: str
    type: str = setting(kinds.choice(*SERVICE_TYPES), "what the node does")
    endpoints: tuple[str, ...] = setting(
        kinds.URLS,
        "base URL of the upstream (no /v1); several, comma-separated, are replicas",
        (),
        key="endpoint",
        types=REMOTE | {"custom"},
    )
    api: str = setting(
        kinds.TEXT,
        "the upstream's API: llm openai|ollama, embedding openai|tei",
        "openai",
        types=REMOTE,
    )
    path: str | None = setting(
        kinds.URL_PATH, "override of the upstream API path", None, types=REMOTE
    )
    model: str | None = setting(
        kinds.TEXT, "model for requests that name none", None, types=frozenset({"llm", "embedding"})
    )
    timeout: float = setting(
        kinds.SECONDS, "seconds to the first token (a whole answer when not streaming)", 60.0
    )
    connect_timeout: float = attrs.field(
        default=attrs.Factory(lambda self: min(5.0, self.timeout), takes_self=True),
        validator=kinds.SECONDS.validator,
        metadata={
            "meshkit.spec": Setting(
                kinds.SECONDS,
                "seconds to open a connection (default: min(5, timeout))",
                types=REMOTE,
            )
        },
    )
    idle_timeout: float = attrs.field(
        default=attrs.Factory(lambda self: max(self.timeout, 30.0), takes_self=True),
        validator=kinds.SECONDS.validator,
        metadata={
            "meshkit.spec": Setting(
                kinds.SECONDS,
                "longest gap between chunks (default: max(timeout, 30))",
                types=REMOTE,
            )
        },
    )
    api_key: str | None = setting(
        kinds.TEXT,
        "sent upstream as a bearer token, never logged",
        None,
        types=frozenset({"llm", "embedding"}),
        secret=True,
    )
    class_path: str | None = setting(
        kinds.CLASS_PATH, "a MicroService subclass (package.module:Class)", None, key="class"
    )
    params: Mapping[str, Any] = setting(kinds.PARAMS, "settings handed to the node", factory=dict)
    optional: bool = setting(
        kinds.BOOLEAN, "a failure skips the node instead of the request", False
    )
    local: LocalSpec | None = setting(  # noqa: RUF009 (an attrs field, not a value)
        LOCAL,
        "with no endpoint: meshkit runs its embedded model server",
        None,
        types=frozenset({"llm", "embedding"}),
    )
    total_timeout: float | None = setting(
        kinds.SECONDS, "seconds for the whole call, stream included", None, types=frozenset({"llm"})
    )
    retries: int = setting(
        kinds.RETRIES, "retries of a failure before anything was sent", 2, types=frozenset({"llm"})
    )
    fallback: str | None = setting(
        kinds.TEXT,
        "service asked when this one fails before streaming",
        None,
        types=frozenset({"llm"}),
        refers="services",
    )
    balancer: str = setting(
        kinds.choice("least_inflight", "round_robin"),
        "how replicas share the traffic",
        "least_inflight",
        types=frozenset({"llm"}),
    )
    health_interval: float = setting(
        kinds.PROBE_SECONDS,
        "seconds between health probes of each replica",
        5.0,
        types=frozenset({"llm"}),
    )
    max_connections: int = setting(
        kinds.POSITIVE_INT, "most open connections to the upstream", 1000, types=REMOTE
    )
    max_response_body: int = setting(
        kinds.SIZE, "largest upstream answer read whole", 64 * 1024 * 1024, types=REMOTE
    )


@attrs.frozen
class EdgeSpec:
    """``src -> dst``, with an optional condition in meshkit's expression form."""

    src: str = setting(kinds.TEXT, "the node the value comes from", key="from", refers="services")
    dst: str = setting(kinds.TEXT, "the node it goes to", key="to", refers="services")
    when: str | None = setting(kinds.TEXT, "a condition over output, request and headers", None)


EDGES = kinds.records(EdgeSpec)


@attrs.frozen
class PipelineSpec:
    """A named graph over the declared services."""

    name: str
    nodes: tuple[str, ...] = setting(
        kinds.NAMES, "the services in the graph", (), refers="services"
    )
    edges: tuple[EdgeSpec, ...] = setting(EDGES, "connections: 'a -> b' or {from, to, when}", ())


@attrs.frozen
class RouteSpec:
    """A dialect's endpoints mounted under ``prefix``, answering from ``pipeline``."""

    dialect: str = setting(kinds.choice(*DIALECTS), "the API dialect served")
    pipeline: str = setting(kinds.TEXT, "the pipeline that answers", refers="pipelines")
    prefix: str = setting(kinds.PREFIX, "mount the routes under this path", "")
    model: str | None = setting(kinds.TEXT, "model name reported for this route", None)
    embeddings: str | None = setting(
        kinds.TEXT, "the service answering /v1/embeddings", None, refers="services"
    )


ROUTES = kinds.records(RouteSpec)


@attrs.frozen
class GatewaySpec:
    """Where and how the gateway listens."""

    host: str = setting(kinds.TEXT, "interface to bind", "0.0.0.0")
    port: int = setting(kinds.PORT, "port to bind", 8008)
    routes: tuple[RouteSpec, ...] = setting(ROUTES, "mounted dialects", ())
    api_keys: tuple[str, ...] = setting(
        kinds.KEYS, "keys a caller must present as a bearer token", (), secret=True
    )
    max_inflight: int = setting(kinds.UNLIMITED_COUNT, "most requests served at once", 0)
    max_body: int = setting(kinds.SIZE, "largest request body", 8 * 1024 * 1024)
    shutdown_grace: float = setting(
        kinds.SECONDS_OR_ZERO, "seconds open requests get to finish on shutdown", 10.0
    )
    api_keys_file: str | None = setting(
        kinds.TEXT, "a file of keys, one a line ('#' starts a comment)", None
    )
    metrics: bool = setting(kinds.BOOLEAN, "serve Prometheus metrics on /metrics", True)
    send_timeout: float = setting(
        attrs.evolve(kinds.SECONDS_OR_ZERO, what="a number of seconds (0: no limit)"),
        "seconds a stalled caller's stream may wait before it ends",
        60.0,
    )
    splice: bool = setting(
        kinds.BOOLEAN,
        "relay a one-LLM pipeline's stream from the upstream's callbacks (false: pull it)",
        True,
    )
    intake: str = setting(
        kinds.choice("lean", "aiohttp"),
        "who reads the chat requests: meshkit's lean intake, or aiohttp for every request",
        "lean",
    )


@attrs.frozen
class MeshSpec:
    """The whole file: services, pipelines, gateway."""

    services: Mapping[str, ServiceSpec]
    pipelines: Mapping[str, PipelineSpec]
    gateway: GatewaySpec
    source: str = "<string>"
