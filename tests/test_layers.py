"""The package layers of docs/architecture.md hold: import-linter's contracts pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class TestLayers:
    """Each package imports only the layers below it, with no cycle anywhere."""

    def test_contracts_kept(self) -> None:
        exe = shutil.which("lint-imports")
        assert exe is not None, "import-linter is a test dependency (make test-deps)"
        done = subprocess.run(
            [exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        assert "3 kept, 0 broken" in done.stdout
