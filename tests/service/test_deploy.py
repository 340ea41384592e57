"""Lint-level checks of the deployment files (there is no Docker engine here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            stages[current] = []
        elif current and line.strip():
            stages[current].append(line.strip())
    return stages


def test_dockerfile_has_slim_serve_and_train_targets() -> None:
    stages = dockerfile_stages()
    assert {"serve", "train"} <= set(stages)
    serve = "\n".join(stages["serve"] + stages["serve-deps"])
    assert "[serve]" in serve and "torch" not in serve and "[train" not in serve
    assert "[train" in "\n".join(stages["train"])
    assert any(line.startswith("HEALTHCHECK") for line in stages["serve"])


def test_every_path_copied_from_the_context_exists() -> None:
    copied = []
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts and parts[0].upper() == "COPY" and not any(p.startswith("--from") for p in parts):
            copied += [p for p in parts[1:-1] if not p.startswith("--")]
    assert copied, "no COPY from the build context found"
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    for path in copied:
        assert (REPO_ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
        assert path not in ignored, f"Dockerfile copies {path}, which .dockerignore excludes"


def test_compose_services_healthchecks_and_targets() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "api", "retrain", "prometheus"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service and service["healthcheck"]["test"], f"{name} has no healthcheck"
    assert services["api"]["build"]["target"] == "serve"
    assert services["retrain"]["build"]["target"] == "train"
    assert "trainer retrain" in " ".join(services["retrain"]["command"])
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["api"]["environment"]["MODALREC_REDIS_URL"].startswith("redis://redis:")
    for volume in services["prometheus"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (REPO_ROOT / source).is_file(), f"prometheus mounts missing {source}"


def test_prometheus_config_and_rules() -> None:
    config = yaml.safe_load((REPO_ROOT / "deploy/prometheus.yml").read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["api:8000"]
    rules = yaml.safe_load((REPO_ROOT / "deploy/alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"ModalrecApiDown", "ModalrecStoreDown", "ModalrecReloadFailed"} <= names
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed: YAML structure checked only")
    for args in (["check", "config", "deploy/prometheus.yml"], ["check", "rules", "deploy/alerts.yml"]):
        result = subprocess.run(
            ["promtool", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
