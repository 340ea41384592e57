"""constraints.txt pins every package the project installs, and the feature build checks the installed ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from trainer.data.features import (
    CONSTRAINTS_FILE,
    FEATURE_PACKAGES,
    package_versions,
    pinned_versions,
    versions_differing_from_pins,
)

ROOT = Path(__file__).resolve().parents[3]


def test_pinned_versions_parses_pins_and_skips_the_rest(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# comment\nScikit_Learn==1.9.1  # why\ntorch==2.13.0\nnot-pinned>=1\n\n", "utf-8")
    assert pinned_versions(path) == {"scikit-learn": "1.9.1", "torch": "2.13.0"}
    assert pinned_versions(tmp_path / "missing.txt") is None


def test_versions_differing_from_pins_ignores_local_labels_and_unpinned_packages():
    pins = {"torch": "2.13.0", "numpy": "2.4.6"}
    installed = {"torch": "2.13.0+cpu", "numpy": "2.4.5", "scipy": "1.17.1", "sentence_transformers": None}
    assert versions_differing_from_pins(installed, pins) == {"numpy": {"installed": "2.4.5", "pinned": "2.4.6"}}


def test_every_dependency_of_pyproject_is_pinned_within_its_range():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    assert CONSTRAINTS_FILE == ROOT / "constraints.txt"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    pins = pinned_versions()
    requirements = [Requirement(text) for text in project["dependencies"]]
    for extra in ("train", "serve", "dev"):  # "gpu" (onnxruntime-gpu) is installed by hand on CUDA machines
        requirements += [Requirement(text) for text in project["optional-dependencies"][extra]]
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])
    assert all(canonicalize_name(name) in pins for name in FEATURE_PACKAGES)


def test_this_environment_has_the_pinned_feature_packages():
    """`make` installs with -c constraints.txt; an environment built otherwise builds other features (README)."""
    assert versions_differing_from_pins(package_versions(), pinned_versions()) == {}, (
        "install with `make .venv/.installed` (pip install -c constraints.txt)"
    )
