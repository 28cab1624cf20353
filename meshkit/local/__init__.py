"""The embedded model server: Gemma 3 270M (or any GGUF) on llama.cpp, served by meshkit.

It owns the model file (:mod:`~meshkit.local.model`), the engine that runs it
(:mod:`~meshkit.local.engine`), the node that answers chats and embeddings with it
(:mod:`~meshkit.local.service`) and the program ``python -m meshkit.local`` that serves
that node through the gateway on its own port. It is the top of the stack below the
command line: ``meshkit serve`` starts this program as a child process through
:class:`~meshkit.graph.embedded.LocalServer`, so the mesh never imports it.
Needs the ``local`` extra (``pip install 'meshkit[local]'``) to load a model;
:func:`resolve_model` imports without it.
"""

from __future__ import annotations

from ..graph.embedded import DEFAULT_MODEL_NAME, LocalServer, LocalServerError
from .engine import EngineStats, Generation, LlamaEngine, TokenStream
from .model import ModelFile, model_dir, resolve_model
from .service import LocalLLM

__all__ = [
    "DEFAULT_MODEL_NAME",
    "EngineStats",
    "Generation",
    "LlamaEngine",
    "LocalLLM",
    "LocalServer",
    "LocalServerError",
    "ModelFile",
    "TokenStream",
    "model_dir",
    "resolve_model",
]
