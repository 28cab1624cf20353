"""Export a services file as a deployment: Kubernetes manifests (``meshkit export kubernetes``).

:func:`plan` reads the file once into a :class:`Stack` (what runs, with which
environment); :func:`render_kubernetes` turns a stack into manifests.
"""

from __future__ import annotations

from .kubernetes import Options
from .kubernetes import render as render_kubernetes
from .plan import EnvVar, ExportError, ModelServer, Stack, plan

__all__ = ["EnvVar", "ExportError", "ModelServer", "Options", "Stack", "plan", "render_kubernetes"]
