"""code_version: the commit of a git checkout and whether its code paths carry uncommitted changes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from trainer.pipeline import code_line
from trainer.provenance import code_label, code_version

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def _git(root, *arguments):
    return subprocess.run(["git", "-C", str(root), *arguments], check=True, capture_output=True, text=True).stdout


def test_commit_and_modified_in_a_checkout(tmp_path):
    root = tmp_path / "repo"
    (root / "trainer").mkdir(parents=True)
    (root / "trainer" / "a.py").write_text("x = 1\n")
    (root / "notes.md").write_text("not code\n")
    _git(root, "init", "-q")
    _git(root, "-c", "user.email=t@e", "-c", "user.name=t", "add", ".")
    _git(root, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "one")
    head = _git(root, "rev-parse", "HEAD").strip()
    code_version.cache_clear()
    assert code_version(root) == {"commit": head, "modified": False}
    assert code_label(code_version(root)) == head[:12]

    (root / "notes.md").write_text("edited, but not code\n")
    code_version.cache_clear()
    assert code_version(root)["modified"] is False
    (root / "trainer" / "new.py").write_text("y = 2\n")  # a new module counts
    code_version.cache_clear()
    assert code_version(root)["modified"] is True
    assert code_label(code_version(root)) == f"{head[:12]}+modified"


def test_outside_a_checkout_nothing_is_claimed(tmp_path):
    code_version.cache_clear()
    assert code_version(tmp_path) == {"commit": None, "modified": None}
    assert code_label(None) == code_label({"commit": None}) == "unknown"


def test_code_line_names_one_commit_or_each():
    rows = [{"label": "a", "seed": 1, "code": "abc"}, {"label": "b", "seed": 1, "code": "abc"}]
    assert code_line(rows) == "Code (git commit of the trainer): abc"
    rows.append({"label": "b", "seed": 2})
    assert code_line(rows) == "Code differs between runs: abc: a/1, b/1; unknown: b/2"
