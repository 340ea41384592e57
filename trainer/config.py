"""Typed run configuration and YAML presets.

Resolution order for ``fit``: ``trainer/configs/<model>.yaml`` (the model's defaults), then
``trainer/configs/<dataset-dir-name>/<model>.yaml`` (hyperparameters tuned on that dataset's VALID
split), then the user's ``--config`` file, then command-line flags.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.modules.cold_start import DEFAULT_NEIGHBOURS

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


def typed_values(config_class: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` checked against the dataclass's scalar field types (float, int, bool, str).

    ints are accepted for float fields, and numeric strings too: YAML 1.1 reads ``1e-5`` (no dot) as a
    string. Anything else that does not fit raises ConfigError naming the field; other field types pass.
    """
    hints = typing.get_type_hints(config_class)
    checked = dict(values)
    for name, value in values.items():
        expected = hints.get(name)
        optional = typing.get_origin(expected) in (typing.Union, types.UnionType)
        if optional:
            members = [m for m in typing.get_args(expected) if m is not type(None)]
            if value is None or len(members) != 1:
                continue
            expected = members[0]
        if expected is float:
            if isinstance(value, str):
                try:
                    checked[name] = float(value)
                    continue
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{what}: {name} must be a number, got {value!r}")
            checked[name] = float(value)
        elif expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{what}: {name} must be an integer, got {value!r}")
        elif expected is bool and not isinstance(value, bool):
            raise ConfigError(f"{what}: {name} must be true or false, got {value!r}")
        elif expected is str and not isinstance(value, str):
            raise ConfigError(f"{what}: {name} must be a string, got {value!r}")
    return checked


# TrainConfig fields that act only when a run is warm-started from a previous checkpoint: a run trained from scratch
# (every compare and tune run) is the same whatever they hold
WARM_START_ONLY_FIELDS = ("warm_start_lr", "warm_start_shrink")


@dataclass
class TrainConfig:
    """Optimisation and early-stopping settings (MMRec defaults).

    ``flush_denormals``: on a CPU, train with denormal floats flushed to zero (``trainer.loop.denormals_flushed``).
    Attention that collapses onto one modality (LUDP's and SAND's user attention do) scales the other modalities'
    gradients by softmax weights near 1e-30, and a matrix product over such values ran about 150 times slower on
    the project's x86 sandbox (tests/benchmarks/bench_denormals.py). Values below 1.2e-38 become 0; no effect on a
    GPU.

    ``warm_start_lr`` and ``warm_start_shrink`` act only when a warm start is applied (``fit(warm_start=...)``,
    ``trainer retrain --warm-start``); a run that trains from scratch ignores them. ``warm_start_lr``: Adam's
    learning rate for such a run (None: ``lr``). ``warm_start_shrink`` (λ in [0, 1]): every value the warm start
    copies becomes λ·previous + (1 − λ)·fresh initialisation, a shrink towards the initialisation in the spirit of
    Ash & Adams' shrink-and-perturb (NeurIPS 2020); 1 copies the previous values as they are, 0 is a cold start.
    Rows the previous model lacks keep their fresh initialisation either way.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 2048
    max_epochs: int = 1000
    patience: int = 20
    # wall-clock budget for training + validation; the epoch that crosses it is the last (and is evaluated)
    max_seconds: float | None = None
    eval_every: int = 1
    eval_batch_size: int = 4096
    stopping_metric: str = "recall@20"
    seed: int = 999
    device: str = "auto"
    flush_denormals: bool = True
    warm_start_lr: float | None = None
    warm_start_shrink: float = 1.0

    def __post_init__(self) -> None:
        from trainer.evaluate import DEFAULT_KS, METRIC_NAMES, metric_key

        positive = {"batch_size": self.batch_size, "max_epochs": self.max_epochs, "patience": self.patience,
                    "eval_every": self.eval_every, "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {value}")
        if not self.lr >= 0:
            raise ConfigError(f"train.lr must be >= 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warm_start_lr is not None and not self.warm_start_lr >= 0:
            raise ConfigError(f"train.warm_start_lr must be >= 0, got {self.warm_start_lr}")
        if not 0.0 <= self.warm_start_shrink <= 1.0:
            raise ConfigError(f"train.warm_start_shrink must be in [0, 1], got {self.warm_start_shrink}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"train.max_seconds must be > 0, got {self.max_seconds}")
        metrics = [metric_key(name, k) for name in METRIC_NAMES for k in DEFAULT_KS]
        if self.stopping_metric not in metrics:
            raise ConfigError(f"train.stopping_metric must be one of {metrics}, got {self.stopping_metric!r}")


@dataclass
class ExportConfig:
    """Bundle export settings.

    Attributes:
        cold_start_neighbours: k of the feature-neighbour-mean item encoder that the export gives models without an
            encoder of their own (MF, LightGCN, KGAT, Multi-KG4Rec): a new item is placed at the weighted mean of its
            k nearest existing items by feature cosine. 30 was chosen on ML-100K's validation items
            (docs/results/coldstart.md, session 10); a much larger catalogue may want another k (rerun
            ``trainer coldstart --validation --neighbour-k ...``). LUDP's own encoder has its own
            ``model_params.cold_start_neighbours``.
        text_encoder: put the raw-text encoder (``text_encoder.onnx`` + ``tokenizer.json``, trainer/text_encoder.py)
            in the bundle when the dataset's ``text`` features were built by ``trainer features`` with a
            sentence-transformers model found on this machine, so ``POST /items`` can take a new item's text.
    """

    cold_start_neighbours: int = DEFAULT_NEIGHBOURS
    text_encoder: bool = True

    def __post_init__(self) -> None:
        if self.cold_start_neighbours < 1:
            raise ConfigError(f"export.cold_start_neighbours must be >= 1, got {self.cold_start_neighbours}")


@dataclass
class RunConfig:
    model: str
    model_params: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_params": dict(self.model_params),
            "train": dataclasses.asdict(self.train),
            "export": dataclasses.asdict(self.export),
            "sources": list(self.sources),
        }


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConfigError(f"config {path} must be a mapping with keys model_params / train / export")
    unknown = set(payload) - {"model", "model_params", "train", "export"}
    if unknown:
        raise ConfigError(
            f"config {path}: unknown top-level keys {sorted(unknown)} (allowed: model, model_params, train, export)"
        )
    return payload


def _overlay_section(current: Any, overrides: Any, section: str, source: str) -> Any:
    """``current`` (a config dataclass) with ``overrides`` ({field: value}) applied; unknown fields, values of the
    wrong type and values the dataclass refuses raise ConfigError naming ``source``."""
    if overrides is None:
        return current
    if not isinstance(overrides, dict):
        raise ConfigError(f"config {source}: {section} must be a mapping, got {overrides!r}")
    config_class = type(current)
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"config {source}: unknown {section} keys {sorted(unknown)}; known: {sorted(known)}")
    checked = typed_values(config_class, overrides, f"config {source}")
    try:
        return dataclasses.replace(current, **checked)
    except ConfigError as exc:
        raise ConfigError(f"config {source}: {exc}") from exc


def merge_overrides(run: RunConfig, payload: dict[str, Any], source: str) -> None:
    """Overlay ``payload`` ({model?, model_params?, train?, export?}) on ``run``: train and export keys must exist
    and have the field's type (ConfigError naming ``source`` otherwise); model_params are checked when the model is
    built."""
    if payload.get("model") not in (None, run.model):
        raise ConfigError(f"config {source} is for model {payload['model']!r}, not {run.model!r}")
    model_params = payload.get("model_params")
    if model_params is not None and not isinstance(model_params, dict):
        raise ConfigError(f"config {source}: model_params must be a mapping, got {model_params!r}")
    run.model_params.update(model_params or {})
    run.train = _overlay_section(run.train, payload.get("train"), "train", source)
    run.export = _overlay_section(run.export, payload.get("export"), "export", source)
    run.sources.append(source)


def resolve_run_config(
    model: str,
    dataset_name: str | None = None,
    config_path: Path | None = None,
    train_overrides: dict[str, Any] | None = None,
    preset_dir: Path = PRESET_DIR,
) -> RunConfig:
    """Merge model preset, dataset preset, user config and CLI overrides (later wins)."""
    run = RunConfig(model=model)
    candidates = [preset_dir / f"{model}.yaml"]
    if dataset_name:
        candidates.append(preset_dir / dataset_name / f"{model}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            merge_overrides(run, read_yaml(candidate), str(candidate))
    if config_path is not None:
        if not config_path.is_file():
            raise ConfigError(f"config file {config_path} does not exist")
        merge_overrides(run, read_yaml(config_path), str(config_path))
    overrides = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    if overrides:
        merge_overrides(run, {"train": overrides}, "command line")
    return run
