"""The node layer: the ``MicroService`` contract and the built-in service types.

It owns what one node does with one input (``process(data, ctx)``), its typed ports,
the built-in types (LLM, embedding, retriever, reranker, guardrail, prompt), the
registry that builds them from specs (also third-party types from the
``meshkit.services`` entry points), and the hooks a node reports to
(:mod:`~meshkit.nodes.probe`). A node calls upstreams through :mod:`meshkit.client` and
knows nothing about serving HTTP or about the graph around it.
"""

from __future__ import annotations

from .base import Context, MicroService, ServiceType
from .llm import RemoteLLM
from .registry import ServiceRegistry

__all__ = ["Context", "MicroService", "RemoteLLM", "ServiceRegistry", "ServiceType"]
