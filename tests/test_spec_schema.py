"""The JSON Schema of services.yaml: generated, shipped in sync, and agreeing with validate.

Every shipped YAML carries the ``yaml-language-server`` comment, passes the schema and
``meshkit validate``. On the corpus in ``tests/data/broken`` both reject; the files in
``tests/data/validate_only`` are what only ``meshkit validate`` can see (references to
other sections, loops, graph checks, imports, what ``${VAR}`` becomes), each saying why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from meshkit.cli import main
from meshkit.spec import ServiceSpec, json_schema
from meshkit.spec.loading import TOP_KEYS
from meshkit.spec.model import settings

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "services.schema.json"
DATA = Path(__file__).resolve().parent / "data"
HEADER = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


#: Top-level keys of a services file; a YAML file with other keys (Compose, Grafana
#: provisioning, Kubernetes) is some other tool's.
SERVICES_KEYS = {"services", "pipelines", "gateway"}


def shipped() -> list[Path]:
    """Every services file the project ships (other tools' YAML files are not ours)."""
    found = []
    for path in sorted(ROOT.rglob("*.yaml")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".git") or rel.name.startswith("docker-compose"):
            continue
        top = yaml.safe_load(path.read_text())
        if isinstance(top, dict) and "services" in top and set(top) <= SERVICES_KEYS:
            found.append(path)
    return found


def corpus(folder: str) -> list[Path]:
    return sorted((DATA / folder).glob("*.yaml"))


def expected(path: Path) -> str:
    match = re.search(r"^# expect: (.+)$", path.read_text(encoding="utf-8"), re.M)
    assert match, f"{path.name} says what it expects"
    return match.group(1)


def schema_errors(path: Path) -> list[str]:
    """What the schema finds wrong in ``path``; a draft-07 engine (the YAML language
    server's) must reach the same verdict, so the schema keeps to keywords both know."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = [
        e.message for e in jsonschema.Draft202012Validator(json_schema()).iter_errors(document)
    ]
    as_draft_7 = list(jsonschema.Draft7Validator(json_schema()).iter_errors(document))
    assert bool(as_draft_7) == bool(errors), "draft 2020-12 and draft-07 verdicts differ"
    return errors


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``meshkit validate path``, in process: exit code and everything it printed."""
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


class TestSchemaFile:
    """The schema is valid draft 2020-12, and the shipped copy is the generated one."""

    def test_is_a_valid_draft_2020_12_schema(self) -> None:
        schema = json_schema()
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft7Validator.check_schema(schema)  # editors' engines are draft-07

    def test_shipped_copy_is_in_sync(self) -> None:
        shipped_text = SCHEMA_FILE.read_text(encoding="utf-8")
        assert shipped_text == json.dumps(json_schema(), indent=2) + "\n", (
            "regenerate it: meshkit schema > docs/services.schema.json"
        )

    def test_command_prints_it(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "meshkit", "schema"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == SCHEMA_FILE.read_text(encoding="utf-8")

    def test_top_level_keys_are_the_loaders(self) -> None:
        assert list(json_schema()["properties"]) == list(TOP_KEYS)

    def test_every_service_key_is_described(self) -> None:
        properties = json_schema()["$defs"]["ServiceSpec"]["properties"]
        assert list(properties) == list(settings(ServiceSpec))
        assert all(p["description"] for p in properties.values())


class TestShippedFiles:
    """services.yaml, the examples and the benchmark files: checked by editors and by us."""

    def test_there_are_some(self) -> None:
        names = ids(shipped())
        assert "services.yaml" in names and "examples/rag/services.yaml" in names

    @pytest.mark.parametrize("path", shipped(), ids=ids(shipped()))
    def test_carries_the_schema_comment(self, path: Path) -> None:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        match = HEADER.match(first)
        assert match, f"{path.name} starts with the yaml-language-server comment"
        assert (path.parent / match.group(1)).resolve() == SCHEMA_FILE

    @pytest.mark.parametrize("path", shipped(), ids=ids(shipped()))
    def test_passes_the_schema(self, path: Path) -> None:
        assert schema_errors(path) == []

    @pytest.mark.parametrize("path", shipped(), ids=ids(shipped()))
    def test_passes_meshkit_validate(self, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, output = validate(path, capsys)
        assert code == 0, output
        assert ": ok (" in output


class TestBrokenFiles:
    """On broken files the schema and ``meshkit validate`` agree: both reject."""

    @pytest.mark.parametrize("path", corpus("broken"), ids=[p.stem for p in corpus("broken")])
    def test_both_reject(self, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert schema_errors(path), "the schema rejects it"
        code, output = validate(path, capsys)
        assert code == 1
        assert f"  {expected(path)}" in output

    @pytest.mark.parametrize(
        "path", corpus("validate_only"), ids=[p.stem for p in corpus("validate_only")]
    )
    def test_only_validate_sees(self, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert "# why the schema accepts it: " in path.read_text(encoding="utf-8")
        assert schema_errors(path) == []
        code, output = validate(path, capsys)
        assert code == 1
        assert f"  {expected(path)}" in output

    def test_the_corpus_is_not_empty(self) -> None:
        assert len(corpus("broken")) >= 20 and len(corpus("validate_only")) >= 5
