"""Export a services file as a deployment (``meshkit export kubernetes|compose``).

:func:`plan` reads the file once into a :class:`Stack` (what runs, with which
environment); :func:`render_kubernetes` turns a stack into manifests and
:func:`render_compose` into a Compose file, so the two cannot drift.
"""

from __future__ import annotations

from .compose import render as render_compose
from .kubernetes import Options
from .kubernetes import render as render_kubernetes
from .plan import EnvVar, ExportError, ModelServer, Stack, plan

__all__ = [
    "EnvVar",
    "ExportError",
    "ModelServer",
    "Options",
    "Stack",
    "plan",
    "render_compose",
    "render_kubernetes",
]
