"""A baseline of meshkit for before/after pairs: another commit, checked out for one run.

``--baseline REF`` makes a temporary ``git worktree`` of ``REF`` (detached, outside the
repository) that a ``meshkit@<sha>`` system runs from, and removes it when the run
ends, however it ends.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Baseline:
    """A checked-out commit: what was asked for, what it resolved to, where it lives."""

    ref: str
    sha: str
    short: str
    subject: str
    tree: Path

    @property
    def system(self) -> str:
        """Name of the system that runs this tree."""
        return f"meshkit@{self.short}"


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


@contextmanager
def checkout(repo: Path, ref: str) -> Iterator[Baseline]:
    """Check ``ref`` out in a temporary worktree for the duration of the block."""
    try:
        sha = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
    except SystemExit as exc:
        raise SystemExit(f"--baseline {ref}: not a commit in {repo} ({exc})") from None
    short = _git(repo, "rev-parse", "--short=7", sha)
    subject = _git(repo, "log", "-1", "--format=%s", sha)
    folder = Path(tempfile.mkdtemp(prefix=f"bench-baseline-{short}-"))
    tree = folder / "src"
    _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), sha)
    try:
        yield Baseline(ref, sha, short, subject, tree)
    finally:
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "prune"], capture_output=True, check=False
        )
