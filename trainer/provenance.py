"""What code produced a run: the git commit of the project checkout and whether its code had uncommitted changes.

Recorded in every run's metrics.json (``code``) and in `compare` rows, next to the dataset fingerprint, so that a
figure that moves between two runs of the same command can be traced to the code or to the data.
"""

from __future__ import annotations

import functools
import logging
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# the paths whose changes can change a trained model or its evaluation
CODE_PATHS = ("trainer", "service", "pyproject.toml", "constraints.txt")


def _git(root: Path, *arguments: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *arguments], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


@functools.lru_cache(maxsize=8)
def code_version(root: Path = PROJECT_ROOT) -> dict[str, object]:
    """``{"commit": hex sha or None, "modified": bool or None}`` of the git checkout at ``root``.

    ``modified`` is True when files under :data:`CODE_PATHS` differ from the commit or are new and not ignored by
    .gitignore. Both are None outside a git checkout (an installed wheel, a Docker image without .git) or
    without git. Cached per process and root: a run records the code it started with.
    """
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != Path(root).resolve():
        return {"commit": None, "modified": None}
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", *CODE_PATHS)
    return {
        "commit": commit.strip() if commit else None,
        "modified": None if status is None else bool(status.strip()),
    }


def code_label(code: dict[str, object] | None) -> str:
    """``<12 hex>`` or ``<12 hex>+modified``; ``unknown`` when not recorded."""
    if not code or not code.get("commit"):
        return "unknown"
    return f"{str(code['commit'])[:12]}{'+modified' if code.get('modified') else ''}"
