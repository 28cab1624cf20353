"""Print a digest of what the images are built from, so a smoke result names its code.

``compose/smoke.sh`` records it before building; ``tests/test_compose_smoke.py`` checks
the result against the tree it runs on, so a result left by older code never passes.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("meshkit", "examples", "compose", "services.yaml", "setup.cfg", "pyproject.toml")
SKIP = ("__pycache__", "build-extra", ".egg-info")


def digest(root: Path = ROOT) -> str:
    """SHA-256 over the relative path and bytes of every source file, in sorted order."""
    sha = hashlib.sha256()
    for name in SOURCES:
        top = root / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(root).as_posix()
            if any(part in relative for part in SKIP) or file.suffix == ".pyc":
                continue
            sha.update(relative.encode() + b"\0" + file.read_bytes() + b"\0")
    return sha.hexdigest()


if __name__ == "__main__":
    print(digest(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT))
