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


def test_compose_gives_the_api_its_tokens_from_the_environment_and_only_known_settings() -> None:
    from service.settings import Settings

    environment = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["api"]["environment"]
    # tokens come from the operator's environment, never from the file, and both are required: the API listens on
    # 0.0.0.0 there, where open writes would let anyone add items and feed the retrain job
    assert environment["MODALREC_ADMIN_TOKEN"].startswith("${MODALREC_ADMIN_TOKEN:?")
    assert environment["MODALREC_WRITE_TOKEN"].startswith("${MODALREC_WRITE_TOKEN:?")
    fields = {f"MODALREC_{name.upper()}" for name in Settings.model_fields}
    unknown = {name for name in environment if name.startswith("MODALREC_")} - fields
    assert not unknown, f"compose sets variables no setting reads: {unknown}"


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


def _run_service_main(monkeypatch: pytest.MonkeyPatch, multiproc_dir: Path, bundle_root: Path) -> str:
    """``python -m service --workers 2`` up to uvicorn, which is replaced by what a worker does first: build the
    metrics (in multiprocess mode) and count something. Returns the aggregated /metrics text."""
    import os

    import uvicorn

    from service.__main__ import main
    from service.metrics import ServiceMetrics

    for name in [n for n in os.environ if n.startswith("MODALREC_")]:
        monkeypatch.delenv(name)
    for name in ("MODALREC_BUNDLE_ROOT", "MODALREC_WORKERS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")  # main() sets them: restored afterwards
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc_dir))
    rendered: list[str] = []

    def fake_worker(*_args: object, **_kwargs: object) -> None:
        from prometheus_client import values

        # a worker imports prometheus_client with the variable set: file-backed values (chosen at import time)
        monkeypatch.setattr(values, "ValueClass", values.get_value_class())
        metrics = ServiceMetrics()
        metrics.reloads.labels("startup").inc()
        rendered.append(metrics.render()[0].decode())

    monkeypatch.setattr(uvicorn, "run", fake_worker)
    assert main(["--bundle-root", str(bundle_root), "--workers", "2"]) == 0
    return rendered[0]


def test_a_given_multiproc_dir_that_does_not_exist_yet_is_created(monkeypatch, tmp_path) -> None:
    # docker-compose.yml gives /tmp/prometheus on an empty tmpfs: every worker failed to build its metrics
    text = _run_service_main(monkeypatch, tmp_path / "tmpfs" / "prometheus", tmp_path)
    assert 'modalrec_reloads_total{trigger="startup"} 1.0' in text


def test_metric_files_of_a_previous_run_are_removed_at_start(monkeypatch, tmp_path) -> None:
    import os

    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    _run_service_main(monkeypatch, multiproc_dir, tmp_path)
    for stale in multiproc_dir.glob("*.db"):  # what a killed run leaves behind, under another pid
        stale.rename(stale.with_name(stale.name.replace(str(os.getpid()), "999999")))
    (multiproc_dir / "notes.txt").write_text("not a metric file")
    text = _run_service_main(monkeypatch, multiproc_dir, tmp_path)
    assert 'modalrec_reloads_total{trigger="startup"} 1.0' in text  # not 2.0: the old run's count is gone
    assert (multiproc_dir / "notes.txt").exists()


def test_log_levels_are_normalised_and_a_bad_setting_is_a_clear_cli_error(monkeypatch, tmp_path, capsys) -> None:
    from pydantic import ValidationError

    from service.__main__ import main
    from service.settings import Settings

    assert Settings(bundle_root=tmp_path, log_level="WARN").log_level == "warning"  # uvicorn knows no "warn"
    assert Settings(bundle_root=tmp_path, log_level=" Trace ").log_level == "trace"
    with pytest.raises(ValidationError, match="unknown log level 'verbose'"):
        Settings(bundle_root=tmp_path, log_level="verbose")
    monkeypatch.setenv("MODALREC_BUNDLE_ROOT", str(tmp_path))  # main() writes its flags there: restored afterwards
    monkeypatch.setenv("MODALREC_LOG_LEVEL", "verbose")
    monkeypatch.setenv("MODALREC_PORT", "70000")
    assert main(["--bundle-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "MODALREC_LOG_LEVEL: Value error, unknown log level 'verbose'" in err and "MODALREC_PORT:" in err


def test_the_scheduled_retrain_command_parses_with_the_trainer_cli() -> None:
    """The compose retrain loop's `python -m trainer retrain ...` must be a command the CLI accepts (a misspelt flag
    would only show in the container's log, once a day)."""
    import shlex

    from trainer.cli import build_parser

    script = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["retrain"]["command"][-1]
    command = script.split("python -m trainer", 1)[1].split("||", 1)[0]
    args = build_parser().parse_args(shlex.split(command))
    assert args.command == "retrain" and args.warm_start is True
    assert str(args.out) == "/runs/retrain" and args.redis_url == "redis://redis:6379/0"
