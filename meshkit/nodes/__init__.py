"""Graph nodes: the `MicroService` contract and the built-in service types."""

from __future__ import annotations

from .base import Context, MicroService, ServiceType
from .llm import RemoteLLM
from .registry import ServiceRegistry

__all__ = ["Context", "MicroService", "RemoteLLM", "ServiceRegistry", "ServiceType"]
