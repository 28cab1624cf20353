"""Locating and assembling the local model file."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.local import DEFAULT_MODEL_NAME, ModelFile, model_dir, resolve_model
from meshkit.local.model import ensure_default_model


class TestModelDir:
    """Where the bundled model is cached."""

    def test_environment_wins(self, tmp_path: Path) -> None:
        assert model_dir({"MESHKIT_MODEL_DIR": str(tmp_path)}) == tmp_path

    def test_default_is_user_cache(self) -> None:
        assert model_dir({}) == Path.home() / ".cache" / "meshkit" / "models"


class TestResolve:
    """Any GGUF by path; the bundled one by default."""

    def test_gguf_path_is_named_by_its_stem(self, tmp_path: Path) -> None:
        path = tmp_path / "tiny-llama.Q4.gguf"
        path.write_bytes(b"GGUF" + bytes(16))
        model = resolve_model(path)
        assert model == ModelFile(path, "tiny-llama.Q4")
        assert model.answers_to("tiny-llama.Q4") and model.answers_to(None)
        assert not model.answers_to("gemma-3-270m")

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="model file not found"):
            resolve_model(tmp_path / "absent.gguf")

    def test_not_a_gguf(self, tmp_path: Path) -> None:
        path = tmp_path / "weights.bin"
        path.write_bytes(b"PK\x03\x04 zip")
        with pytest.raises(ValueError, match="not a GGUF model file"):
            resolve_model(path)


@pytest.mark.slow
class TestAssemble:
    """The bundled model is assembled once, with progress, then reused."""

    def test_first_start_assembles_later_starts_reuse(self, tmp_path: Path) -> None:
        lines: list[str] = []
        first = resolve_model(directory=tmp_path, progress=lines.append)
        # No chat_format: the file has no template, so chats reach it as a transcript.
        assert first.name == DEFAULT_MODEL_NAME and first.chat_format is None
        assert first.answers_to("gemma-3-270m-q4_k_m")
        assert first.path.stat().st_size > 200_000_000
        assert first.path.read_bytes()[:4] == b"GGUF"
        assert lines[0].startswith("assembling model gemma-3-270m")
        assert lines[1].startswith("assembled ")
        assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temp left

        again: list[str] = []
        assert ensure_default_model(tmp_path, progress=again.append) == first.path
        assert again == []
