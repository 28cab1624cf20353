"""Which class builds a service of each YAML ``type``.

Built-in types are registered here; third-party packages add theirs through the
``meshkit.services`` entry-point group (``name = package.module:Factory``), where the
factory is a class with a ``from_spec(spec)`` classmethod or a callable taking the spec.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ..client.http import Timeouts
from ..client.retry import RetryPolicy
from ..errors import SpecError
from ..spec import ServiceSpec
from .base import MicroService, ServiceType
from .builtins import BUILTINS
from .llm import RemoteLLM

Factory = Callable[[ServiceSpec], MicroService]


def timeouts_of(spec: ServiceSpec) -> Timeouts:
    """The outbound timeouts a spec declares."""
    return Timeouts(
        connect=spec.connect_timeout,
        first_byte=spec.timeout,
        idle=spec.idle_timeout,
        total=spec.total_timeout,
    )


def build_llm(spec: ServiceSpec) -> MicroService:
    """A `RemoteLLM` from its spec."""
    return RemoteLLM(
        spec.name,
        endpoint=spec.endpoints or ("http://unset.invalid",),
        api=spec.api,
        path=spec.path,
        model=spec.model,
        timeouts=timeouts_of(spec),
        api_key=spec.api_key,
        params=spec.params,
        retry=RetryPolicy(retries=spec.retries),
        balancer=spec.balancer,
        health_interval=spec.health_interval,
        fallback=spec.fallback,
    )


def load_class(path: str) -> Any:
    """Import ``package.module:Name``."""
    module_name, _, attr = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise SpecError([f"cannot load {path!r}: {exc}"]) from exc
    return target


def _custom(spec: ServiceSpec) -> MicroService:
    if spec.class_path is None:
        raise SpecError([f"services.{spec.name}: a custom service needs 'class'"])
    try:
        cls = load_class(spec.class_path)
    except SpecError as exc:
        raise SpecError([f"services.{spec.name}.class: {p}" for p in exc.problems]) from exc
    if hasattr(cls, "from_spec"):
        service = cls.from_spec(spec)
    else:
        service = cls(spec.name, params=spec.params, timeout=spec.timeout)
    if not isinstance(service, MicroService):
        raise SpecError([f"services.{spec.name}.class: {spec.class_path} is not a MicroService"])
    return service


class ServiceRegistry:
    """Maps YAML ``type`` names to factories; one per mesh, never global."""

    def __init__(self, *, discover: bool = True) -> None:
        self._factories: dict[str, Factory] = {"llm": build_llm, "custom": _custom, **BUILTINS}
        if discover:
            self._discover()

    def _discover(self) -> None:
        for ep in entry_points(group="meshkit.services"):
            if ep.name in self._factories:
                continue
            target = ep.load()
            from_spec = getattr(target, "from_spec", None)
            self._factories[ep.name] = from_spec if from_spec is not None else target

    def register(self, type_name: str, factory: Factory) -> None:
        """Build services of ``type_name`` with ``factory``."""
        self._factories[type_name] = factory

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._factories

    def build(self, spec: ServiceSpec) -> MicroService:
        """The service a spec declares; a ``class`` always wins over the type's default."""
        if spec.class_path is not None:
            service = _custom(spec)
            if spec.type != "custom":
                service.service_type = ServiceType(spec.type)  # type: ignore[misc]
            return service
        factory = self._factories.get(spec.type)
        if factory is None:
            raise SpecError(
                [
                    f"services.{spec.name}.type: no implementation of {spec.type!r} "
                    f"is installed (known: {', '.join(sorted(self._factories))})"
                ]
            )
        return factory(spec)
