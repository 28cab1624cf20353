"""The JSON Schema (draft 2020-12) of ``services.yaml``, made from :mod:`.model`.

Every property comes from a field's :class:`~.model.Setting`: its kind's schema, its
description and its default; which keys each service type takes comes from the same
declarations. Rules across keys that JSON Schema can state (an LLM needs an endpoint,
a custom service a class, a pipeline nodes or edges) are stated here again next to
their twins in :mod:`.checks`; the tests hold the two to the same verdicts. What JSON
Schema cannot state is left to ``meshkit validate``: names that refer to other
sections, fallback loops, routes mounted twice, the graph checks, and the value a
``${VAR}`` takes (any string holding one is accepted where a number or a choice goes).
"""

from __future__ import annotations

from typing import Any

import attrs

from .interpolation import INTERPOLATED_PATTERN
from .model import (
    APIS,
    EDGE_SHORTHAND,
    NAME_PATTERN,
    SERVICE_TYPES,
    EdgeSpec,
    GatewaySpec,
    LocalSpec,
    PipelineSpec,
    RouteSpec,
    ServiceSpec,
    keys_for,
    settings,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SECTIONS = (ServiceSpec, LocalSpec, PipelineSpec, EdgeSpec, GatewaySpec, RouteSpec)


def _ref(cls: type) -> dict[str, str]:
    return {"$ref": f"#/$defs/{cls.__name__}"}


def _default(field: attrs.Attribute[Any]) -> Any:
    default = field.default
    if default is attrs.NOTHING or isinstance(default, attrs.Factory) or default is None:  # type: ignore[arg-type]
        return attrs.NOTHING
    return list(default) if isinstance(default, tuple) else default


def _section(cls: type) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required = []
    for key, (field, setting) in settings(cls).items():
        kind = setting.kind
        if kind.record is None:
            branches = kind.schema_branches()
        elif kind.many:
            branches = [{"type": "array", "items": _ref(kind.record)}]
        else:
            branches = [_ref(kind.record)]
        # An empty value (`key:` or `${VAR:-}` unset) stands for the default.
        prop: dict[str, Any] = {"anyOf": [*branches, {"$ref": "#/$defs/empty"}]}
        prop["description"] = setting.doc
        default = _default(field)
        if default is not attrs.NOTHING:
            prop["default"] = default
        properties[key] = prop
        if field.default is attrs.NOTHING:
            required.append(key)
    schema: dict[str, Any] = {
        "type": "object",
        "description": (cls.__doc__ or "").strip().splitlines()[0],
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _service_rules() -> list[dict[str, Any]]:
    """Per type: the keys it takes and its ``api`` values; what a type requires."""
    rules: list[dict[str, Any]] = []
    no_class = {"not": {"required": ["class"]}}
    for kind in SERVICE_TYPES:
        if kind == "custom":  # a class reads whatever it likes from the spec
            continue
        taken = keys_for(kind)
        refused: dict[str, Any] = {k: False for k in settings(ServiceSpec) if k not in taken}
        if kind in APIS:
            refused["api"] = {
                "anyOf": [
                    {"enum": list(APIS[kind])},
                    {"$ref": "#/$defs/interpolated"},
                    {"$ref": "#/$defs/empty"},
                ]
            }
        rules.append(
            {
                "if": {"properties": {"type": {"const": kind}}, "required": ["type"], **no_class},
                "then": {"properties": refused},
            }
        )
    rules.append(
        {
            "if": {
                "properties": {"type": {"enum": ["llm", "embedding"]}},
                "required": ["type"],
                "not": {"anyOf": [{"required": ["class"]}, {"required": ["local"]}]},
            },
            "then": {
                "required": ["endpoint"],
                "properties": {"endpoint": {"not": {"$ref": "#/$defs/empty"}}},
            },
        }
    )
    rules.append(
        {
            "if": {"properties": {"type": {"const": "custom"}}, "required": ["type"]},
            "then": {"required": ["class"]},
        }
    )
    return rules


def json_schema() -> dict[str, Any]:
    """The schema of a ``services.yaml``, as a JSON-ready dict."""
    defs = {cls.__name__: _section(cls) for cls in SECTIONS}
    defs["ServiceSpec"]["allOf"] = _service_rules()
    defs["PipelineSpec"]["anyOf"] = [
        {"required": [key], "properties": {key: {"type": "array", "minItems": 1}}}
        for key in ("nodes", "edges")
    ]
    defs["LocalSpec"] = {"anyOf": [defs["LocalSpec"], {"type": "null"}]}
    defs["EdgeSpec"] = {
        "anyOf": [
            {"type": "string", "pattern": EDGE_SHORTHAND, "description": "'from -> to'"},
            defs["EdgeSpec"],
        ]
    }
    defs["interpolated"] = {
        "type": "string",
        "pattern": INTERPOLATED_PATTERN,
        "description": "a value set by the environment: ${VAR}, ${VAR:-default}",
    }
    defs["empty"] = {"enum": [None, ""], "description": "empty: the default"}
    return {
        "$schema": DIALECT,
        "title": "meshkit services.yaml",
        "description": "Services, the pipelines (graphs) over them, and the gateway.",
        "type": "object",
        "required": ["services"],
        "additionalProperties": False,
        "properties": {
            "services": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": NAME_PATTERN},
                "additionalProperties": _ref(ServiceSpec),
            },
            "pipelines": {
                "anyOf": [
                    {"type": "object", "additionalProperties": _ref(PipelineSpec)},
                    {"$ref": "#/$defs/empty"},
                ]
            },
            "gateway": {"anyOf": [_ref(GatewaySpec), {"$ref": "#/$defs/empty"}]},
            "version": {"description": "ignored (Compose-style files carry one)"},
        },
        "$defs": defs,
    }
